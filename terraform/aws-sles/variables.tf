variable "run_id" {
  description = "Short id of this run: names and tags every resource (lvs-<run_id>-<i>)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]{1,8}$", var.run_id))
    error_message = "run_id must be 1-8 lowercase letters or digits."
  }
}

variable "region" {
  description = "AWS region to run the nodes in."
  type        = string
  default     = "us-east-1"
}

variable "node_count" {
  description = "How many SLES nodes to start."
  type        = number
  default     = 2
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 16 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 16."
  }
}

variable "instance_type" {
  description = "An instance type with instance-store NVMe (i4i, i3, m6id, ...): the storm's NVMe bdevs."
  type        = string
  default     = "i4i.xlarge"
}

variable "runner_cidr" {
  description = "The runner's public address as a CIDR (e.g. 203.0.113.7/32): the only source SSH is open to."
  type        = string
  validation {
    condition     = can(cidrhost(var.runner_cidr, 0)) && var.runner_cidr != "0.0.0.0/0"
    error_message = "runner_cidr must be a CIDR such as 203.0.113.7/32, and not 0.0.0.0/0."
  }
}

variable "ssh_user" {
  description = "Login user of the SLES AMI (commands run through sudo -n)."
  type        = string
  default     = "ec2-user"
}

variable "ami_id" {
  description = "AMI to use; default: the newest SUSE-published SLES 15 SP6 x86_64 AMI."
  type        = string
  default     = null
}

variable "subnet_id" {
  description = "Subnet to start the nodes in; default: a subnet of the default VPC chosen by AWS."
  type        = string
  default     = null
}

variable "root_volume_gb" {
  description = "Root volume size (cores of spdk_tgt land there)."
  type        = number
  default     = 40
}

variable "hugepages_mb" {
  description = "2 MiB hugepages reserved at boot, in MiB: put on the kernel command line by cloud-init, which reboots into it; each boot checks the kernel reserved them all."
  type        = number
  default     = 4096
  validation {
    condition     = var.hugepages_mb >= 2 && var.hugepages_mb % 2 == 0
    error_message = "hugepages_mb must be an even number of MiB (2 MiB pages), at least 2."
  }
}

variable "nvme_pci_addrs" {
  description = "PCI addresses of the instance-store NVMe controllers to bind for SPDK (e.g. [\"0000:00:1f.0\"]); default: the module's table for instance_type (local.instance_store_nvme). [] binds none. Each node checks them at boot."
  type        = list(string)
  default     = null
  validation {
    condition     = alltrue([for a in(var.nvme_pci_addrs == null ? [] : var.nvme_pci_addrs) : can(regex("^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\\.[0-7]$", a))])
    error_message = "nvme_pci_addrs must be PCI addresses like 0000:00:1f.0 (lowercase hex, as lspci -D prints them)."
  }
}

variable "nvme_driver" {
  description = "Userspace driver the NVMe controllers are bound to at every boot; uio_pci_generic is tried when it fails."
  type        = string
  default     = "vfio-pci"
  validation {
    condition     = contains(["vfio-pci", "uio_pci_generic"], var.nvme_driver)
    error_message = "nvme_driver must be vfio-pci or uio_pci_generic."
  }
}

variable "max_lifetime_minutes" {
  description = "Lifetime guard: a node powers itself off (and is terminated) this long after its first boot, whether or not anyone destroys it."
  type        = number
  default     = 480
  validation {
    condition     = var.max_lifetime_minutes >= 30 && floor(var.max_lifetime_minutes) == var.max_lifetime_minutes
    error_message = "max_lifetime_minutes must be a whole number of minutes, at least 30 (first boot, packages and the reboot take a while)."
  }
}

variable "ready_timeout_seconds" {
  description = "How long apply waits for each node to report ready (cloud-init, packages, reboot, NVMe binding)."
  type        = number
  default     = 1200
}

variable "wait_for_ready" {
  description = "Wait for every node to report ready over SSH before the outputs exist. Off only against an AWS API emulator (tests), which starts no machines."
  type        = bool
  default     = true
}

variable "aws_endpoint" {
  description = "Tests only: the URL of a local AWS API emulator (e.g. http://127.0.0.1:5000) every AWS call goes to, with no credential or account checks. Unset for real AWS."
  type        = string
  default     = null
  validation {
    condition     = var.aws_endpoint == null || can(regex("^http://(127\\.[0-9]+\\.[0-9]+\\.[0-9]+|localhost|\\[::1\\]):[0-9]+/?$", coalesce(var.aws_endpoint, "-")))
    error_message = "aws_endpoint must be a loopback URL such as http://127.0.0.1:5000: it is for a local AWS API emulator only."
  }
}

variable "spdk_source" {
  description = "Where spdk_tgt comes from: `packagehub` (zypper, from SUSE Package Hub) or `container` (a wrapper running spdk_container_image with podman)."
  type        = string
  default     = "packagehub"
  validation {
    condition     = contains(["packagehub", "container"], var.spdk_source)
    error_message = "spdk_source must be packagehub or container."
  }
}

variable "spdk_packages" {
  description = "Packages installed from Package Hub when spdk_source = packagehub; they must provide spdk_tgt on PATH (check with `zypper search spdk` on a node: names are not verified here)."
  type        = list(string)
  default     = ["spdk"]
}

variable "spdk_container_image" {
  description = "Image holding spdk_tgt when spdk_source = container (e.g. a Longhorn instance-manager image)."
  type        = string
  default     = ""
}

variable "spdk_tgt_in_image" {
  description = "Path of spdk_tgt inside spdk_container_image."
  type        = string
  default     = "spdk_tgt"
}
