"""The JSON shapes the reference target answers with, key for key as spdk_tgt writes them (the recordings).

bdev_get_bdevs' entries for lvols and base bdevs, bdev_lvol_get_lvstores' and bdev_lvol_get_lvols' entries.
"""

from __future__ import annotations

from harness.model.lvstore import Lvol, LvolStore
from harness.sim.bdevs import BaseBdev

RATE_LIMITS = {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}
MEMORY_DOMAINS = [
    {"dma_device_id": "system", "dma_device_type": 1},
    {"dma_device_id": "SPDK_ACCEL_DMA_DEVICE", "dma_device_type": 2},
]
_IO_TYPES = (
    "read", "write", "unmap", "flush", "reset", "nvme_admin", "nvme_io", "nvme_io_md", "write_zeroes", "zcopy",
    "get_zone_info", "zone_management", "zone_append", "compare", "compare_and_write", "abort", "seek_hole",
    "seek_data", "copy", "nvme_iov_md",
)  # fmt: skip


def _io_types(supported: set[str]) -> dict[str, bool]:
    return {t: t in supported for t in _IO_TYPES}


LVOL_IO_RW = _io_types({"read", "write", "unmap", "flush", "reset", "write_zeroes", "seek_hole", "seek_data"})
LVOL_IO_RO = _io_types({"read", "flush", "reset", "seek_hole", "seek_data"})
MALLOC_IO = _io_types({"read", "write", "flush", "reset", "unmap", "write_zeroes", "zcopy", "abort", "copy"})
AIO_IO = _io_types({"read", "write", "flush", "reset", "write_zeroes"})  # unmap only with fallocate (recorded)


def _claim_fields(claim: str | None) -> dict[str, object]:
    """`claimed`, and `claim_type` when claimed (key order as SPDK writes them)."""
    return {"claimed": True, "claim_type": claim} if claim is not None else {"claimed": False}


def lvol_bdev_json(store: LvolStore, lv: Lvol, log: list[str], *, claim: str | None = None,
                   memory_domains: int = len(MEMORY_DOMAINS)) -> dict[str, object]:
    """bdev_get_bdevs' entry for an lvol; the errors SPDK logs for links it cannot name go to `log`. `claim`:
    an lvstore on it or esnap clones reading it claim it; `memory_domains`: its base bdev's and its external
    snapshot's (vbdev_lvol_get_memory_domains)."""
    info: dict[str, object] = {
        "lvol_store_uuid": store.uuid,
        "base_bdev": store.base_bdev,
        "thin_provision": lv.thin,
        "num_allocated_clusters": lv.num_allocated_clusters,
        "snapshot": lv.is_snapshot,
        "clone": lv.is_clone,
    }
    if lv.is_clone:
        parent = store.parent_of(lv)
        if parent is not None and not parent.removed:
            info["base_snapshot"] = parent.name
        else:
            log.append(
                "vbdev_lvol.c: 864:vbdev_lvol_dump_info_json: *ERROR*: "
                f"Cannot obtain parent snapshots name for lvol {lv.name}"
            )
    if lv.is_snapshot and lv.clones:
        names = []
        for clone in store.clones_of(lv):
            if clone.removed:
                log.append("vbdev_lvol.c: 888:vbdev_lvol_dump_info_json: *ERROR*: Cannot obtain clone name")
            else:
                names.append(clone.name)
        info["clones"] = names
    info["esnap_clone"] = lv.esnap is not None
    if lv.esnap is not None:
        info["external_snapshot_name"] = lv.esnap
    return {
        "name": lv.uuid,
        "aliases": [store.bdev_alias(lv)],
        "product_name": "Logical Volume",
        "block_size": store.block_size,
        "num_blocks": store.size_bytes(lv) // store.block_size,
        "uuid": lv.uuid,
        "creation_time": lv.creation_time,
        "assigned_rate_limits": dict(RATE_LIMITS),
        **_claim_fields(claim),
        "zoned": False,
        "supported_io_types": dict(LVOL_IO_RO if lv.read_only else LVOL_IO_RW),
        **({"memory_domains": [dict(MEMORY_DOMAINS[i % len(MEMORY_DOMAINS)]) for i in range(memory_domains)]}
           if memory_domains else {}),  # no memory domains: no key (recorded, an lvol on an aio bdev)
        "driver_specific": {"lvol": info},
    }


def base_bdev_json(bdev: BaseBdev, claim: str | None = None) -> dict[str, object]:
    """rpc_dump_bdev_info's layout for a malloc or aio bdev (key order as SPDK writes it; recorded): its UUID
    is its alias; `claim`: an lvstore on it, a shallow copy to it (read_many_write_one) or esnap clones
    reading it (read_many_write_none)."""
    malloc = bdev.driver == "malloc"
    out: dict[str, object] = {
        "name": bdev.name,
        "aliases": [bdev.uuid],
        "product_name": "Malloc disk" if malloc else "AIO disk",
        "block_size": bdev.block_size,
        "num_blocks": bdev.num_blocks,
        "uuid": bdev.uuid,
        "creation_time": bdev.creation_time,
        "assigned_rate_limits": dict(RATE_LIMITS),
        **_claim_fields(claim),
    }
    out["zoned"] = False
    out["supported_io_types"] = dict(MALLOC_IO if malloc else AIO_IO)
    if malloc:
        out["memory_domains"] = [dict(d) for d in MEMORY_DOMAINS]
        out["driver_specific"] = {}
    else:
        aio = {"filename": bdev.filename, "block_size_override": bdev.block_size_override,
               "readonly": False, "fallocate": False}
        out["driver_specific"] = {"aio": aio}
    return out


def lvstore_json(store: LvolStore) -> dict[str, object]:
    return {
        "uuid": store.uuid,
        "name": store.name,
        "base_bdev": store.base_bdev,
        "total_data_clusters": store.total_data_clusters,
        "free_clusters": store.free_clusters,
        "block_size": store.block_size,
        "cluster_size": store.cluster_size,
    }


def lvol_entry(store: LvolStore, lv: Lvol) -> dict[str, object]:
    return {
        "alias": store.alias(lv),
        "uuid": lv.uuid,
        "name": lv.name,
        "creation_time": lv.creation_time,
        "is_thin_provisioned": lv.thin,
        "is_snapshot": lv.is_snapshot,
        "is_clone": lv.is_clone,
        "is_esnap_clone": lv.esnap is not None,
        "is_degraded": store.is_degraded(lv),
        "lvs": {"name": store.name, "uuid": store.uuid},
    }
