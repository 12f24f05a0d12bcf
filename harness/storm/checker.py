"""The model beside the target: every reply is judged against `harness.model.LvolStore`.

An operation's *keys* are the lvols it reads or changes (target, parent, a snapshot's children). An op that
shared no key with any other op while it was in flight is judged exactly: the model must give the same
outcome (ok, or the same errno) and, for reads, the same links. Ops that overlapped on a key form a *group*,
judged when the whole group has answered: the successful mutations must apply in some order (send order,
reply order, then every order of up to 5), and errors are counted as races. Model per-op cost is O(1) in the
number of lvols (dict lookups; a group checkpoint copies three dicts of references).

Checks that need the target's own word: right after a delete answered EBUSY the engine looks the lvol up (a
busy delete must change nothing); at quiesce points the listing is compared with the model and the target's
cluster accounting (total - free == sum of allocated) exposes leaks.
"""

from __future__ import annotations

import copy
import errno as errno_mod
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from harness.model.lvstore import MIB, Checkpoint, LvolStore, ModelCrash, ModelError
from harness.rpc_rules import DST_SIZE_BYTES
from harness.rpc_rules.table import links_of_bdev_reply
from harness.storm.following import follow
from harness.storm.operations import Op
from harness.storm.view import TreeView

# After a checksum or shallow copy answers, the target may keep the snapshot open a little longer (a
# background job): ops on it within this window are judged as races.
BUSY_LINGER_S = 0.5
GROUP_PERMUTE_MAX = 5
BUSY_SWEEP_MIN = 1024
"""`_busy_until` is swept of passed windows when it holds more than this (or twice what the last sweep kept)."""
# With the estimate of metadata pages in use above this share of all pages, ENOMEM (bs_create_blob finds no
# free page) is legal for an op whose row claims metadata pages.
MD_PAGES_NEAR_FULL = 0.75


@dataclass
class Finding:
    """Something no legal interleaving allows, or a state the target must never reach."""

    kind: str
    message: str
    op: dict[str, Any] | None = None
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "op": self.op, "t": self.t}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


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


class _Group:
    """Ops that overlapped on some key; judged together once all have answered."""

    __slots__ = ("closed", "inflight", "members", "merged", "with_rename")

    def __init__(self) -> None:
        self.members: list[Op] = []
        self.inflight = 0
        self.merged: _Group | None = None
        self.with_rename = False  # an lvstore rename is a member: its "s:" keys draw ops in too
        self.closed = False  # judged (a quiesce point may judge it before the checker saw every reply)

    def root(self) -> _Group:
        g = self
        while g.merged is not None:
            g = g.merged
        return g


class Checker:
    """Judges replies, keeps the model and the view in step, and collects findings."""

    def __init__(self, view: TreeView, lvs: LvstoreInfo, *, check_busy_delete: bool = True,
                 copy_dst_bytes: int = 0) -> None:
        self.view = view
        self.lvs = lvs
        self.check_busy_delete = check_busy_delete
        self.copy_dst_bytes = copy_dst_bytes
        self.findings: list[Finding] = []
        self._seen: set[tuple[Any, ...]] = set()
        self.repeats: dict[tuple[Any, ...], int] = {}
        self.space_margin = 0
        self.races = 0
        self.judged = 0
        self._next_uuid: str | None = None
        self.model: LvolStore = self._empty_model(lvs)
        # Ops in flight by key (dicts: insertion-ordered sets with O(1) removal); renames of the lvstore also
        # by their "s:" keys, the only in-flight ops an op naming the lvstore is ordered against.
        self._inflight_by_key: dict[str, dict[Op, None]] = {}
        self._renames_by_key: dict[str, dict[Op, None]] = {}
        self._key_group: dict[str, _Group] = {}
        self._busy_until: dict[str, float] = {}
        self._busy_sweep_at = BUSY_SWEEP_MIN
        self._tainted: set[str] = set()
        self._taint_all = False
        self._deletes_since_check: deque[Op] = deque(maxlen=64)
        self._leak_reported = False

    # -- model plumbing ---------------------------------------------------------------------------------

    def _uuid(self) -> str:
        u = self._next_uuid
        self._next_uuid = None
        return u or f"model-{id(self)}-{time.monotonic_ns()}"

    def _empty_model(self, lvs: LvstoreInfo) -> LvolStore:
        return LvolStore(lvs.name, lvs.uuid, lvs.base_bdev, lvs.total_data_clusters, lvs.cluster_size,
                         lvs.block_size, uuid_factory=self._uuid)

    def adopt(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]], store: LvstoreInfo) -> None:
        """Make model and view equal to the target's listing (start, after findings, after an lvstore swap)."""
        self.lvs = store
        old = self.model
        model = self._empty_model(store)
        by_name: dict[str, str] = {}
        for e in lvols:
            info = (bdevs.get(e["uuid"]) or {}).get("driver_specific", {}).get("lvol", {})
            bdev = bdevs.get(e["uuid"]) or {}
            nbytes = bdev.get("num_blocks", 0) * bdev.get("block_size", store.block_size)
            n = -(-nbytes // store.cluster_size)
            self._next_uuid = e["uuid"]
            lv = model.adopt_lvol(e["name"], n, bool(info.get("thin_provision", e.get("is_thin_provisioned"))),
                                  int(info.get("num_allocated_clusters", 0)), bool(info.get("snapshot")))
            prev = old.find_by_uuid(e["uuid"])
            if prev is not None:
                lv.xattrs = dict(prev.xattrs)
                lv.checksum = prev.checksum
                lv.read_only = prev.read_only or lv.read_only
            by_name[e["name"]] = e["uuid"]
        for e in lvols:
            info = (bdevs.get(e["uuid"]) or {}).get("driver_specific", {}).get("lvol", {})
            base = info.get("base_snapshot")
            if base and base in by_name:
                child = model.find_by_uuid(e["uuid"])
                parent = model.find_by_uuid(by_name[base])
                if child is not None and parent is not None:
                    model.adopt_link(child, parent)
        model.set_free_clusters(store.free_clusters)
        self.model = model
        self.view.rebuild(lvols, bdevs)
        self._tainted.clear()
        self._taint_all = False
        self._key_group.clear()

    def on_reload(self) -> None:
        """The lvstore was unloaded and loaded again (nothing in flight): jobs and open blobs are gone."""
        self.settle()
        self.model.reload()
        self._busy_until.clear()

    def reset_lvstore_name(self, name: str) -> None:
        self.model.name = name

    def add(self, finding: Finding) -> None:
        """Keep the first finding of each kind and method (with the same outcome); count the repeats."""
        op = finding.op or {}
        err = op.get("error") or {}
        key = (finding.kind, op.get("method"), err.get("errno") if err else "ok") if op else (
            finding.kind, finding.message)
        if key in self._seen:
            self.repeats[key] = self.repeats.get(key, 0) + 1
            return
        self._seen.add(key)
        self.findings.append(finding)

    @property
    def repeat_count(self) -> int:
        return sum(self.repeats.values())

    # -- keys and groups --------------------------------------------------------------------------------

    def keys_of(self, op: Op) -> tuple[str, ...]:
        """The lvols op depends on: each lvol it names and the root of that lvol's tree (tree-wide effects
        such as re-parenting and cycle checks make any two ops in one tree order-dependent); the name it
        gives ("n:"); the lvstore names it uses ("s:": every op naming the lvstore, as lvs_name or in an
        "lvs/lvol" alias, races a rename of it). All by the roles of its row's params."""
        p = op.params
        rule = op.rule
        root_of = self.view.root_of
        keys: list[str] = []
        new = rule.new_name_param
        if new is not None:
            keys.append("n:" + str(p.get(new)))
        for param in rule.lvstore_keys:
            if param in p:
                keys.append("s:" + str(p[param]))
        for param in rule.lvol_params:
            ref = p.get(param)
            if ref is None:
                continue
            ref = str(ref)
            slash = ref.find("/")
            if slash > 0:
                keys.append("s:" + ref[:slash])
                # One key per lvol however it is named: "lvs/name" and its UUID must meet.
                ref = self.view.by_name.get(ref[slash + 1:], ref)
            keys.append(ref)
            root = root_of(ref)
            if root != ref:
                keys.append(root)
        return tuple(keys)

    def on_send(self, op: Op) -> None:
        keys = op.keys = self.keys_of(op)
        rule = op.rule
        if rule.view == "remove":
            # Until it answers, no other op is aimed at it (a pick would mostly meet No such device).
            self.view.hide(str(op.params.get(rule.lvol_params[0])))
        groups: set[_Group] = set()
        fresh: list[Op] = []
        now = time.monotonic()
        renames = rule.effect == "lvstore"
        for k in keys:
            g = self._key_group.get(k)
            if g is not None:
                groups.add(g.root())
            # Naming the lvstore orders an op only against a rename of it.
            inflight = self._renames_by_key if not renames and k.startswith("s:") else self._inflight_by_key
            for other in inflight.get(k, ()):
                if other.group is None:
                    og = _Group()
                    og.members.append(other)
                    og.inflight = 1
                    other.group = og
                    other.contended = True
                    fresh.append(other)
                groups.add(other.group.root())
            until = self._busy_until.get(k)
            if until is not None:
                if until > now:
                    op.contended = True
                else:
                    del self._busy_until[k]
            if k in self._tainted or self._taint_all:
                op.contended = True
                op.lenient = True
        if groups:
            # Union by size: the largest group absorbs the others, and only the absorbed members' keys are
            # pointed at it (re-pointing every member on every join was quadratic in a long-lived group).
            g = max(groups, key=lambda x: len(x.members))
            relink: list[Op] = fresh
            with_rename = renames or any(x.with_rename for x in groups)
            for other in groups:
                if other is not g:
                    other.merged = g
                    g.members.extend(other.members)
                    g.inflight += other.inflight
                    relink.extend(other.members)
            g.members.append(op)
            g.inflight += 1
            op.group = g
            op.contended = True
            relink.append(op)
            if with_rename and not g.with_rename:
                g.with_rename = True
                relink = g.members
            for m in relink:
                for k in m.keys:
                    if g.with_rename or not k.startswith("s:"):
                        self._key_group[k] = g
        for index in (self._inflight_by_key, self._renames_by_key) if renames else (self._inflight_by_key,):
            for k in keys:
                ops = index.get(k)
                if ops is None:
                    index[k] = {op: None}
                else:
                    ops[op] = None

    def _unregister(self, op: Op) -> None:
        renames = op.rule.effect == "lvstore"
        for index in (self._inflight_by_key, self._renames_by_key) if renames else (self._inflight_by_key,):
            for k in op.keys:
                ops = index.get(k)
                if ops is not None:
                    ops.pop(op, None)
                    if not ops:
                        del index[k]

    def abandon(self, op: Op) -> None:
        """No reply will come (timeout, lost connection): its effect is unknown; resync before judging more."""
        self._unregister(op)
        rule = op.rule
        if rule.view == "remove":
            self.view.unhide(str(op.params.get(rule.lvol_params[0])))
        self._taint_all = True
        if op.group is not None:
            g = op.group.root()
            g.inflight -= 1

    # -- replies ----------------------------------------------------------------------------------------

    def on_reply(self, op: Op) -> None:
        self._unregister(op)
        rule = op.rule
        created = op.ok and rule.creates_lvol and isinstance(op.result, str)
        if created and any(k in self._tainted for k in op.keys):
            # Made from an lvol the model is unsure of (a snapshot takes its origin's parent and clusters):
            # judged as leniently as it until the next quiesce point re-reads the tree.
            self._tainted.add(op.result)
        if rule.view == "remove":
            self.view.unhide(str(op.params.get(rule.lvol_params[0])))
        if op.group is None and created:
            op.keys = (*op.keys, op.result)
        if rule.starts_job:
            until = time.monotonic() + BUSY_LINGER_S
            for k in op.keys:
                self._busy_until[k] = until
            if len(self._busy_until) > self._busy_sweep_at:
                self._sweep_busy()
        if op.ok:
            follow(self.view, rule, op.params, op.result)
            if rule.returns_clusters:
                self._deletes_since_check.append(op)
        if op.group is None:
            if op.contended:
                self._judge_group([op])
            else:
                self._judge_exact(op)
            return
        g = op.group.root()
        g.inflight -= 1
        if g.closed:
            # settle() judged the group while this reply was still on its way to the checker (a busy
            # delete's follow-up read): judging the group again would apply its writes twice.
            if not op.judged:
                self._judge_group([op])
            return
        if created:
            # Later ops on the new lvol must wait for this group's verdict (and share its taint).
            op.keys = (*op.keys, op.result)
        if g.inflight <= 0:
            self._close_group(g)
        elif created:
            self._key_group[op.result] = g

    def _sweep_busy(self) -> None:
        """Forget busy windows that have passed. Most keys are lvols deleted since and never named again (an
        entry left only when its key was named again), so the dict grew by every checksum and shallow copy of
        the run: ~1.2M entries, ~150 MB an hour at full rate. Sweeping when it doubles keeps it to the last
        BUSY_LINGER_S of them at amortized O(1) per op."""
        now = time.monotonic()
        self._busy_until = {k: t for k, t in self._busy_until.items() if t > now}
        self._busy_sweep_at = max(BUSY_SWEEP_MIN, 2 * len(self._busy_until))

    def _close_group(self, g: _Group) -> None:
        if g.closed:
            return
        g.closed = True
        for m in g.members:
            for k in m.keys:
                if self._key_group.get(k) is g:
                    del self._key_group[k]
        self._judge_group(g.members)

    def settle(self) -> None:
        """At a quiesce point nothing is in flight: judge every group still open."""
        seen: set[int] = set()
        for g in list(self._key_group.values()):
            r = g.root()
            if id(r) not in seen:
                seen.add(id(r))
                self._close_group(r)
        self._key_group.clear()

    # -- applying one op to the model ------------------------------------------------------------------

    def _apply(self, op: Op) -> tuple[str, Any]:
        """Run op's model transition (its row's): ("ok", the reply the model predicts) or (errno name, None).
        Refusals change nothing."""
        rule, p, model = op.rule, op.params, self.model
        try:
            for param in rule.lvstore_params:  # vbdev_get_lvol_store_by_uuid_xor_name, ..._by_name
                value = p.get(param.name)
                if value is not None and value != (model.uuid if param.role == "lvstore_uuid" else model.name):
                    return errno_mod.errorcode[param.missing], None
            transition = rule.model
            if transition is None:
                return "ok", None
            if rule.creates_lvol:
                self._next_uuid = op.result if op.ok else None
            values = {**p, DST_SIZE_BYTES: self.copy_dst_bytes or (1 << 62)} if DST_SIZE_BYTES in transition.args else p
            result = transition.run(model, values)
            if rule.starts_job:
                model.tick(1 << 20)  # no polls here: the job is done before the next op is judged
            return "ok", rule.reply(result)
        except ModelError as exc:
            return errno_mod.errorcode.get(exc.errno, str(exc.errno)), None
        except ModelCrash as exc:
            return "crash", exc.detail
        finally:
            self._next_uuid = None

    def _judge_exact(self, op: Op) -> None:
        self.judged += 1
        if op.outcome == "ENOMEM" and op.rule.claims_md_pages and self._md_pages_short():
            # Out of metadata pages: how many a blob needs (xattrs, extent pages) is not modelled exactly.
            self.races += 1
            return
        free_before = self.model.free_clusters
        expected, value = self._apply(op)
        actual = op.outcome
        if expected != actual:
            self._taint(op)
            if "ENOSPC" in (expected, actual) and free_before <= self.space_margin:
                # Allocations in other trees overlapped this one: near full, who got the space is a race.
                self.races += 1
                return
            self.add(Finding("unexpected-reply",
                             f"{op.describe()}: the model expects {expected}"
                             f"{self._context(op)}", op.record()))
            return
        judge = op.rule.judge
        if not op.ok or judge is None:
            return
        got = judge.view(op.result) if judge.view is not None else op.result
        if got is not None and got != value:
            self._taint(op)
            self.add(Finding(judge.kind, f"{op.describe()}: target reports {got!r}, model expects {value!r}",
                             op.record()))

    def _md_pages_short(self) -> bool:
        used, total = self.model.md_pages_estimate()
        return used >= total * MD_PAGES_NEAR_FULL

    def _context(self, op: Op) -> str:
        """What the model knew about the op's target: why it expected what it expected."""
        for k in op.keys:
            lv = self.model.find(k) if not k.startswith("n:") else None
            if lv is not None:
                clones = [c.name for c in self.model.clones_of(lv)]
                return (f" ({lv.name}: snapshot={lv.is_snapshot}, {len(clones)} clones {clones}, "
                        f"read_only={lv.read_only}, thin={lv.thin})")
        return ""

    def _taint(self, op: Op) -> None:
        self._taint_trees([op])

    def _taint_trees(self, ops: list[Op]) -> None:
        """Taint the ops' keys and every lvol in their trees as the view sees them now (bounded walk)."""
        view = self.view
        todo = [k for o in ops for k in o.keys]
        seen = self._tainted
        budget = 256
        while todo and budget > 0:
            k = todo.pop()
            budget -= 1
            if k in seen or k.startswith("s:"):
                continue
            seen.add(k)
            node = view.nodes.get(k)
            if node is not None:
                todo.extend(node.children)
                if node.parent is not None:
                    todo.append(node.parent)

    # -- groups -----------------------------------------------------------------------------------------

    def _checkpoint(self, ops: list[Op]) -> Checkpoint:
        """The model's state before ops, enough to undo them: the trees their keys name (an op's keys hold its
        lvols and their roots; set_parent names both trees); every blob for an lvstore-wide op (a rename
        renames every alias)."""
        if any(o.rule.effect == "lvstore" for o in ops):
            return self.model.checkpoint()
        return self.model.checkpoint({k for o in ops for k in o.keys if not k.startswith(("n:", "s:"))})

    def _try_order(self, ops: list[Op]) -> list[Op]:
        """Apply successes greedily in this order, retrying refused ones after each success; the leftovers."""
        pending = list(ops)
        progress = True
        while pending and progress:
            progress = False
            for o in list(pending):
                expected, _ = self._apply(o)
                if expected == "ok":
                    pending.remove(o)
                    progress = True
        return pending

    def _judge_group(self, members: list[Op]) -> None:
        # Who got the last free clusters among overlapping allocations is a race the model cannot see
        # (allocations in different trees do not share keys): space is not judged inside a group.
        with self.model.space_unjudged():
            self._judge_group_ops(members)

    def _judge_group_ops(self, members: list[Op]) -> None:
        ops = [o for o in members if o.done]
        for o in ops:
            o.judged = True
        self.judged += len(ops)
        failed = [o for o in ops if not o.ok]
        self.races += len(failed)
        writes = sorted((o for o in ops if o.ok and o.rule.mutating), key=lambda o: o.t_start)
        if not writes:
            return
        lenient = any(o.lenient for o in ops)
        if len(writes) == 1:
            expected, _ = self._apply(writes[0])
            if expected != "ok":
                self._taint_trees(ops)
                if not lenient:
                    self._no_order(writes[0], ops, expected)
            return
        # Two or more writes overlapped: which order the target chose is not known for sure, so the trees
        # they touched are judged leniently until the next quiesce point re-reads them.
        self._taint_trees(ops)
        # Only groups with two or more successful writes need a checkpoint (order matters only there); it
        # copies the trees they touch, not the store.
        cp = self._checkpoint(writes)
        left = self._try_order(writes)
        if not left:
            return
        self.model.restore(cp)
        left = self._try_order(sorted(writes, key=lambda o: o.t_end))
        if not left:
            return
        exhaustive = len(writes) <= GROUP_PERMUTE_MAX
        if exhaustive:
            for order in itertools.permutations(writes):
                self.model.restore(cp)
                if all(self._apply(o)[0] == "ok" for o in order):
                    return
        self.model.restore(cp)
        left = self._try_order(writes)
        if exhaustive and not lenient:
            expected, _ = self._apply(left[0])
            self._no_order(left[0], ops, expected)

    def _no_order(self, op: Op, group: list[Op], expected: str) -> None:
        others = [o.describe() for o in group if o is not op][:6]
        self._taint(op)
        self.add(Finding("no-legal-order",
                         f"{op.describe()}, but no order of the {len(group)} overlapping operations allows it "
                         f"(the model says {expected}{self._context(op)}); overlapping: {'; '.join(others)}",
                         op.record()))

    # -- busy deletes ---------------------------------------------------------------------------------

    def wants_busy_check(self, op: Op) -> bool:
        return self.check_busy_delete and op.rule.view == "remove" and op.errno_name == "EBUSY"

    def on_busy_check(self, op: Op, exists: bool, t: float) -> None:
        """`exists` is the target's answer right after `op` (a delete) answered EBUSY."""
        if exists:
            return
        param = op.rule.lvol_params[0]
        uuid = op.params.get(param)
        racing = [o for o in self._inflight_by_key.get(str(uuid), ()) if o.method == op.method and o is not op]
        if op.group is not None:
            racing += [o for o in op.group.root().members if o is not op and o.method == op.method
                       and o.params.get(param) == uuid and o.ok]
        if racing:
            return
        self.add(Finding("busy-delete-removed",
                         f"delete answered EBUSY but the lvol is gone: {op.describe()}, then bdev_get_bdevs "
                         f"{uuid} -> ENODEV (a refused delete must change nothing; SPDK's forced removal)",
                         op.record()))
        # The target left every legal history here: ops that overlapped this delete (the job that made the
        # lvol busy) and the rest of its tree are judged leniently until the next quiesce point re-reads it.
        if op.group is not None:
            for m in op.group.root().members:
                m.lenient = True
        self._taint(op)
        # Mirror the target so the storm goes on from what is really there.
        lv = self.model.find_by_uuid(str(uuid))
        if lv is not None:
            self.model.drop_lvol(lv)
        self.view.remove(str(uuid))

    # -- quiesce and end checks -------------------------------------------------------------------------

    def compare(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]],
                store: LvstoreInfo) -> list[Finding]:
        """The target's listing against the model; then both adopt the target's state."""
        found: list[Finding] = []
        quiet = self._taint_all or bool(self._tainted)
        held = sum(int(((b.get("driver_specific") or {}).get("lvol") or {}).get("num_allocated_clusters", 0))
                   for b in bdevs.values())
        used = store.total_data_clusters - store.free_clusters
        if used != held and not self._leak_reported:
            suspects = list(self._deletes_since_check)
            rec = suspects[0].record() if suspects else None
            found.append(Finding(
                "leaked-clusters",
                f"lvstore {store.name}: {used} clusters in use but live lvols hold {held}: {used - held} "
                f"clusters leaked since the last check; exposed by {self.leak_suspects_text()}", rec))
            self._leak_reported = True
        if not quiet:
            found.extend(self._diff(lvols, bdevs, store))
        self._deletes_since_check.clear()
        if found or quiet or store.free_clusters != self.model.free_clusters:
            self.adopt(lvols, bdevs, store)
        else:
            self.lvs = store
            self.view.rebuild(lvols, bdevs)
        return found

    def _diff(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]],
              store: LvstoreInfo) -> list[Finding]:
        found: list[Finding] = []
        target = {e["uuid"]: e for e in lvols}
        model = {lv.uuid: lv for lv in self.model.lvols()}
        for u in target.keys() - model.keys():
            found.append(Finding("orphan-lvol", f"target lists {target[u]['alias']} ({u}) which the model "
                                 "does not have (nothing created it, or a delete answered ok without deleting)"))
        for u in model.keys() - target.keys():
            found.append(Finding("missing-lvol", f"model has {model[u].name} ({u}) but the target does not "
                                 "list it (deleted without a successful delete)"))
        for u in target.keys() & model.keys():
            got = links_of_bdev_reply([bdevs.get(u, {})])
            want = self.model.bdev_links(u)
            if got is not None and got != want:
                found.append(Finding("wrong-links", f"{target[u]['alias']}: target reports {got}, model "
                                     f"expects {want}"))
        if store.free_clusters != self.model.free_clusters and not found:
            found.append(Finding("free-clusters", f"lvstore {store.name}: free_clusters {store.free_clusters}, "
                                 f"model expects {self.model.free_clusters}"))
        return found

    def leak_suspects_text(self) -> str:
        ops = list(self._deletes_since_check)
        if not ops:
            return "no delete or shrink since the last check"
        return "; ".join(o.describe() for o in ops[:5]) + (f" (+{len(ops) - 5} more)" if len(ops) > 5 else "")

    def leak_suspect_record(self) -> dict[str, Any] | None:
        ops = list(self._deletes_since_check)
        return ops[0].record() if ops else None

    def check_release(self, op: Op, before: int, after: int, held: int) -> None:
        """Cleanup deletes one lvol at a time: its clusters must all come back."""
        if after - before < held and not self._leak_reported:
            self._leak_reported = True
            self.add(Finding("leaked-clusters", f"{op.describe()}: the lvol held {held} clusters but "
                             f"free_clusters went {before} -> {after}", op.record()))


def size_bytes(mib: int) -> int:
    return mib * MIB


__all__ = ["Checker", "Finding", "LvstoreInfo", "copy"]
