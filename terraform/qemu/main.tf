# N throwaway QEMU guests on THIS machine, each with an emulated NVMe controller, reached over SSH on a loopback
# port QEMU forwards (user networking: nothing but 127.0.0.1 is opened). The guest is a kernel and an
# initramfs built from this machine's Debian packages (scripts/guest_image.py, cached by content hash); each
# guest gets its own host key and the run's client key through fw_cfg, so known_hosts is exact before it boots.
# Only Terraform's built-in `terraform_data` and `local-exec` are used: no provider to download.
#
# Output contract (the same as ../local and ../aws-sles): nodes = [{name, address, user, port, nvme_pci_addrs}],
# private_key_path, known_hosts.

locals {
  work_dir = abspath(coalesce(var.work_dir, "${path.root}/nodes-${var.run_id}"))
  scripts  = abspath("${path.module}/scripts")
  # QEMU puts each guest's first NVMe controller at this slot of the root bus (the machine is q35; net is 02.0,
  # the RNG 03.0): the same address in every guest, so it is known before anything boots.
  nvme_pci_addrs = ["0000:00:04.0"]
  nodes = [
    for i in range(var.node_count) : {
      name     = "lvs-${var.run_id}-${i}"
      node_dir = "${local.work_dir}/${i}"
    }
  ]
}

# The client key every guest authorizes; the whole work dir goes with the run.
resource "terraform_data" "client_key" {
  input = {
    work_dir = local.work_dir
    key      = "${local.work_dir}/id_ed25519"
  }

  # Values reach the shell through the environment, never spliced into its text (see ../local/main.tf).
  provisioner "local-exec" {
    command = "mkdir -p -- \"$WORK_DIR\" && chmod 700 -- \"$WORK_DIR\" && rm -f -- \"$KEY\" \"$KEY.pub\" && ssh-keygen -q -t ed25519 -N '' -C \"$COMMENT\" -f \"$KEY\""
    environment = {
      WORK_DIR = self.input.work_dir
      KEY      = self.input.key
      COMMENT  = "lvol-storm-${var.run_id}"
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "rm -rf -- \"$WORK_DIR\""
    environment = {
      WORK_DIR = self.input.work_dir
    }
  }
}

# The guest image, built or taken from the cache; linked into the work dir as image/vmlinuz and image/initrd.img.
resource "terraform_data" "image" {
  input = {
    dir            = "${terraform_data.client_key.output.work_dir}/image"
    cache_dir      = var.cache_dir == null ? "" : var.cache_dir
    kernel_version = var.kernel_version == null ? "" : var.kernel_version
    with_python    = var.with_python
  }

  provisioner "local-exec" {
    command = "\"$SCRIPTS/image.sh\""
    environment = {
      SCRIPTS        = local.scripts
      PYTHON         = var.python
      IMAGE_DIR      = self.input.dir
      CACHE_DIR      = self.input.cache_dir
      KERNEL_VERSION = self.input.kernel_version
      WITH_PYTHON    = self.input.with_python ? "1" : ""
    }
  }
}

# Teardown comes first and is its own resource, as in ../local: Terraform skips the destroy provisioners of a
# tainted resource (a guest whose node-up.sh failed or was interrupted), so node-down.sh must not hang off it.
resource "terraform_data" "node_teardown" {
  count = var.node_count

  # Destroy-time provisioners may only read `self`, so everything node-down.sh needs lives in `input`.
  input = merge(local.nodes[count.index], {
    scripts   = local.scripts
    image_dir = terraform_data.image.output.dir
    pubkey    = "${terraform_data.client_key.output.key}.pub"
  })

  provisioner "local-exec" {
    when    = destroy
    command = "\"$SCRIPTS/node-down.sh\""
    environment = {
      SCRIPTS  = self.input.scripts
      NAME     = self.input.name
      NODE_DIR = self.input.node_dir
    }
  }
}

resource "terraform_data" "node" {
  count = var.node_count
  input = terraform_data.node_teardown[count.index].output

  lifecycle {
    precondition {
      # The kernel reserves hugepages before it unpacks the initramfs: too many leave it nothing and it panics.
      condition     = var.hugepages_mb + 384 <= var.memory_mb
      error_message = "hugepages_mb (${var.hugepages_mb}) must leave the guest at least 384 MiB of memory_mb (${var.memory_mb}) for its kernel and initramfs: raise memory_mb or lower hugepages_mb."
    }
  }

  provisioner "local-exec" {
    command = "\"$SCRIPTS/node-up.sh\""
    environment = {
      SCRIPTS      = self.input.scripts
      NAME         = self.input.name
      NODE_DIR     = self.input.node_dir
      IMAGE_DIR    = self.input.image_dir
      PUBKEY       = self.input.pubkey
      QEMU         = var.qemu
      PYTHON       = var.python
      ACCEL        = var.accel
      NICE         = var.nice
      MEMORY_MB    = var.memory_mb
      HUGEPAGES    = floor(var.hugepages_mb / 2)
      NVME_SIZE_MB = var.nvme_size_mb
      NVME_DRIVER  = var.nvme_driver
      NVME_ADDR    = local.nvme_pci_addrs[0]
      BOOT_TIMEOUT = var.boot_timeout_seconds
    }
  }
}

# One known_hosts file for all guests, gathered once every guest answers SSH. Its path is unknown until apply
# (terraform_data outputs are), so the outputs read files only once the guests exist.
resource "terraform_data" "known_hosts" {
  input = {
    path  = "${local.work_dir}/known_hosts"
    nodes = terraform_data.node[*].output.node_dir
  }

  provisioner "local-exec" {
    command = "set -e; : > \"$OUT\"; printf '%s\\n' \"$NODE_DIRS\" | while IFS= read -r d; do cat -- \"$d/known_hosts\" >> \"$OUT\"; done"
    environment = {
      OUT       = self.input.path
      NODE_DIRS = join("\n", self.input.nodes)
    }
  }
}
