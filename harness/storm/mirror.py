"""The model beside the target: an `LvolStore` made from the target's own listing and kept in step by
running each operation through its row's transition (`harness.rpc_rules`).

It predicts replies: `apply(op)` is ("ok", the reply the model gives) or (errno name, None), and a refusal
changes nothing. New lvols take the UUIDs the target answered, so the model and the target name them alike.
Model per-op cost is O(1) in the number of lvols (dict lookups).
"""

from __future__ import annotations

import errno as errno_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.model.lvstore import Checkpoint, Lvol, LvolStore, ModelCrash, ModelError
from harness.rpc_rules.rule import DST_SIZE_BYTES, ESNAP_ID, ESNAP_SIZE_BYTES, Rule
from harness.rpc_rules.table import RULES
from harness.storm.esnaps import EsnapBdevs
from harness.storm.operations import Op

MD_PAGES_NEAR_FULL = 0.75
"""With the estimate of metadata pages in use above this share of all pages, ENOMEM (bs_create_blob finds no
free page) is legal for an op whose row claims metadata pages."""
JOB_DONE_TICKS = 1 << 20
"""Ticks that finish any job: the mirror has no polls, so a job is done before the next op is judged."""

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    r.method: getattr(LvolStore, r.model.method) for r in RULES if r.model is not None}
"""Each row's transition as the LvolStore function (looked up once, not per op)."""


@dataclass
class LvstoreInfo:
    """An lvstore as `bdev_lvol_get_lvstores` reports it."""

    name: str
    uuid: str
    base_bdev: str
    total_data_clusters: int
    free_clusters: int
    cluster_size: int
    block_size: int

    @classmethod
    def from_reply(cls, d: dict[str, Any]) -> LvstoreInfo:
        return cls(d["name"], d["uuid"], d.get("base_bdev", ""), d["total_data_clusters"], d["free_clusters"],
                   d["cluster_size"], d.get("block_size", 4096))


class ModelMirror:
    """The model of the storm's lvstore, as the target's replies say it is."""

    def __init__(self, lvs: LvstoreInfo, *, copy_dst_bytes: int = 0, esnaps: EsnapBdevs | None = None) -> None:
        self.copy_dst_bytes = copy_dst_bytes
        self.esnaps = esnaps if esnaps is not None else EsnapBdevs()
        self._next_uuid: str | None = None
        self.model = self._empty(lvs)
        self.pages_exact = True
        """The model's blob ids are the target's (it followed every blob since the lvstore was empty): the
        listing order after a reload can be judged."""

    def _uuid(self) -> str:
        u = self._next_uuid
        self._next_uuid = None
        return u or f"model-{id(self)}-{time.monotonic_ns()}"

    def _empty(self, lvs: LvstoreInfo) -> LvolStore:
        return LvolStore(lvs.name, lvs.uuid, lvs.base_bdev, lvs.total_data_clusters, lvs.cluster_size,
                         lvs.block_size, uuid_factory=self._uuid)

    def adopt(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]], store: LvstoreInfo) -> None:
        """A new model equal to the target's listing (bdev_lvol_get_lvols, bdev_get_bdevs by UUID); what a
        listing does not show (xattrs, checksums, read-only) is kept from the old model for lvols it knew, and
        so is everything about a degraded lvol (it has no bdev to read its links from). One pass over the
        listing, then one over the links: quiesce points adopt thousands of lvols."""
        old = self.model
        model = self._empty(store)
        model.missing_esnaps = set(old.missing_esnaps)
        by_name: dict[str, Lvol] = {}
        links: list[tuple[Lvol, str]] = []
        old_find, old_parent, adopt_lvol = old.find_by_uuid, old.parent_of, model.adopt_lvol
        cluster_size, block_size = store.cluster_size, store.block_size
        for e in lvols:
            uuid = e["uuid"]
            bdev = bdevs.get(uuid)
            info = bdev.get("driver_specific", {}).get("lvol", {}) if bdev else {}
            prev = old_find(uuid)
            if not bdev and prev is not None:  # degraded: as the model had it
                n, thin, allocated = prev.num_clusters, prev.thin, prev.num_allocated_clusters
                parent_of = old_parent(prev)
                base = parent_of.name if parent_of is not None else None
            else:
                nbytes = bdev.get("num_blocks", 0) * bdev.get("block_size", block_size) if bdev else 0
                n = -(-nbytes // cluster_size)
                thin = bool(info.get("thin_provision", e.get("is_thin_provisioned")))
                allocated = int(info.get("num_allocated_clusters", 0))
                base = info.get("base_snapshot")
            self._next_uuid = uuid
            lv = adopt_lvol(e["name"], n, thin, allocated, bool(info.get("snapshot", e.get("is_snapshot"))))
            lv.esnap = info.get("external_snapshot_name") if info.get("esnap_clone") else None
            if prev is not None:
                lv.xattrs = dict(prev.xattrs)
                lv.checksum = prev.checksum
                lv.read_only = prev.read_only or lv.read_only
                if not bdev:
                    lv.esnap = prev.esnap
            by_name[e["name"]] = lv
            if base:
                links.append((lv, base))
        for child, base in links:
            parent = by_name.get(base)
            if parent is not None:
                model.adopt_link(child, parent)
        model.set_free_clusters(store.free_clusters)
        self.model = model
        self.pages_exact = not lvols  # blob ids match the target's only when the lvstore was empty

    def _esnap_args(self, rule: Rule, p: dict[str, Any], kwargs: dict[str, Any]) -> str | None:
        """The external snapshot a row's `bdev` param names, as the transition's UUID and size; the outcome
        when it cannot be (the errno name, or the row's own reply code), else None."""
        param = next(q for q in rule.params if q.role == "bdev")
        bdev = self.esnaps.resolve(str(p.get(param.name)))
        if bdev is None:
            if param.missing_reply is not None:
                return f"code {param.missing_reply[0]}"
            return errno_mod.errorcode[param.missing]
        if bdev.state == "deleting":
            return "ENODEV"  # found, but it cannot be opened (its delete waits for the esnap clones)
        kwargs[ESNAP_ID], kwargs[ESNAP_SIZE_BYTES] = bdev.uuid, bdev.size_bytes
        return None

    def apply(self, op: Op) -> tuple[str, Any]:
        """Run op's row's transition: ("ok", the reply the model predicts) or (errno name, None); "crash" with
        the detail when the state reached kills the target. Refusals change nothing."""
        rule, p, model = op.rule, op.params, self.model
        try:
            for param in rule.lvstore_params:  # vbdev_get_lvol_store_by_uuid_xor_name, ..._by_name
                value = p.get(param.name)
                if value is not None and value != (model.uuid if param.role == "lvstore_uuid" else model.name):
                    if param.missing_reply is not None:  # bdev_lvol_clone_bdev: -32602 "lvs does not exist"
                        return f"code {param.missing_reply[0]}", None
                    return errno_mod.errorcode[param.missing], None
            transition = rule.model
            if transition is None:
                return "ok", None
            if rule.creates_lvol:
                self._next_uuid = op.result if op.ok else None
            kwargs = transition.kwargs(p)
            if DST_SIZE_BYTES in transition.args:
                kwargs[DST_SIZE_BYTES] = self.copy_dst_bytes or (1 << 62)
            if ESNAP_ID in transition.args:
                refused = self._esnap_args(rule, p, kwargs)
                if refused is not None:
                    return refused, None
            result = _FUNCTIONS[op.method](model, **kwargs)
            if rule.starts_job:
                model.tick(JOB_DONE_TICKS)
            return "ok", rule.reply(result)
        except ModelError as exc:
            return errno_mod.errorcode.get(exc.errno, str(exc.errno)), None
        except ModelCrash as exc:
            return "crash", exc.detail
        finally:
            self._next_uuid = None

    def checkpoint(self, ops: list[Op]) -> Checkpoint:
        """The model's state before ops, enough to undo them: the trees their keys name (an op's keys hold its
        lvols and their roots; set_parent names both trees); every blob for an lvstore-wide op (a rename
        renames every alias)."""
        if any(o.rule.effect == "lvstore" for o in ops):
            return self.model.checkpoint()
        return self.model.checkpoint({k for o in ops for k in o.keys if not k.startswith(("n:", "s:"))})

    def restore(self, cp: Checkpoint) -> None:
        self.model.restore(cp)

    def release(self, cp: Checkpoint) -> None:
        self.model.release(cp)

    def md_pages_short(self) -> bool:
        used, total = self.model.md_pages_estimate()
        return used >= total * MD_PAGES_NEAR_FULL

    def context(self, op: Op) -> str:
        """What the model knew about the op's target: why it expected what it expected."""
        model = self.model
        for k in op.keys:
            lv = model.find(k) if not k.startswith("n:") else None
            if lv is not None:
                clones = [c.name for c in model.clones_of(lv)]
                return (f" ({lv.name}: snapshot={lv.is_snapshot}, {len(clones)} clones {clones}, "
                        f"read_only={lv.read_only}, thin={lv.thin})")
        return ""
