variable "run_id" {
  description = "Short id of this run: names the namespaces (lvs-<run_id>-<i>) and picks the address range."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9]{1,8}$", var.run_id))
    error_message = "run_id must be 1-8 lowercase letters or digits (it becomes part of interface names, at most 15 characters)."
  }
}

variable "node_count" {
  description = "How many nodes (network namespaces with an sshd each) to create."
  type        = number
  default     = 2
  validation {
    condition     = var.node_count >= 1 && var.node_count <= 63 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 1 to 63 (one /30 per node inside a /24)."
  }
}

variable "work_dir" {
  description = "Where keys, sshd configs and logs of this run go (default: nodes-<run_id> next to this module)."
  type        = string
  default     = null
}

variable "user" {
  description = "The user the harness logs in as (root: the namespaces share this machine's users)."
  type        = string
  default     = "root"
}

variable "sshd" {
  description = "Path of the sshd binary started in each namespace."
  type        = string
  default     = "/usr/sbin/sshd"
}

variable "sshd_wait_seconds" {
  description = "How long node-up.sh waits for each sshd to listen before failing the apply."
  type        = number
  default     = 10
}

variable "subnet_octet" {
  description = "Third octet of the 10.213.<octet>.0/24 this run's /30s come from (default: derived from run_id)."
  type        = number
  default     = null
  validation {
    condition     = coalesce(var.subnet_octet, 0) >= 0 && coalesce(var.subnet_octet, 0) <= 255
    error_message = "subnet_octet must be 0-255."
  }
}
