"""Where nodes come from: a lab inventory file, or a Terraform module (terraform/local, terraform/aws-sles).

Both end as `SshHost`s; nothing downstream knows which one made them.
"""

from harness.provision.inventory import Inventory, InventoryNode, load_inventory
from harness.provision.terraform import (
    NodeSpec,
    ProvisionInterrupted,
    Terraform,
    TerraformError,
    TerraformSession,
    nodes_from_outputs,
    provisioned_hosts,
    provisioned_nodes,
)

__all__ = [
    "Inventory",
    "InventoryNode",
    "NodeSpec",
    "ProvisionInterrupted",
    "Terraform",
    "TerraformError",
    "TerraformSession",
    "load_inventory",
    "nodes_from_outputs",
    "provisioned_hosts",
    "provisioned_nodes",
]
