# The contract every node module honours (see ../local/outputs.tf and harness/provision/terraform.py).
# Each output waits for terraform_data.ready: the harness never gets a node that is not prepared.

output "nodes" {
  description = "One entry per node: the name to report it by, the address to SSH to, the user to log in as, and the PCI addresses of its instance-store NVMe controllers (bound for SPDK; the harness's bdev.pci_addr)."
  depends_on  = [terraform_data.ready]
  value = [
    for i, node in aws_instance.node : {
      name           = node.tags.Name
      address        = node.public_ip
      user           = var.ssh_user
      nvme_pci_addrs = local.nvme_pci_addrs
    }
  ]
}

output "private_key_path" {
  description = "Absolute path of the private key every node authorizes."
  depends_on  = [terraform_data.ready]
  value       = "${terraform_data.keys.output.dir}/id_ed25519"
}

output "known_hosts" {
  description = "known_hosts lines for every node (host keys made by scripts/keys.sh and installed by cloud-init)."
  depends_on  = [terraform_data.ready]
  value = join("", [
    for i, node in aws_instance.node : "${node.public_ip} ${local.host_public_keys[i]}\n"
  ])
}
