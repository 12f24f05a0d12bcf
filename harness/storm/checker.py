"""The model beside the target: every reply is judged against `harness.model.LvolStore`.

An op that shared no key with any other op while it was in flight (`grouping`) is judged exactly: the model
(`mirror`) must give the same outcome (ok, or the same errno) and, where its row says so, the same reply. Ops
that overlapped on a key form a group, judged when the whole group has answered: the successful mutations
must apply in some order (`ordering`), and errors are counted as races. Where the model cannot know the
order, it judges the trees leniently (`taint`) until a quiesce point re-reads them.

Checks that need the target's own word: right after a delete answered EBUSY the engine looks the lvol up (a
busy delete must change nothing: `busy`); at quiesce points the listing is compared with the model and the
target's cluster accounting (total - free == what the lvstore's own lvols hold) exposes leaks (`listing_checks`).
"""

from __future__ import annotations

import time
from typing import Any

from harness.model.lvstore import LvolStore
from harness.storm.busy import BusyWindows, busy_delete_removed
from harness.storm.esnaps import EsnapBdevs
from harness.storm.findings import Finding, Findings
from harness.storm.following import follow
from harness.storm.grouping import Grouping
from harness.storm.listing_checks import LeakWatch, listing_diff, sure_lvols
from harness.storm.mirror import LvstoreInfo, ModelMirror
from harness.storm.operations import Op
from harness.storm.ordering import search_order
from harness.storm.taint import Taint
from harness.storm.view import TreeView

_REROOTS = frozenset({"remove", "orphan", "to-grandparent", "reparent"})
"""View effects that can move an lvol, with its subtree, to another root (see `Checker.on_reply`)."""

__all__ = ["Checker", "Finding", "LvstoreInfo"]


class Checker:
    """Judges replies, keeps the model and the view in step, and collects findings."""

    def __init__(self, view: TreeView, lvs: LvstoreInfo, *, check_busy_delete: bool = True,
                 copy_dst_bytes: int = 0, esnaps: EsnapBdevs | None = None) -> None:
        self.view = view
        self.lvs = lvs
        self.check_busy_delete = check_busy_delete
        self.mirror = ModelMirror(lvs, copy_dst_bytes=copy_dst_bytes, esnaps=esnaps)
        self._order_due = False
        self._blob_ops_inflight = 0
        """Ops in flight that make or delete a blob: two at once may take metadata pages in another order in
        the target than the checker applies them, and then the model's blob ids are no longer the target's."""
        self.grouping = Grouping(view)
        self.busy = BusyWindows()
        self.taint = Taint()
        self.leaks = LeakWatch()
        self._findings = Findings()
        self.space_margin = 0
        """Free clusters below which an ENOSPC the model did not expect (or missed) is a race, not a finding."""
        self.races = 0
        self.judged = 0
        self.compared = 0
        """Lvols compared with the target's listing at quiesce points (each time, each lvol)."""

    @property
    def model(self) -> LvolStore:
        return self.mirror.model

    @property
    def findings(self) -> list[Finding]:
        return self._findings.items

    @property
    def repeat_count(self) -> int:
        return self._findings.repeat_count

    def add(self, finding: Finding) -> None:
        """Keep the first finding of each kind and method (with the same outcome); count the repeats."""
        self._findings.add(finding)

    # -- the target's state as a whole ------------------------------------------------------------------

    def adopt(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]], store: LvstoreInfo) -> None:
        """Make model and view equal to the target's listing (start, after findings, after an lvstore swap)."""
        self.lvs = store
        self.mirror.adopt(lvols, bdevs, store)
        self.view.rebuild(lvols, bdevs)
        self.taint.clear()
        self.grouping.forget_groups()

    def on_reload(self) -> None:
        """The lvstore was unloaded and loaded again (nothing in flight): jobs and open blobs are gone, esnap
        clones of external snapshots missing now are degraded, and the next comparison checks the listing
        order (blob ids) when the model's blob ids are the target's."""
        self.settle()
        self.model.reload(self.mirror.esnaps.present)
        self.busy.clear()
        self._order_due = self.mirror.pages_exact

    def on_esnap_arrived(self, uuid: str) -> None:
        """A missing external snapshot was made again (nothing in flight): its degraded clones get bdevs."""
        self.settle()
        self.model.hotplug(uuid)

    def reset_lvstore_name(self, name: str) -> None:
        self.model.name = name

    def keys_of(self, op: Op) -> tuple[str, ...]:
        return self.grouping.keys_of(op)

    # -- sends ------------------------------------------------------------------------------------------

    def on_send(self, op: Op) -> None:
        op.keys = self.grouping.keys_of(op)
        rule = op.rule
        if rule.creates_lvol or rule.view == "remove":
            if self._blob_ops_inflight:
                self.mirror.pages_exact = False
            self._blob_ops_inflight += 1
        if rule.view == "remove":
            # Until it answers, no other op is aimed at it (a pick would mostly meet No such device).
            self.view.hide(str(op.params.get(rule.lvol_params[0])))
        busy = self.busy
        if busy and busy.any_busy(op.keys, time.monotonic()):  # most sends: no job window open at all
            op.contended = True
        taint = self.taint
        if taint.everything or (taint.keys and taint.any_of(op.keys)):
            op.contended = True
            op.lenient = True
        self.grouping.join(op)

    def abandon(self, op: Op) -> None:
        """No reply will come (timeout, lost connection): its effect is unknown; resync before judging more."""
        self.grouping.leave(op)
        rule = op.rule
        if rule.creates_lvol or rule.view == "remove":
            self._blob_ops_inflight -= 1
            self.mirror.pages_exact = False
        if rule.view == "remove":
            self.view.unhide(str(op.params.get(rule.lvol_params[0])))
        self.taint.everything = True
        if op.group is not None:
            op.group.root().inflight -= 1

    # -- replies ----------------------------------------------------------------------------------------

    def on_reply(self, op: Op) -> None:
        self.grouping.leave(op)
        rule = op.rule
        if rule.creates_lvol or rule.view == "remove":
            self._blob_ops_inflight -= 1
        created = op.result if op.ok and rule.creates_lvol and isinstance(op.result, str) else None
        if created is not None and self.taint.any_of(op.keys):
            # Made from an lvol the model is unsure of (a snapshot takes its origin's parent and clusters):
            # judged as leniently as it until the next quiesce point re-reads the tree.
            self.taint.add(created)
        if rule.view == "remove":
            self.view.unhide(str(op.params.get(rule.lvol_params[0])))
        if op.group is None and created is not None:
            op.keys = (*op.keys, created)
        if rule.starts_job:
            self.busy.open(op.keys, time.monotonic())
        moved = self._moving(op) if op.ok and op.group is not None and rule.view in _REROOTS else ()
        if op.ok:
            follow(self.view, rule, op.params, op.result)
            if rule.returns_clusters:
                self.leaks.note(op)
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
        if created is not None:
            # Later ops on the new lvol must wait for this group's verdict (and share its taint).
            op.keys = (*op.keys, created)
        if moved and g.inflight > 0:
            # The view already shows this reply (a snapshot's only clone moved up, an lvol left its tree), the
            # model not until the group is judged: later ops on the lvols it moved must join the group, and
            # the keys they will name are their roots in the view as it is now.
            held = self._new_roots(moved)
            op.keys = (*op.keys, *held)
            for key in held:
                self.grouping.hold_key(key, g)
        if g.inflight <= 0:
            if self.grouping.close(g):
                self._judge_group(g.members)
                # Every member has answered and been judged: nothing asks an op for its group again, and
                # op -> group -> members -> op would be a cycle only the garbage collector frees.
                for m in g.members:
                    m.group = None
        elif created is not None:
            self.grouping.hold_key(created, g)

    def _moving(self, op: Op) -> tuple[str, ...]:
        """The lvols whose tree a success of `op` changes: those it names and their children (before the view
        follows the reply)."""
        view = self.view
        out: list[str] = []
        for param in op.rule.lvol_params:
            ref = op.params.get(param)
            if ref is None:
                continue
            uuid = str(ref)
            slash = uuid.find("/")
            if slash > 0:
                uuid = view.by_name.get(uuid[slash + 1:], uuid)
            out.append(uuid)
            out.extend(view.children_of(uuid))
        return tuple(out)

    def _new_roots(self, moved: tuple[str, ...]) -> tuple[str, ...]:
        view = self.view
        keys: dict[str, None] = {}
        for uuid in moved:
            if uuid in view.nodes:
                keys[uuid] = None
                keys[view.root_of(uuid)] = None
        return tuple(keys)

    def settle(self) -> None:
        """At a quiesce point nothing is in flight: judge every group still open."""
        for g in self.grouping.open_groups():
            if self.grouping.close(g):
                self._judge_group(g.members)
        self.grouping.forget_groups()

    # -- judging ----------------------------------------------------------------------------------------

    def _judge_exact(self, op: Op) -> None:
        self.judged += 1
        mirror = self.mirror
        if op.outcome == "ENOMEM" and op.rule.claims_md_pages and mirror.md_pages_short():
            # Out of metadata pages: how many a blob needs (xattrs, extent pages) is not modelled exactly.
            self.races += 1
            return
        free_before = self.model.free_clusters
        expected, value = mirror.apply(op)
        actual = op.outcome
        if expected != actual:
            self.taint.trees(self.view, [op])
            if "ENOSPC" in (expected, actual) and free_before <= self.space_margin:
                # Allocations in other trees overlapped this one: near full, who got the space is a race.
                self.races += 1
                return
            self.add(Finding("unexpected-reply",
                             f"{op.describe()}: the model expects {expected}{mirror.context(op)}", op.record()))
            return
        judge = op.rule.judge
        if not op.ok or judge is None:
            return
        got = judge.view(op.result) if judge.view is not None else op.result
        if got is not None and got != value:
            self.taint.trees(self.view, [op])
            self.add(Finding(judge.kind, f"{op.describe()}: target reports {got!r}, model expects {value!r}",
                             op.record()))

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
        self.races += sum(1 for o in ops if not o.ok)
        writes = sorted((o for o in ops if o.ok and o.rule.mutating), key=lambda o: o.t_start)
        if not writes:
            return
        lenient = any(o.lenient for o in ops)
        if len(writes) == 1:
            expected, _ = self.mirror.apply(writes[0])
            if expected != "ok":
                self.taint.trees(self.view, ops)
                if not lenient:
                    self._no_order(writes[0], expected, ops)
            return
        # Two or more writes overlapped: which order the target chose is not known for sure, so the trees
        # they touched are judged leniently until the next quiesce point re-reads them. Only such groups
        # need a checkpoint (order matters only there); it copies the trees they touch, not the store.
        self.taint.trees(self.view, ops)
        failure = search_order(self.mirror, writes)
        if failure is not None and not lenient:
            self._no_order(*failure, group=ops)

    def _no_order(self, op: Op, expected: str, group: list[Op]) -> None:
        others = [o.describe() for o in group if o is not op][:6]
        self.taint.trees(self.view, [op])
        self.add(Finding("no-legal-order",
                         f"{op.describe()}, but no order of the {len(group)} overlapping operations allows it "
                         f"(the model says {expected}{self.mirror.context(op)}); overlapping: {'; '.join(others)}",
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
        racing = [o for o in self.grouping.inflight_on(str(uuid)) if o.method == op.method and o is not op]
        if op.group is not None:
            racing += [o for o in op.group.root().members if o is not op and o.method == op.method
                       and o.params.get(param) == uuid and o.ok]
        finding = busy_delete_removed(op, racing)
        if finding is None:
            return
        self.add(finding)
        # The target left every legal history here: ops that overlapped this delete (the job that made the
        # lvol busy) and the rest of its tree are judged leniently until the next quiesce point re-reads it.
        if op.group is not None:
            for m in op.group.root().members:
                m.lenient = True
        self.taint.trees(self.view, [op])
        # Mirror the target so the storm goes on from what is really there.
        lv = self.model.find_by_uuid(str(uuid))
        if lv is not None:
            self.model.drop_lvol(lv)
        self.view.remove(str(uuid))

    # -- quiesce and end checks -------------------------------------------------------------------------

    def compare(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]],
                store: LvstoreInfo) -> list[Finding]:
        """The target's listing against the model, all of it when no race left the model unsure, else the trees
        no tainted key touches (`sure_lvols`); then both adopt the target's state."""
        found: list[Finding] = []
        quiet = bool(self.taint)
        leak = self.leaks.in_listing(bdevs, store)
        if leak is not None:
            found.append(leak)
        if not quiet:
            found.extend(listing_diff(lvols, bdevs, store, self.model, check_order=self._order_due))
            self.compared += len(lvols)
        elif not self.taint.everything:
            # A racy interval: the trees it touched are re-read as they are; every other tree must be as the
            # model says (under the default mix nearly every interval is racy somewhere).
            sure = sure_lvols(lvols, bdevs, self.model, self.taint.keys)
            found.extend(listing_diff(lvols, bdevs, store, self.model, only=sure))
            self.compared += len(sure)
        self._order_due = False
        self.leaks.clear()
        if found or quiet or store.free_clusters != self.model.free_clusters:
            self.adopt(lvols, bdevs, store)
        else:
            self.lvs = store
            self.view.rebuild(lvols, bdevs)
        return found

    def leak_suspects_text(self) -> str:
        return self.leaks.text()

    def leak_suspect_record(self) -> dict[str, Any] | None:
        return self.leaks.record()

    def check_release(self, op: Op, before: int, after: int, held: int) -> None:
        """Cleanup deletes one lvol at a time: its clusters must all come back."""
        finding = self.leaks.in_release(op, before, after, held)
        if finding is not None:
            self.add(finding)
