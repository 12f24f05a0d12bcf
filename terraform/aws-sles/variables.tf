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
  description = "2 MiB hugepages reserved at boot, in MiB."
  type        = number
  default     = 4096
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
