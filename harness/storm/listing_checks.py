"""What only the target's whole listing can show, at quiesce points and at the end: lvols the model does not
have (or has and the target lost), wrong parent/child links (external snapshots included), lvols degraded or
not as the model expects, free clusters the model does not expect, clusters in use that no live lvol holds (a
leak, exposed by the deletes and shrinks since the last check), and after a reload the listing order (blob id
order, when the model's blob ids are the target's)."""

from __future__ import annotations

from collections import deque
from typing import Any

from harness.model.lvstore import Lvol, LvolStore
from harness.rpc_rules.table import links_of_bdev_reply
from harness.storm.findings import Finding
from harness.storm.mirror import LvstoreInfo
from harness.storm.operations import Op

SUSPECTS_KEPT = 64


def sure_lvols(lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]], model: LvolStore,
               tainted: set[str]) -> set[str]:
    """The lvols (UUIDs) of every tree that no tainted key touches, trees taken as the listing and the model
    join them together (an lvol the two place in different trees joins both): what a quiesce point after a racy
    interval can still compare exactly. A key is a UUID, `n:NAME` or `LVS/NAME` (`harness.storm.grouping`)."""
    up: dict[str, str] = {}

    def root(u: str) -> str:
        r = up.setdefault(u, u)
        while r != up[r]:
            r = up[r]
        while up[u] != r:  # path halving keeps later finds short
            up[u], u = r, up[u]
        return r

    def join(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            up[ra] = rb

    by_name = {e["name"]: e["uuid"] for e in lvols}
    for e in lvols:
        u = e["uuid"]
        root(u)
        info = (bdevs.get(u) or {}).get("driver_specific", {}).get("lvol", {})
        base = info.get("base_snapshot")
        if base is not None and base in by_name:
            join(u, by_name[base])
    blobs = model.blobs
    for lv in blobs.values():
        root(lv.uuid)
        parent = blobs.get(lv.parent) if lv.parent is not None else None
        if parent is not None:
            join(lv.uuid, parent.uuid)
    names = {k[2:] if k.startswith("n:") else k.partition("/")[2] for k in tainted
             if k.startswith("n:") or "/" in k}
    bad = {root(k) for k in tainted if k in up}
    bad.update(root(by_name[n]) for n in names if n in by_name)
    bad.update(root(lv.uuid) for lv in blobs.values() if lv.name in names)
    return {u for u in up if root(u) not in bad}


def _plain_leaf_alike(bdev: dict[str, Any], lv: Lvol, model: LvolStore) -> bool:
    """An lvol with no clones on either side whose links the target reports as the model has them: what
    `links_of_bdev_reply` and `LvolStore.bdev_links` would find equal, without building either (a quiesce point
    at 5,000 lvols compares thousands; most have no clones)."""
    if lv.clones:
        return False
    info = (bdev.get("driver_specific") or {}).get("lvol")
    if type(info) is not dict or info.get("clones"):
        return False
    parent = model.parent_of(lv)
    return (bool(info.get("snapshot")) == lv.is_snapshot and bool(info.get("clone")) == (parent is not None)
            and info.get("base_snapshot") == (parent.name if parent is not None else None)
            and (info.get("external_snapshot_name") if info.get("esnap_clone") else None) == lv.esnap)


def listing_diff(lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]], store: LvstoreInfo,
                 model: LvolStore, *, check_order: bool = False, only: set[str] | None = None) -> list[Finding]:
    """The target's listing (bdev_lvol_get_lvols, bdev_get_bdevs by UUID, the lvstore) against the model;
    `check_order`: the listing order too (right after a reload, with the model's blob ids the target's);
    `only`: just these lvols (whole trees the model is sure of), without the lvstore-wide free clusters."""
    found: list[Finding] = []
    target = {e["uuid"]: e for e in lvols}
    ours = {lv.uuid: lv for lv in model.lvols()}
    if only is not None:
        target = {u: e for u, e in target.items() if u in only}
        ours = {u: lv for u, lv in ours.items() if u in only}
        check_order = False
    for u in target.keys() - ours.keys():
        found.append(Finding("orphan-lvol", f"target lists {target[u]['alias']} ({u}) which the model "
                             "does not have (nothing created it, or a delete answered ok without deleting)"))
    for u in ours.keys() - target.keys():
        found.append(Finding("missing-lvol", f"model has {ours[u].name} ({u}) but the target does not "
                             "list it (deleted without a successful delete)"))
    for u in target.keys() & ours.keys():
        degraded = bool(target[u].get("is_degraded"))
        if degraded != model.is_degraded(ours[u]):
            found.append(Finding("wrong-degraded", f"{target[u]['alias']}: target reports is_degraded={degraded}, "
                                 f"model expects {not degraded} (external snapshot {model.esnap_root(ours[u]).esnap})"))
            continue
        bdev = bdevs.get(u)
        if bdev is not None and _plain_leaf_alike(bdev, ours[u], model):
            continue
        got = links_of_bdev_reply([bdev or {}])
        if got is None:
            continue  # degraded: no bdev to read links from
        want = model.bdev_links(u)
        if got != want:
            found.append(Finding("wrong-links", f"{target[u]['alias']}: target reports {got}, model "
                                 f"expects {want}"))
    if check_order and not found:
        order_t = [e["uuid"] for e in lvols if e["uuid"] in ours]
        order_m = [lv.uuid for lv in model.lvols() if lv.uuid in target]
        if order_t != order_m:
            found.append(Finding("wrong-listing-order", f"lvstore {store.name}: after the reload the target lists "
                                 f"{[target[u]['name'] for u in order_t]}, the model (blob id order) "
                                 f"{[ours[u].name for u in order_m]}"))
    if only is None and store.free_clusters != model.free_clusters and not found:
        found.append(Finding("free-clusters", f"lvstore {store.name}: free_clusters {store.free_clusters}, "
                             f"model expects {model.free_clusters}"))
    return found


class LeakWatch:
    """The deletes and shrinks since the last check (the suspects a leak names) and whether a leak was
    reported already (one per run: after it every check would repeat it)."""

    def __init__(self) -> None:
        self.suspects: deque[Op] = deque(maxlen=SUSPECTS_KEPT)
        self.reported = False

    def note(self, op: Op) -> None:
        """A successful op that gives clusters back (its row's returns_clusters)."""
        self.suspects.append(op)

    def clear(self) -> None:
        self.suspects.clear()

    def text(self) -> str:
        ops = list(self.suspects)
        if not ops:
            return "no delete or shrink since the last check"
        return "; ".join(o.describe() for o in ops[:5]) + (f" (+{len(ops) - 5} more)" if len(ops) > 5 else "")

    def record(self) -> dict[str, Any] | None:
        return self.suspects[0].record() if self.suspects else None

    def in_listing(self, bdevs: dict[str, dict[str, Any]], store: LvstoreInfo) -> Finding | None:
        """The target's own accounting: total - free must equal what its live lvols hold. `bdevs` is every lvol
        bdev on the target; clusters are one blobstore's, so only the lvols of `store` count (a nested lvstore's
        lvols hold clusters of the lvol it sits on, which holds them in `store`)."""
        lvols = (((b.get("driver_specific") or {}).get("lvol") or {}) for b in bdevs.values())
        held = sum(int(lv.get("num_allocated_clusters", 0)) for lv in lvols if lv.get("lvol_store_uuid") == store.uuid)
        used = store.total_data_clusters - store.free_clusters
        if used == held or self.reported:
            return None
        self.reported = True
        return Finding("leaked-clusters",
                       f"lvstore {store.name}: {used} clusters in use but live lvols hold {held}: {used - held} "
                       f"clusters leaked since the last check; exposed by {self.text()}", self.record())

    def in_release(self, op: Op, before: int, after: int, held: int) -> Finding | None:
        """Cleanup deletes one lvol at a time: its clusters must all come back."""
        if after - before >= held or self.reported:
            return None
        self.reported = True
        return Finding("leaked-clusters", f"{op.describe()}: the lvol held {held} clusters but "
                       f"free_clusters went {before} -> {after}", op.record())
