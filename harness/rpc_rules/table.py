"""The table: one `Rule` per SPDK method the harness knows, and the name sets every layer derives from it.

Rows are in the order Longhorn's spdk_tgt (longhorn-v24.09 @1975133e9) lists them in `rpc_get_methods`
(transcript 07; within a module that is the reverse of the SPDK_RPC_REGISTER order in its source, e.g.
module/bdev/lvol/vbdev_lvol_rpc.c), so the reference target's listing is this table's served rows. Params
are SPDK's decoder tables, in their order. Adding an RPC: one row here, plus its `LvolStore` method.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from harness.rpc_rules.rule import (
    DST_SIZE_BYTES,
    ESNAP_ID,
    ESNAP_SIZE_BYTES,
    Draw,
    Judge,
    Param,
    Rule,
    StormUse,
    Transition,
    checksum_object,
    true,
    uuid_of,
)

INVALID_PARAMS = -32602  # SPDK_JSONRPC_ERROR_INVALID_PARAMS
INTERNAL_ERROR = -32603  # SPDK_JSONRPC_ERROR_INTERNAL_ERROR
CLEAR_METHODS = ("none", "unmap", "write_zeroes")
COPY_DST = "storm_copy_dst"
"""The shallow copy destination the storm makes (and names when it could not make one)."""
ESNAP_PREFIX = "storm_esnap"
"""The external snapshot bdevs the storm makes for esnap clones are `storm_esnap0`, `storm_esnap1`, ..."""
RENAMED_SUFFIX = "_r"


def links_of_bdev_reply(result: Any) -> dict[str, Any] | None:
    """bdev_get_bdevs' `driver_specific.lvol` as the links the model predicts; None if the reply has none."""
    if not isinstance(result, list) or not result or not isinstance(result[0], dict):
        return None
    info = (result[0].get("driver_specific") or {}).get("lvol")
    if not isinstance(info, dict):
        return None
    return {
        "snapshot": bool(info.get("snapshot")),
        "clone": bool(info.get("clone")),
        "base_snapshot": info.get("base_snapshot"),
        "clones": sorted(info.get("clones") or []),
        "esnap": info.get("external_snapshot_name") if info.get("esnap_clone") else None,
    }


def renamed_lvstore(name: str) -> str:
    """The name the storm renames the lvstore to: toggles RENAMED_SUFFIX, so a second rename goes back."""
    base = name.removesuffix(RENAMED_SUFFIX)
    return base if name.endswith(RENAMED_SUFFIX) else base + RENAMED_SUFFIX


def _lvol(name: str, **kw: Any) -> Param:
    return Param(name, role="lvol", **kw)


def _name_of(kind: str) -> Callable[[Draw], dict[str, Any]]:
    """An argument builder aiming the row's `name` param at a live lvol of `kind`."""

    def args(d: Draw) -> dict[str, Any]:
        return {"name": d.target(kind)}

    return args


def _lvstore(d: Draw) -> dict[str, Any]:
    return {"lvs_name": d.lvs_name}


def _create(d: Draw) -> dict[str, Any]:
    return {"lvs_name": d.lvs_name, "lvol_name": d.name, "size_in_mib": d.size_mib, "thin_provision": d.thin}


def _delete(d: Draw) -> dict[str, Any]:
    # Mostly leaves, so the population turns over; sometimes inner snapshots.
    return {"name": d.target("leaf" if d.u_extra < 0.6 else "any")}


def _set_parent(d: Draw) -> dict[str, Any]:
    return {"lvol_name": d.target("volume"), "parent_name": d.other("snapshot")}


def _set_parent_bdev(d: Draw) -> dict[str, Any]:
    return {"lvol_name": d.target("volume"), "parent_name": d.esnap}


def _clone_bdev(d: Draw) -> dict[str, Any]:
    return {"bdev": d.esnap, "lvs_name": d.lvs_name, "clone_name": d.name}


def _get_xattr(d: Draw) -> dict[str, Any]:
    return {"name": d.target("any"), "xattr_name": "storm" if d.u_extra < 0.7 else "name"}


def _rename_lvstore(d: Draw) -> dict[str, Any]:
    return {"old_name": d.lvs_name, "new_name": renamed_lvstore(d.lvs_name)}


_LVS_SELECT = (Param("uuid", required=False, role="lvstore_uuid"), Param("lvs_name", required=False, role="lvstore"))

RULES: tuple[Rule, ...] = (
    Rule("bdev_malloc_delete", effect="target"),
    Rule("bdev_malloc_create", effect="target"),
    # ---- module/bdev/lvol/vbdev_lvol_rpc.c -------------------------------------------------------------------
    Rule("bdev_lvol_get_snapshot_checksum", (_lvol("name"),), availability="longhorn", served="model",
         model=Transition("get_snapshot_checksum", ("name",)), refusal_code=None, reply=checksum_object,
         storm=StormUse(2, _name_of("snapshot")),
         why="the checksum a finished bdev_lvol_register_snapshot_checksum stored; none stored is -ENODEV"),
    Rule("bdev_lvol_register_snapshot_checksum", (_lvol("name"),), effect="lvol", availability="longhorn",
         model=Transition("register_snapshot_checksum", ("name",)), refusal_code=INTERNAL_ERROR, reply=true,
         starts_job=True, storm=StormUse(3, _name_of("snapshot")),
         why="a job that holds the snapshot open while it reads its clusters, then stores the CRC-64 as an "
             "xattr; SPDK answers from the job's completion (the reference target's own handler)"),
    Rule("bdev_lvol_get_fragmap",
         (_lvol("name", required=False), Param("offset", "uint64", False), Param("size", "uint64", False)),
         availability="longhorn", served="model", model=Transition("get_fragmap", ("name", "offset", "size")),
         judge=Judge("wrong-fragmap"),
         # The whole lvol, or from an offset with size 0 (to offset + the lvol's size: past its end, SPDK's
         # corner); an offset that is no whole number of clusters, or at the end, is -EINVAL, judged too.
         storm=StormUse(2, lambda d: {"name": d.target("any"),
                                      **({"offset": d.size_mib // 4 << 20} if d.u_extra >= 0.6 else {})}),
         why="a bit map of the lvol's own allocated clusters (seek_data/seek_hole over [offset, offset+size))"),
    Rule("bdev_lvol_set_parent_bdev", (_lvol("lvol_name"), Param("parent_name", role="bdev")), effect="lvol",
         availability="newer-upstream", served="model",
         model=Transition("set_parent_bdev", ("lvol_name", ESNAP_ID, ESNAP_SIZE_BYTES)), reply=true, view="orphan",
         storm=StormUse(2, _set_parent_bdev),
         why="spdk_lvol_set_external_parent: the lvol leaves its parent and becomes an esnap clone of the bdev "
             "parent_name (any bdev, an lvol of the same lvstore too); a missing bdev is -32602 No such device"),
    Rule("bdev_lvol_set_parent", (_lvol("lvol_name"), _lvol("parent_name")), effect="lvol",
         availability="newer-upstream", served="model", model=Transition("set_parent", ("lvol_name", "parent_name")),
         reply=true, view="reparent", storm=StormUse(2, _set_parent),
         why="spdk_bs_blob_set_parent: a thin lvol becomes a clone of a snapshot of its size"),
    Rule("bdev_lvol_check_shallow_copy", (Param("operation_id", "uint32"),), idempotent=False,
         availability="newer-upstream",
         why="a shallow copy's status; a complete or failed one is reported once, then forgotten (-ENODEV)"),
    Rule("bdev_lvol_start_shallow_copy", (_lvol("src_lvol_name"), Param("dst_bdev_name", role="bdev")),
         effect="lvol", availability="newer-upstream",
         model=Transition("start_shallow_copy", ("src_lvol_name", DST_SIZE_BYTES)), starts_job=True,
         status_method="bdev_lvol_check_shallow_copy",
         storm=StormUse(0, lambda d: {"src_lvol_name": d.target("snapshot"),
                                      "dst_bdev_name": d.copy_dst or COPY_DST}),
         why="a job copying a read-only lvol's own clusters to a bdev, holding the lvol open until done"),
    Rule("bdev_lvol_grow_lvstore", _LVS_SELECT, effect="lvstore", availability="newer-upstream",
         why="the lvstore takes clusters its base bdev gained since it was made"),
    Rule("bdev_lvol_get_lvols", (Param("lvs_uuid", required=False, role="lvstore_uuid"),
                                 Param("lvs_name", required=False, role="lvstore")),
         availability="required", storm=StormUse(1, _lvstore)),
    Rule("bdev_lvol_get_lvstores", _LVS_SELECT, availability="required", aliases=("get_lvol_stores",),
         storm=StormUse(1, _lvstore)),
    Rule("bdev_lvol_delete", (_lvol("name", by_names=True),), effect="lvol", availability="required",
         served="model", model=Transition("delete", ("name",)), refusal_code=INTERNAL_ERROR, reply=true,
         view="remove", returns_clusters=True, storm=StormUse(22, _delete),
         why="2+ clones: EPERM; one clone: it takes the snapshot's clusters and place; held open: EBUSY"),
    Rule("bdev_lvol_set_read_only", (_lvol("name"),), effect="lvol", availability="required", served="model",
         model=Transition("set_read_only", ("name",)), reply=true, storm=StormUse(1, _name_of("volume"))),
    Rule("bdev_lvol_resize", (_lvol("name"), Param("size_in_mib", "uint64")), effect="lvol",
         availability="required", served="model", model=Transition("resize", ("name", "size_in_mib")), reply=true,
         view="resize", takes_clusters="always", returns_clusters=True, claims_md_pages=True,
         storm=StormUse(4, lambda d: {"name": d.target("volume"), "size_in_mib": d.size_mib})),
    Rule("bdev_lvol_detach_parent", (_lvol("name"),), effect="lvol", availability="longhorn", served="model",
         model=Transition("detach_parent", ("name",)), reply=true, view="to-grandparent",
         storm=StormUse(2, _name_of("clone")),
         why="bs_inflate_blob with nothing copied: the lvol moves to its parent's parent"),
    Rule("bdev_lvol_decouple_parent", (_lvol("name"),), effect="lvol", availability="required", served="model",
         model=Transition("decouple_parent", ("name",)), reply=true, view="to-grandparent",
         takes_clusters="always", claims_md_pages=True, storm=StormUse(2, _name_of("clone")),
         why="copies the clusters its direct parent owns, then moves to the parent's parent"),
    Rule("bdev_lvol_inflate", (_lvol("name"),), effect="lvol", availability="required", served="model",
         model=Transition("inflate", ("name",)), reply=true, view="orphan", takes_clusters="always",
         claims_md_pages=True, storm=StormUse(2, _name_of("clone")),
         why="allocates every cluster the lvol lacks and leaves its parent"),
    Rule("bdev_lvol_get_xattr", (_lvol("name"), Param("xattr_name")), availability="longhorn", served="model",
         model=Transition("get_xattr", ("name", "xattr_name")), refusal_code=INTERNAL_ERROR,
         judge=Judge("wrong-xattr"), storm=StormUse(2, _get_xattr)),
    Rule("bdev_lvol_set_xattr", (_lvol("name"), Param("xattr_name"), Param("xattr_value")), effect="lvol",
         availability="longhorn", served="model", model=Transition("set_xattr", ("name", "xattr_name", "xattr_value")),
         reply=true, claims_md_pages=True,
         storm=StormUse(3, lambda d: {"name": d.target("volume"), "xattr_name": "storm", "xattr_value": d.name})),
    Rule("bdev_lvol_rename", (_lvol("old_name"), Param("new_name", role="renamed")), effect="lvol",
         availability="required", served="model", model=Transition("rename", ("old_name", "new_name")), reply=true,
         view="rename", storm=StormUse(3, lambda d: {"old_name": d.target("any"), "new_name": d.name}),
         why="the bdev alias changes first (any bdev with that name: EEXIST), then the lvol's name"),
    Rule("bdev_lvol_clone_bdev",
         (Param("bdev", role="bdev", missing_reply=(INVALID_PARAMS, "bdev does not exist"),
                own_lvstore_reply=(INVALID_PARAMS,
                                   "bdev is an lvol in same lvs as clone; use bdev_lvol_clone instead")),
          Param("lvs_name", role="lvstore", missing_reply=(INVALID_PARAMS, "lvs does not exist")),
          Param("clone_name", role="new_lvol")),
         effect="lvol", availability="newer-upstream", served="model",
         model=Transition("clone_bdev", ("clone_name", ESNAP_ID, ESNAP_SIZE_BYTES)), reply=uuid_of,
         view="esnap-clone", claims_md_pages=True, storm=StormUse(4, _clone_bdev),
         why="vbdev_lvol_create_bdev_clone: a new thin lvol as large as the bdev, reading it where it has no "
             "clusters (an esnap clone); the bdev is claimed read_many_write_none while any blob reads it"),
    Rule("bdev_lvol_clone", (_lvol("snapshot_name"), Param("clone_name", required=False, role="new_lvol")),
         effect="lvol", availability="required", served="model",
         model=Transition("clone", ("snapshot_name", "clone_name")), reply=uuid_of, view="clone", claims_md_pages=True,
         storm=StormUse(12, lambda d: {"snapshot_name": d.target("snapshot"), "clone_name": d.name})),
    Rule("bdev_lvol_snapshot", (_lvol("lvol_name"), Param("snapshot_name", role="new_lvol"),
                                Param("xattrs", "xattrs", False)),
         effect="lvol", availability="required", served="model",
         model=Transition("snapshot", ("lvol_name", "snapshot_name", "xattrs")), reply=uuid_of, view="snapshot",
         claims_md_pages=True,
         storm=StormUse(14, lambda d: {"lvol_name": d.target("volume"), "snapshot_name": d.name})),
    Rule("bdev_lvol_create",
         (Param("uuid", required=False, role="lvstore_uuid"), Param("lvs_name", required=False, role="lvstore"),
          Param("lvol_name", role="new_lvol"), Param("size_in_mib", "uint64"), Param("thin_provision", "bool", False),
          Param("clear_method", required=False, choices=CLEAR_METHODS, invalid="Invalid clean_method option")),
         effect="lvol", availability="required", served="model",
         model=Transition("create", ("lvol_name", "size_in_mib", "thin_provision")),
         sync_errnos=frozenset({errno.EEXIST, errno.EINVAL}), reply=uuid_of, view="add", takes_clusters="if-thick",
         claims_md_pages=True, storm=StormUse(20, _create),
         why="spdk_lvol_create checks the name (-EINVAL, -EEXIST at once); the bdev alias is checked when the "
             "bdev registers"),
    Rule("bdev_lvol_delete_lvstore", _LVS_SELECT, effect="lvstore", availability="required",
         why="deletes every lvol (a busy one too), then the lvstore"),
    Rule("bdev_lvol_rename_lvstore", (Param("old_name", role="lvstore", missing=errno.ENOENT),
                                      Param("new_name", role="new_lvstore")),
         effect="lvstore", model=Transition("rename_store", ("new_name",)), reply=true,
         storm=StormUse(0, _rename_lvstore),
         why="spdk_lvs_rename writes the new name into the super blob; every lvol's alias follows"),
    Rule("bdev_lvol_create_lvstore",
         (Param("bdev_name", role="bdev"), Param("cluster_sz", "uint32", False), Param("lvs_name", role="new_lvstore"),
          Param("clear_method", required=False, choices=CLEAR_METHODS, invalid="Invalid clear_method parameter"),
          Param("num_md_pages_per_cluster_ratio", "uint32", False)),
         effect="lvstore", availability="required"),
    # ---- module/bdev/aio ------------------------------------------------------------------------------------
    Rule("bdev_aio_delete", effect="target"),
    Rule("bdev_aio_rescan", effect="target"),
    Rule("bdev_aio_create", effect="target"),
    # ---- lib/nvmf (the storm's I/O exports lvols; harness.sim.nvmf serves them) -------------------------------
    Rule("nvmf_get_transports"),
    Rule("nvmf_create_transport", effect="target"),
    Rule("nvmf_subsystem_remove_ns", effect="target"),
    Rule("nvmf_subsystem_add_ns", effect="target",
         why="opens and claims the bdev (exclusive_write); the namespace goes when the bdev is deleted"),
    Rule("nvmf_subsystem_remove_listener", effect="target"),
    Rule("nvmf_subsystem_add_listener", effect="target"),
    Rule("nvmf_delete_subsystem", effect="target"),
    Rule("nvmf_create_subsystem", effect="target"),
    Rule("nvmf_get_subsystems"),
    # ---- lib/event, lib/thread, lib/env_dpdk, lib/bdev, lib/rpc ----------------------------------------------------
    Rule("framework_get_reactors", served="no"),
    Rule("thread_get_stats", served="no"),
    Rule("spdk_kill_instance", effect="target", why="signals the target (the reference target's server handles it)"),
    Rule("framework_wait_init"),
    Rule("framework_start_init", effect="target", startup_only=True),
    Rule("env_dpdk_get_mem_stats", served="no"),
    Rule("bdev_get_bdevs", (_lvol("name", required=False), Param("timeout", "uint64", False)),
         availability="required", model=Transition("bdev_links", ("name",)),
         judge=Judge("wrong-links", links_of_bdev_reply), storm=StormUse(2, _name_of("any")),
         why="every bdev, or the one named; the storm reads an lvol's links (driver_specific.lvol)"),
    Rule("bdev_get_iostat", served="no"),
    Rule("bdev_wait_for_examine", effect="target",
         why="answers once every bdev is examined (an lvstore on a new aio bdev loaded): a barrier, not a read"),
    Rule("spdk_get_version"),
    Rule("rpc_get_methods"),
)

BY_METHOD: dict[str, Rule] = {r.method: r for r in RULES}


def rule_for(method: str) -> Rule | None:
    return BY_METHOD.get(method)


def _methods(keep: Any) -> frozenset[str]:
    return frozenset(r.method for r in RULES if keep(r))


READS: frozenset[str] = _methods(lambda r: not r.mutating)
"""Methods that change no lvol, lvstore or bdev: what the minimizer may drop from a reproducer."""

READ_METHODS: frozenset[str] = _methods(lambda r: not r.mutating and r.idempotent)
"""Methods with no effect on the target: safe to send again after a timeout or a lost connection."""

MUTATING_LVOL_METHODS: frozenset[str] = _methods(lambda r: r.effect == "lvol")
"""Calls that change lvols of one lvstore (not the lvstore itself, not reads)."""

REQUIRED_LVOL_METHODS: frozenset[str] = _methods(lambda r: r.availability == "required")
"""What any lvol-capable target (upstream SPDK since v23) has; the harness cannot run without these."""

LONGHORN_FORK_METHODS: frozenset[str] = _methods(lambda r: r.availability == "longhorn")
"""Registered by Longhorn's SPDK fork (longhorn-v24.09) beyond upstream v24.09."""

OPTIONAL_LONGHORN_METHODS: frozenset[str] = _methods(lambda r: r.availability in ("longhorn", "newer-upstream"))
"""Methods Longhorn uses that an older or plain upstream target may lack; the storm checks before using them."""

SERVED_METHODS: tuple[str, ...] = tuple(r.method for r in RULES if r.served != "no")
"""What the reference target serves, in the order rpc_get_methods lists them."""
