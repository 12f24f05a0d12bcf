"""SPDK's JSON-RPC, typed: `RpcConnection` (asyncio, pipelined, the storm's), `SyncRpc` (blocking, setup's),
`RpcError` and its subclasses, and the lvol methods with SPDK's own names (`RpcMethods`, `SyncRpcMethods`)."""

from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectError, RpcConnectionLost, RpcError, RpcTimeout, errno_name_of
from harness.rpc.methods import Capabilities, RpcMethods, SyncRpcMethods
from harness.rpc.sync import SyncRpc
from harness.rpc_rules import OPTIONAL_LONGHORN_METHODS, READ_METHODS, REQUIRED_LVOL_METHODS

__all__ = [
    "OPTIONAL_LONGHORN_METHODS",
    "READ_METHODS",
    "REQUIRED_LVOL_METHODS",
    "Capabilities",
    "RpcConnectError",
    "RpcConnection",
    "RpcConnectionLost",
    "RpcError",
    "RpcMethods",
    "RpcTimeout",
    "SyncRpc",
    "SyncRpcMethods",
    "errno_name_of",
]
