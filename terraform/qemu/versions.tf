# Only Terraform's built-in terraform_data and local-exec: no provider to download, so no lock file either
# (terraform init writes none for a module without providers).
terraform {
  required_version = ">= 1.4, < 2.0"
}
