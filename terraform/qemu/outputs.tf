# The contract every node module honours (see ../local/outputs.tf and harness/provision/terraform.py); a guest
# is reached on 127.0.0.1 at the port node-up.sh found free for it.

output "nodes" {
  description = "One entry per guest: the name to report it by, the address and port to SSH to (127.0.0.1 and the port QEMU forwards to the guest's sshd), the user to log in as, and its emulated NVMe controller (bound for SPDK; the harness's bdev.pci_addr)."
  value = [
    for n in terraform_data.node[*].output : {
      name           = n.name
      address        = "127.0.0.1"
      port           = tonumber(trimspace(file("${n.node_dir}/port")))
      user           = "root"
      nvme_pci_addrs = local.nvme_pci_addrs
    }
  ]
}

output "private_key_path" {
  description = "Absolute path of the private key every guest authorizes."
  value       = abspath(terraform_data.client_key.output.key)
}

output "known_hosts" {
  description = "known_hosts lines for every guest ([127.0.0.1]:<port> and the host key node-up.sh made for it)."
  value       = file(terraform_data.known_hosts.output.path)
}
