# The contract every node module honours (see ../local/outputs.tf and harness/provision/terraform.py).

output "nodes" {
  description = "One entry per node: the name to report it by, the address to SSH to, the user to log in as."
  value = [
    for i, ready in terraform_data.ready : {
      name    = aws_instance.node[i].tags.Name
      address = aws_instance.node[i].public_ip
      user    = var.ssh_user
    }
  ]
}

output "private_key_path" {
  description = "Absolute path of the private key every node authorizes."
  value       = abspath(local_sensitive_file.client_key.filename)
}

output "known_hosts" {
  description = "known_hosts lines for every node (host keys generated here and installed by cloud-init)."
  value = join("", [
    for i, ready in terraform_data.ready :
    "${aws_instance.node[i].public_ip} ${trimspace(tls_private_key.host[i].public_key_openssh)}\n"
  ])
}
