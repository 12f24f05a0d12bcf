variable "run_id" {
  description = "Short id of this run: names the guests (lvs-<run_id>-<i>) and their work directories."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]{1,8}$", var.run_id))
    error_message = "run_id must be 1-8 lowercase letters or digits."
  }
}

variable "node_count" {
  description = "How many QEMU guests to boot (each one emulated CPU, under TCG a host core's worth of work while it boots)."
  type        = number
  default     = 1
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 8 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 8."
  }
}

variable "work_dir" {
  description = "Where keys, NVMe images, consoles and pid files of this run go (default: nodes-<run_id> next to this module)."
  type        = string
  default     = null
}

variable "cache_dir" {
  description = "Where the guest image (kernel + initramfs) is cached by the hash of its inputs (default: /var/cache/lvol-storm/guest, or ~/.cache/lvol-storm/guest when that is not writable)."
  type        = string
  default     = null
}

variable "kernel_version" {
  description = "The installed Debian kernel to boot (/boot/vmlinuz-<version> with /lib/modules/<version>); default: the newest."
  type        = string
  default     = null
}

variable "with_python" {
  description = "Put the host's python3 and its standard library in the guest (for the reference target inside it); adds ~8 MB to the image (gzip'd)."
  type        = bool
  default     = false
}

variable "memory_mb" {
  description = "Guest memory in MiB, hugepages included."
  type        = number
  default     = 1024
  validation {
    condition     = var.memory_mb >= 256 && floor(var.memory_mb) == var.memory_mb
    error_message = "memory_mb must be a whole number of MiB, at least 256."
  }
}

variable "hugepages_mb" {
  description = "2 MiB hugepages the guest kernel reserves at boot (on its command line), in MiB."
  type        = number
  default     = 128
  validation {
    condition     = var.hugepages_mb >= 0 && var.hugepages_mb % 2 == 0
    error_message = "hugepages_mb must be an even number of MiB (2 MiB pages)."
  }
}

variable "nvme_size_mb" {
  description = "Size of each guest's emulated NVMe namespace (a sparse raw file in the node's directory), in MiB."
  type        = number
  default     = 256
  validation {
    condition     = var.nvme_size_mb >= 16 && floor(var.nvme_size_mb) == var.nvme_size_mb
    error_message = "nvme_size_mb must be a whole number of MiB, at least 16."
  }
}

variable "nvme_driver" {
  description = "What the guest binds its NVMe controller to at boot: uio_pci_generic (for SPDK), vfio-pci (behind an emulated Intel IOMMU: Debian's kernel has no vfio no-IOMMU mode), or nvme (the kernel's own driver)."
  type        = string
  default     = "uio_pci_generic"
  validation {
    condition     = contains(["uio_pci_generic", "vfio-pci", "nvme"], var.nvme_driver)
    error_message = "nvme_driver must be uio_pci_generic, vfio-pci or nvme."
  }
}

variable "accel" {
  description = "QEMU accelerator: tcg (works everywhere, slow) or kvm (needs a working /dev/kvm)."
  type        = string
  default     = "tcg"
  validation {
    condition     = contains(["tcg", "kvm"], var.accel)
    error_message = "accel must be tcg or kvm."
  }
}

variable "nice" {
  description = "Niceness QEMU runs at (0-19); above 0 its I/O is idle class too, so guests yield to whatever else runs here."
  type        = number
  default     = 0
  validation {
    condition     = var.nice >= 0 && var.nice <= 19 && floor(var.nice) == var.nice
    error_message = "nice must be a whole number from 0 to 19."
  }
}

variable "qemu" {
  description = "The QEMU binary (apt-get install -y qemu-system-x86)."
  type        = string
  default     = "qemu-system-x86_64"
}

variable "python" {
  description = "The python3 that runs scripts/guest_image.py (standard library only) and picks free ports."
  type        = string
  default     = "python3"
}

variable "boot_timeout_seconds" {
  description = "How long node-up.sh waits for each guest to boot and answer SSH with its pinned host key."
  type        = number
  default     = 180
}
