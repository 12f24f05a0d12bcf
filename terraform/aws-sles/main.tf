# N SLES 15 SP6 nodes on AWS with instance-store NVMe, for storms against a real spdk_tgt.
# SSH is open only to var.runner_cidr; the client key and every host key are generated here, so the
# known_hosts output is exact from the first connection (no trust on first use).
#
# Output contract (the same as ../local): nodes = [{name, address, user}], private_key_path, known_hosts.

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
}

resource "tls_private_key" "client" {
  algorithm = "ED25519"
}

resource "tls_private_key" "host" {
  count     = var.node_count
  algorithm = "ED25519"
}

resource "aws_key_pair" "run" {
  key_name   = "lvol-storm-${var.run_id}"
  public_key = tls_private_key.client.public_key_openssh
}

resource "local_sensitive_file" "client_key" {
  filename        = "${path.root}/id_ed25519-${var.run_id}"
  content         = tls_private_key.client.private_key_openssh
  file_permission = "0600"
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

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    name                 = local.names[count.index]
    host_private_key     = tls_private_key.host[count.index].private_key_openssh
    host_public_key      = trimspace(tls_private_key.host[count.index].public_key_openssh)
    nr_hugepages         = floor(var.hugepages_mb / 2)
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
  }
}

# Apply finishes only when cloud-init has (hugepages, drivers, packages), checked over SSH with the pinned
# host key, so the harness never talks to a half-prepared node.
resource "terraform_data" "ready" {
  count = var.node_count
  input = aws_instance.node[count.index].id

  connection {
    type        = "ssh"
    host        = aws_instance.node[count.index].public_ip
    user        = var.ssh_user
    private_key = tls_private_key.client.private_key_openssh
    host_key    = tls_private_key.host[count.index].public_key_openssh
    timeout     = "15m"
  }

  provisioner "remote-exec" {
    inline = [
      "sudo cloud-init status --wait >/dev/null || { sudo cloud-init status --long; exit 1; }",
      "for p in spdk_tgt socat gdb; do command -v $p >/dev/null || { echo \"$p missing after cloud-init: check spdk_source/spdk_packages\"; exit 1; }; done",
    ]
  }
}
