# N throwaway test nodes on THIS machine: one network namespace per node, joined to the root namespace by a
# veth pair, each running its own sshd. Only Terraform's built-in `terraform_data` and `local-exec` are used,
# so `terraform init && terraform apply` needs no provider download. Must run as root.
#
# Output contract (the same as ../aws-sles): nodes = [{name, address, user, nvme_pci_addrs}], private_key_path,
# known_hosts.

locals {
  # A /24 inside 10.213.0.0/16 chosen from the run id, one /30 per node: concurrent runs rarely collide, and
  # node-up.sh refuses an address already in use instead of stealing it.
  octet    = coalesce(var.subnet_octet, parseint(substr(md5(var.run_id), 0, 2), 16))
  work_dir = abspath(coalesce(var.work_dir, "${path.root}/nodes-${var.run_id}"))
  nodes = [
    for i in range(var.node_count) : {
      name      = "lvs-${var.run_id}-${i}"
      veth_host = "lvh${var.run_id}-${i}"
      veth_node = "lvn${var.run_id}-${i}"
      host_addr = "10.213.${local.octet}.${4 * i + 1}"
      address   = "10.213.${local.octet}.${4 * i + 2}"
      node_dir  = "${local.work_dir}/${i}"
    }
  ]
}

# The client key every node authorizes; removed with the run.
resource "terraform_data" "client_key" {
  input = {
    work_dir = local.work_dir
    key      = "${local.work_dir}/id_ed25519"
  }

  # Values reach the shell through the environment, never spliced into its text: a run dir or profile name with
  # a quote in it must stay a name (it once ran as root as a command).
  provisioner "local-exec" {
    command = "mkdir -p -- \"$WORK_DIR\" && rm -f -- \"$KEY\" \"$KEY.pub\" && ssh-keygen -q -t ed25519 -N '' -C \"$COMMENT\" -f \"$KEY\""
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

# Teardown comes first and is its own resource: Terraform skips the destroy provisioners of a tainted resource
# (a node whose node-up.sh failed or was interrupted), so node-down.sh must not hang off the node itself.
resource "terraform_data" "node_teardown" {
  count      = var.node_count
  depends_on = [terraform_data.client_key]

  # Destroy-time provisioners may only read `self`, so everything node-down.sh needs lives in `input`.
  input = merge(local.nodes[count.index], {
    scripts = abspath("${path.module}/scripts")
    pubkey  = "${terraform_data.client_key.output.key}.pub"
  })

  provisioner "local-exec" {
    when    = destroy
    command = "\"$SCRIPTS/node-down.sh\""
    environment = {
      SCRIPTS   = self.input.scripts
      NS        = self.input.name
      VETH_HOST = self.input.veth_host
      NODE_DIR  = self.input.node_dir
    }
  }
}

resource "terraform_data" "node" {
  count = var.node_count
  input = terraform_data.node_teardown[count.index].output

  provisioner "local-exec" {
    command = "\"$SCRIPTS/node-up.sh\""
    environment = {
      SCRIPTS   = self.input.scripts
      NS        = self.input.name
      VETH_HOST = self.input.veth_host
      VETH_NODE = self.input.veth_node
      HOST_ADDR = self.input.host_addr
      NODE_ADDR = self.input.address
      NODE_DIR  = self.input.node_dir
      PUBKEY    = self.input.pubkey
      SSHD      = var.sshd
      SSHD_WAIT = var.sshd_wait_seconds
    }
  }
}

# One known_hosts file for all nodes, gathered after every sshd is up. Its path is unknown until apply, so
# the `known_hosts` output reads the file only once the nodes exist.
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
