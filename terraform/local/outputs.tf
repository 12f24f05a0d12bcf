# The contract every node module honours (see ../aws-sles/outputs.tf and harness/provision/terraform.py).

output "nodes" {
  description = "One entry per node: the name to report it by, the address to SSH to, the user to log in as, and its NVMe controllers for SPDK (none: namespaces have no disks of their own)."
  value = [
    for n in terraform_data.node[*].output : {
      name           = n.name
      address        = n.address
      user           = var.user
      nvme_pci_addrs = []
    }
  ]
}

output "private_key_path" {
  description = "Absolute path of the private key every node authorizes."
  value       = abspath(terraform_data.client_key.output.key)
}

output "known_hosts" {
  description = "known_hosts lines for every node (each node has its own freshly generated host key)."
  value       = file(terraform_data.known_hosts.output.path)
}
