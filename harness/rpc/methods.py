"""The lvol RPCs as typed Python calls, with SPDK's own method and parameter names.

A wrapper only names the parameters and drops the ones left as None, exactly as SPDK's rpc.py does, so an
operation copied from a history line or a crash report pastes into `spdk-rpc` unchanged. One definition
serves both clients: `RpcMethods(conn)` returns awaitables (the storm), `SyncRpcMethods(rpc)` returns values
(setup, checks). `Capabilities` says which optional (Longhorn fork or newer upstream) methods a target has,
so the storm can leave out operations the target cannot serve instead of counting -32601 as findings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from harness.errors import TargetError
from harness.rpc.client import RpcConnection
from harness.rpc.sync import SyncRpc
from harness.rpc_rules.table import (
    LONGHORN_FORK_METHODS,
    OPTIONAL_LONGHORN_METHODS,
    READ_METHODS,
    REQUIRED_LVOL_METHODS,
)

R = TypeVar("R")


def spdk_params(**params: Any) -> dict[str, Any] | None:
    """Params as rpc.py sends them: None values dropped, and no `params` member at all when none are left."""
    kept = {k: v for k, v in params.items() if v is not None}
    return kept or None


class LvolMethods(Generic[R]):
    """The typed lvol RPCs over any `_call(method, params) -> R`; see `RpcMethods` and `SyncRpcMethods`.

    Results as the target returns them: lvol/lvstore creation -> UUID string; most mutations -> `true`;
    listings -> lists of dicts (see /work/shared/spdk/README.md for their fields).
    """

    def _call(self, method: str, params: dict[str, Any] | None) -> R:
        raise NotImplementedError

    # -- lvstores ---------------------------------------------------------------------------------------

    def bdev_lvol_create_lvstore(
        self,
        bdev_name: str,
        lvs_name: str,
        cluster_sz: int | None = None,
        clear_method: str | None = None,
        num_md_pages_per_cluster_ratio: int | None = None,
        md_page_size: int | None = None,
    ) -> R:
        """-> lvstore UUID."""
        return self._call("bdev_lvol_create_lvstore", spdk_params(
            bdev_name=bdev_name, lvs_name=lvs_name, cluster_sz=cluster_sz, clear_method=clear_method,
            num_md_pages_per_cluster_ratio=num_md_pages_per_cluster_ratio, md_page_size=md_page_size))

    def bdev_lvol_delete_lvstore(self, uuid: str | None = None, lvs_name: str | None = None) -> R:
        return self._call("bdev_lvol_delete_lvstore", spdk_params(uuid=uuid, lvs_name=lvs_name))

    def bdev_lvol_rename_lvstore(self, old_name: str, new_name: str) -> R:
        return self._call("bdev_lvol_rename_lvstore", spdk_params(old_name=old_name, new_name=new_name))

    def bdev_lvol_grow_lvstore(self, uuid: str | None = None, lvs_name: str | None = None) -> R:
        return self._call("bdev_lvol_grow_lvstore", spdk_params(uuid=uuid, lvs_name=lvs_name))

    def bdev_lvol_get_lvstores(self, uuid: str | None = None, lvs_name: str | None = None) -> R:
        """-> [{uuid, name, base_bdev, total_data_clusters, free_clusters, block_size, cluster_size}]."""
        return self._call("bdev_lvol_get_lvstores", spdk_params(uuid=uuid, lvs_name=lvs_name))

    # -- lvols ------------------------------------------------------------------------------------------

    def bdev_lvol_create(
        self,
        lvs_name: str | None,
        lvol_name: str,
        size_in_mib: int,
        thin_provision: bool | None = None,
        clear_method: str | None = None,
        *,
        uuid: str | None = None,
    ) -> R:
        """-> lvol UUID. Name the lvstore by `lvs_name` or by `uuid` (then pass lvs_name=None)."""
        return self._call("bdev_lvol_create", spdk_params(
            lvs_name=lvs_name, uuid=uuid, lvol_name=lvol_name, size_in_mib=size_in_mib,
            thin_provision=thin_provision, clear_method=clear_method))

    def bdev_lvol_snapshot(self, lvol_name: str, snapshot_name: str, xattrs: dict[str, str] | None = None) -> R:
        """-> snapshot UUID. `xattrs` is an object in the Longhorn fork."""
        return self._call("bdev_lvol_snapshot", spdk_params(
            lvol_name=lvol_name, snapshot_name=snapshot_name, xattrs=xattrs))

    def bdev_lvol_clone(self, snapshot_name: str, clone_name: str) -> R:
        """-> clone UUID."""
        return self._call("bdev_lvol_clone", spdk_params(snapshot_name=snapshot_name, clone_name=clone_name))

    def bdev_lvol_clone_bdev(self, bdev: str, lvs_name: str, clone_name: str) -> R:
        """-> UUID of an esnap clone of a non-lvol bdev."""
        return self._call("bdev_lvol_clone_bdev", spdk_params(bdev=bdev, lvs_name=lvs_name, clone_name=clone_name))

    def bdev_lvol_delete(self, name: str) -> R:
        return self._call("bdev_lvol_delete", spdk_params(name=name))

    def bdev_lvol_resize(self, name: str, size_in_mib: int) -> R:
        return self._call("bdev_lvol_resize", spdk_params(name=name, size_in_mib=size_in_mib))

    def bdev_lvol_rename(self, old_name: str, new_name: str) -> R:
        return self._call("bdev_lvol_rename", spdk_params(old_name=old_name, new_name=new_name))

    def bdev_lvol_set_read_only(self, name: str) -> R:
        return self._call("bdev_lvol_set_read_only", spdk_params(name=name))

    def bdev_lvol_inflate(self, name: str) -> R:
        return self._call("bdev_lvol_inflate", spdk_params(name=name))

    def bdev_lvol_decouple_parent(self, name: str) -> R:
        return self._call("bdev_lvol_decouple_parent", spdk_params(name=name))

    def bdev_lvol_set_parent(self, lvol_name: str, parent_name: str) -> R:
        return self._call("bdev_lvol_set_parent", spdk_params(lvol_name=lvol_name, parent_name=parent_name))

    def bdev_lvol_set_parent_bdev(self, lvol_name: str, parent_name: str) -> R:
        return self._call("bdev_lvol_set_parent_bdev", spdk_params(lvol_name=lvol_name, parent_name=parent_name))

    def bdev_lvol_get_lvols(self, lvs_uuid: str | None = None, lvs_name: str | None = None) -> R:
        """-> [{alias, uuid, name, creation_time, is_thin_provisioned, is_snapshot, is_clone, ..., lvs}]."""
        return self._call("bdev_lvol_get_lvols", spdk_params(lvs_uuid=lvs_uuid, lvs_name=lvs_name))

    def bdev_get_bdevs(self, name: str | None = None, timeout: int | None = None) -> R:
        """-> [bdev]; `timeout` is SPDK's: ms to wait for `name` to appear."""
        return self._call("bdev_get_bdevs", spdk_params(name=name, timeout=timeout))

    # -- Longhorn fork ----------------------------------------------------------------------------------

    def bdev_lvol_set_xattr(self, name: str, xattr_name: str, xattr_value: str) -> R:
        return self._call("bdev_lvol_set_xattr", spdk_params(
            name=name, xattr_name=xattr_name, xattr_value=xattr_value))

    def bdev_lvol_get_xattr(self, name: str, xattr_name: str) -> R:
        """-> the value as a string."""
        return self._call("bdev_lvol_get_xattr", spdk_params(name=name, xattr_name=xattr_name))

    def bdev_lvol_detach_parent(self, name: str) -> R:
        return self._call("bdev_lvol_detach_parent", spdk_params(name=name))

    def bdev_lvol_get_fragmap(self, name: str, offset: int | None = None, size: int | None = None) -> R:
        """-> {cluster_size, num_clusters, num_allocated_clusters, fragmap (base64)}."""
        return self._call("bdev_lvol_get_fragmap", spdk_params(name=name, offset=offset, size=size))

    def bdev_lvol_register_snapshot_checksum(self, name: str) -> R:
        return self._call("bdev_lvol_register_snapshot_checksum", spdk_params(name=name))

    def bdev_lvol_get_snapshot_checksum(self, name: str) -> R:
        """-> {checksum: int} (may exceed 2**63)."""
        return self._call("bdev_lvol_get_snapshot_checksum", spdk_params(name=name))

    def bdev_lvol_start_shallow_copy(self, src_lvol_name: str, dst_bdev_name: str) -> R:
        """-> {operation_id: int}."""
        return self._call("bdev_lvol_start_shallow_copy", spdk_params(
            src_lvol_name=src_lvol_name, dst_bdev_name=dst_bdev_name))

    def bdev_lvol_check_shallow_copy(self, operation_id: int) -> R:
        """-> {copied_clusters, total_clusters, state: "in progress"|"complete"|"error", error?}."""
        return self._call("bdev_lvol_check_shallow_copy", spdk_params(operation_id=operation_id))

    # -- target -----------------------------------------------------------------------------------------

    def rpc_get_methods(self, current: bool | None = None, include_aliases: bool | None = None) -> R:
        return self._call("rpc_get_methods", spdk_params(current=current, include_aliases=include_aliases))

    def spdk_get_version(self) -> R:
        """-> {version, fields{major, minor, patch, suffix, commit}}."""
        return self._call("spdk_get_version", None)

    def bdev_malloc_create(self, num_blocks: int, block_size: int, name: str | None = None,
                           uuid: str | None = None) -> R:
        """-> bdev name."""
        return self._call("bdev_malloc_create", spdk_params(
            num_blocks=num_blocks, block_size=block_size, name=name, uuid=uuid))

    def bdev_malloc_delete(self, name: str) -> R:
        return self._call("bdev_malloc_delete", spdk_params(name=name))


class RpcMethods(LvolMethods[Awaitable[Any]]):
    """The typed RPCs on a pipelined `RpcConnection`: `await RpcMethods(conn).bdev_lvol_delete(name=...)`."""

    def __init__(self, conn: RpcConnection, *, timeout: float = 30.0) -> None:
        self.conn = conn
        self.timeout = timeout

    def _call(self, method: str, params: dict[str, Any] | None) -> Awaitable[Any]:
        return self.conn.call(method, params, timeout=self.timeout)


class SyncRpcMethods(LvolMethods[Any]):
    """The typed RPCs on a blocking `SyncRpc`; reads (READ_METHODS) are retried when `retry_reads`."""

    def __init__(self, rpc: SyncRpc, *, retry_reads: bool = True) -> None:
        self.rpc = rpc
        self.retry_reads = retry_reads

    def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        if self.retry_reads and method in READ_METHODS:
            return self.rpc.call_read(method, **(params or {}))
        return self.rpc.call_params(method, params)


@dataclass(frozen=True)
class Capabilities:
    """What a target can serve, from its `rpc_get_methods` list."""

    methods: frozenset[str]

    @classmethod
    def from_methods(cls, methods: Iterable[str]) -> Capabilities:
        return cls(frozenset(methods))

    def has(self, method: str) -> bool:
        return method in self.methods

    @property
    def missing_required(self) -> list[str]:
        return sorted(REQUIRED_LVOL_METHODS - self.methods)

    @property
    def missing_optional(self) -> list[str]:
        return sorted(OPTIONAL_LONGHORN_METHODS - self.methods)

    @property
    def is_longhorn_fork(self) -> bool:
        """All of the Longhorn fork's own lvol RPCs are there."""
        return LONGHORN_FORK_METHODS <= self.methods

    @property
    def xattrs(self) -> bool:
        return {"bdev_lvol_set_xattr", "bdev_lvol_get_xattr"} <= self.methods

    @property
    def snapshot_checksum(self) -> bool:
        return {"bdev_lvol_register_snapshot_checksum", "bdev_lvol_get_snapshot_checksum"} <= self.methods

    @property
    def shallow_copy(self) -> bool:
        return {"bdev_lvol_start_shallow_copy", "bdev_lvol_check_shallow_copy"} <= self.methods

    @property
    def set_parent(self) -> bool:
        return "bdev_lvol_set_parent" in self.methods

    @property
    def detach_parent(self) -> bool:
        return "bdev_lvol_detach_parent" in self.methods

    @property
    def fragmap(self) -> bool:
        return "bdev_lvol_get_fragmap" in self.methods

    def require(self, methods: Iterable[str], why: str = "this run") -> None:
        """TargetError naming every missing method unless the target has them all."""
        missing = sorted(set(methods) - self.methods)
        if missing:
            fork = [m for m in missing if m in LONGHORN_FORK_METHODS]
            hint = " (Longhorn's SPDK fork only: use a longhorn-v24.09 build)" if fork else ""
            raise TargetError(f"target lacks {', '.join(missing)} needed by {why}{hint}; "
                              f"or leave those operations out of the storm mix")
