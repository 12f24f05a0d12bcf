# N SLES 15 SP6 nodes on AWS with instance-store NVMe, for storms against a real spdk_tgt.
# SSH is open only to var.runner_cidr; the client key and every host key are made on the runner before any
# instance exists (scripts/keys.sh), so the known_hosts output is exact from the first connection (no trust on
# first use). Only the aws provider is needed: keys come from ssh-keygen, files from Terraform itself.
#
# Output contract (the same as ../local): nodes = [{name, address, user, nvme_pci_addrs}], private_key_path,
# known_hosts.

data "aws_ami" "sles" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["013907871322"] # SUSE

  filter {
    name   = "name"
    values = ["suse-sles-15-sp6-v*-hvm-ssd-x86_64"]
  }
}

data "aws_subnet" "chosen" {
  count = var.subnet_id == null ? 0 : 1
  id    = var.subnet_id
}

data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

locals {
  ami    = coalesce(var.ami_id, try(data.aws_ami.sles[0].id, null))
  vpc_id = var.subnet_id == null ? data.aws_vpc.default[0].id : data.aws_subnet.chosen[0].vpc_id
  names  = [for i in range(var.node_count) : "lvs-${var.run_id}-${i}"]

  # Where the instance-store NVMe controllers of an instance type sit on the PCI bus. On Nitro instances with
  # one instance-store volume it is 0000:00:1f.0 (the root EBS volume is 0000:00:04.0), as seen on an
  # m5d.2xlarge; the other rows assume the same Nitro layout. Each node checks this at boot and the apply fails
  # naming the real addresses if it is wrong; other types need var.nvme_pci_addrs.
  instance_store_nvme = {
    for t in [
      "i4i.large", "i4i.xlarge", "i4i.2xlarge", "i4i.4xlarge", "i3en.large", "i3en.xlarge",
      "m5d.large", "m5d.xlarge", "m5d.2xlarge", "m6id.large", "m6id.xlarge", "m6id.2xlarge", "m6id.4xlarge",
    ] : t => ["0000:00:1f.0"]
  }
  nvme_pci_addrs = var.nvme_pci_addrs != null ? var.nvme_pci_addrs : lookup(local.instance_store_nvme, var.instance_type, null)
  key_dir        = abspath("${path.root}/keys-${var.run_id}")
}

# The client key and one host key per node, removed with the run.
resource "terraform_data" "keys" {
  input = {
    dir        = local.key_dir
    node_count = var.node_count
  }

  # Values reach the shell through the environment, never spliced into its text.
  provisioner "local-exec" {
    command = "\"$SCRIPTS/keys.sh\""
    environment = {
      SCRIPTS    = abspath("${path.module}/scripts")
      KEY_DIR    = self.input.dir
      NODE_COUNT = self.input.node_count
      COMMENT    = "lvol-storm-${var.run_id}"
    }
  }

  provisioner "local-exec" {
    when    = destroy
    command = "rm -rf -- \"$KEY_DIR\""
    environment = {
      KEY_DIR = self.input.dir
    }
  }
}

locals {
  # Unknown while planning (the keys do not exist yet), read during apply once keys.sh has made them.
  client_public_key = file("${terraform_data.keys.output.dir}/id_ed25519.pub")
  host_public_keys  = [for i in range(var.node_count) : trimspace(file("${terraform_data.keys.output.dir}/host-${i}.pub"))]
}

resource "aws_key_pair" "run" {
  key_name   = "lvol-storm-${var.run_id}"
  public_key = local.client_public_key
}

resource "aws_security_group" "ssh" {
  name        = "lvol-storm-${var.run_id}"
  description = "lvol-storm ${var.run_id}: SSH from the runner only"
  vpc_id      = local.vpc_id

  ingress {
    description = "SSH from the runner"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.runner_cidr]
  }

  egress {
    description = "package installs"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "node" {
  count                       = var.node_count
  ami                         = local.ami
  instance_type               = var.instance_type
  key_name                    = aws_key_pair.run.key_name
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.ssh.id]
  associate_public_ip_address = true
  # The lifetime guard: cloud-init powers the node off after max_lifetime_minutes, and a node that powers
  # itself off is terminated, not just stopped.
  instance_initiated_shutdown_behavior = "terminate"

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    name                 = local.names[count.index]
    host_private_key     = file("${terraform_data.keys.output.dir}/host-${count.index}")
    host_public_key      = local.host_public_keys[count.index]
    nr_hugepages         = floor(var.hugepages_mb / 2)
    nvme_pci_addrs       = local.nvme_pci_addrs == null ? [] : local.nvme_pci_addrs
    nvme_driver          = var.nvme_driver
    instance_type        = var.instance_type
    max_lifetime_minutes = var.max_lifetime_minutes
    node_script          = file("${path.module}/scripts/lvol-storm-node.sh")
    spdk_source          = var.spdk_source
    spdk_packages        = var.spdk_packages
    spdk_container_image = var.spdk_container_image
    spdk_tgt_in_image    = var.spdk_tgt_in_image
  })

  root_block_device {
    volume_size = var.root_volume_gb
    volume_type = "gp3"
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = {
    Name = local.names[count.index]
  }

  lifecycle {
    precondition {
      condition     = var.spdk_source != "container" || var.spdk_container_image != ""
      error_message = "spdk_source = container needs spdk_container_image."
    }
    precondition {
      condition     = local.nvme_pci_addrs != null
      error_message = "instance_type ${var.instance_type} is not in this module's table of instance-store NVMe addresses (local.instance_store_nvme): set nvme_pci_addrs (lspci -D on such an instance; [] for none)."
    }
  }
}

# Apply finishes only when every node says it is ready (cloud-init done, rebooted into the hugepage command
# line, NVMe bound, tools installed), asked over SSH with the pinned host key; a node that reports a failure
# fails the apply with its reason. Off only against an AWS API emulator, which has no machines to ask.
resource "terraform_data" "ready" {
  count = var.wait_for_ready ? var.node_count : 0
  input = aws_instance.node[count.index].id

  provisioner "local-exec" {
    command = "\"$SCRIPTS/wait-ready.sh\""
    environment = {
      SCRIPTS     = abspath("${path.module}/scripts")
      NAME        = local.names[count.index]
      ADDRESS     = aws_instance.node[count.index].public_ip
      USER        = var.ssh_user
      KEY         = "${terraform_data.keys.output.dir}/id_ed25519"
      HOST_PUBKEY = local.host_public_keys[count.index]
      TIMEOUT     = var.ready_timeout_seconds
    }
  }
}
