"""The storm's I/O lanes: reads and writes over NVMe/TCP to the lvols the RPC workers are changing, every block
stamped and every read judged against `harness.io.images`.

`IoStorm` exports lvols (`harness.io.export`), connects one controller with `lanes` I/O queues and keeps
`depth` commands in flight on each, to a few hot clusters of each exported lvol (the first ones and the last:
bounded space and memory). The engine tells it of every RPC it sends and of every reply (`on_send`,
`on_reply`): the model follows the successful ones; a write that overlapped an operation on its lvol's tree
leaves what it raced open (a snapshot holds it or not) instead of guessing. A write's cluster allocation is
given to the RPC checker's model too, so free clusters stay predictable; where a race makes them unknowable
the tree is tainted, as the checker does for its own races.

Judgement: a read must show, block by block, what the model allows (the state at send, at completion, or a
write that overlapped it); anything else is a `data-mismatch` finding naming the lvol, LBA, expected and seen
stamp and the operations around it. An error is legal when the lvol was being deleted or unexported, past the
smallest size it had in the command's window, on a read-only lvol, or with the lvstore nearly full; else it is
an `io-error` finding. The engine's pauses hold the lanes too (a quiesce point sees no write in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.history import History
from harness.hosts.base import Host
from harness.io import export as ex
from harness.io.config import IoConfig
from harness.io.history import IoHistory
from harness.io.images import LOOSE, ZERO, Images, Value, allows, union
from harness.io.stamp import Seen, lvol_identity, make_block, parse_block
from harness.nvme_tcp.initiator import Controller, NvmeError, NvmeTimeout, NvmeTransportError
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.storm.checker import Checker, Finding, LvstoreInfo
from harness.storm.operations import Group, Op
from harness.storm.view import TreeView

IO_WORKER = -2
"""The history's worker number for the exporter's RPCs."""
EXPORT_ROUND_S = 0.1
RECENT_S = 30.0
RECENT_MAX = 4096
RECENT_PER_LVOL = 256
RECENT_LVOLS = 256
AROUND = 4
"""Operations on a tree kept to name around a finding."""
WRITABLE_SHARE = 0.75
"""Exports that go to lvols that take writes (volumes, clones), the rest to any (snapshots are read)."""
SIZED_KEPT = 256
STRUCTURAL = frozenset({"snapshot", "clone", "remove", "orphan", "to-grandparent", "reparent", "resize"})


class IoHost(Protocol):
    """What the I/O lanes need of the storm engine."""

    stopping: bool
    inflight: int
    gate_open: asyncio.Event
    drained: asyncio.Event
    view: TreeView
    crashed: threading.Event | None

    @property
    def checker(self) -> Checker: ...

    @property
    def lvs(self) -> LvstoreInfo: ...

    def stop(self, reason: str) -> None: ...


@dataclass(eq=False)
class _Write:
    wid: int
    uuid: str
    lba: int
    n: int
    t_send: float
    t_done: float | None = None
    prev: list[Value] | None = None
    racy_parent: bool = False


@dataclass
class IoStats:
    reads: int = 0
    writes: int = 0
    verified_blocks: int = 0
    mismatches: int = 0
    errors: int = 0
    """Errors the model does not allow (each is a finding)."""
    expected_errors: int = 0
    loose_blocks: int = 0
    raced_blocks: int = 0
    refused_shrinks: int = 0
    wall_s: float = 0.0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    loosened: dict[str, int] = field(default_factory=dict)
    """Trees whose blocks went loose, by why: overlapping changes, or a listing the model did not expect."""

    def to_dict(self, exports: ex.Exports, notes: list[str]) -> dict[str, Any]:
        ios = self.reads + self.writes
        return {"reads": self.reads, "writes": self.writes, "verified_blocks": self.verified_blocks,
                "mismatches": self.mismatches, "errors": self.errors, "expected_errors": self.expected_errors,
                "errors_by_status": dict(self.errors_by_status), "loose_blocks": self.loose_blocks,
                "raced_blocks": self.raced_blocks, "loosened": dict(self.loosened),
                "refused_shrinks": self.refused_shrinks,
                "iops": round(ios / self.wall_s, 1) if self.wall_s > 0 else 0.0,
                "exported": exports.added, "unexported": exports.removed, "export_refused": exports.refused,
                "notes": list(notes)}


class IoStorm:
    """The I/O side of one storm (see the module docstring)."""

    def __init__(self, cfg: IoConfig, storm: IoHost, *, host: Host, sock_path: str, history: History | None,
                 run_dir: Path | None, seed: int, op_timeout: float) -> None:
        self.cfg = cfg
        self.storm = storm
        self.host = host
        self.sock_path = sock_path
        self.rpc_history = history
        self.op_timeout = op_timeout
        self.rng = random.Random(f"io-{seed}")
        self.exports = ex.Exports()
        self.stats = IoStats()
        self.notes: list[str] = []
        self.images: Images | None = None
        self.ctrl: Controller | None = None
        self.conn: RpcConnection | None = None
        self.port = cfg.port
        self.history = IoHistory(run_dir / "io.jsonl" if run_dir is not None else None, cfg.history_max_mb << 20)
        self.next_wid = 1
        self.writing: dict[tuple[str, int], int] = {}
        """(lvol, lba) -> write id of a write in flight: no two writes to one block at once."""
        self.inflight_writes: dict[int, _Write] = {}
        self.recent: dict[str, deque[_Write]] = {}
        """Writes done in the last RECENT_S seconds, by lvol (bounded per lvol)."""
        self.ops_inflight: dict[int, tuple[Op, str | None]] = {}
        self.sent_at: dict[int, float] = {}
        """When each op in flight was sent (monotonic, by op id)."""
        self.sized: deque[tuple[str, float, float, str | int, int]] = deque(maxlen=SIZED_KEPT)
        """Recent successful snapshots and resizes: (origin, sent, answered, snapshot uuid or size before, size
        after); a snapshot and a resize of one lvol that overlapped leave the snapshot's size open."""
        self.unsure_alloc: set[str] = set()
        """Lvols whose clusters the checker's model knows by count only (see align_mirror)."""
        self.exporting: set[str] = set()
        """Lvols an nvmf_subsystem_add_ns is in flight for."""
        self.deferred_errors: list[tuple[set[int], tuple[Any, ...]]] = []
        self.deferred_reads: list[tuple[set[int], tuple[Any, ...]]] = []
        """Reads whose lvol a change was in flight for when they came back: judged after it answered."""
        """I/O errors waiting for the changes to their lvol that were in flight when they came back."""
        self.resize_watch: set[int] = set()
        """Resizes (by op id) sent while their lvol was exported or being exported."""
        self.partners: dict[int, set[int]] = {}
        """Changes to the same lvols that overlapped, by op id (both ways)."""
        self.replied_ok: dict[int, bool] = {}
        """Ops with partners that succeeded, until a partner's reply asks."""
        self.pending_trees: dict[int, list[str]] = {}
        """Trees to loosen if the op (by id), still in flight when its partner succeeded, succeeds too."""
        self.deleting: dict[str, float] = {}
        """Lvols a delete (or unexport) was sent for, and when: errors to them are legal from then on."""
        self.around: dict[str, deque[str]] = {}
        self.unjudged: dict[str, list[Group]] = {}
        """Lvols changed by ops whose group the checker has not judged yet (its model lags the target)."""
        self.last_change: dict[str, float] = {}
        """When an operation on each lvol last changed it (a write sent before that raced it)."""
        self.mismatched_size: set[str] = set()
        self.identities: dict[int, str] = {}
        self.next_send = 0.0
        self.t0 = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.setup_ok = False

    # -- setup and teardown ----------------------------------------------------------------------------------

    async def setup(self) -> None:
        lvs = self.storm.lvs
        self.images = Images(lvs.cluster_size, lvs.block_size)
        for node in self.storm.view.nodes.values():  # lvols there before: their blocks are unknown
            self.images.adopt(node.uuid, max(1, node.size_mib * (1 << 20) // lvs.cluster_size), parent=node.parent,
                              read_only=node.snapshot or node.read_only, thin=node.thin)
        self.conn = await RpcConnection.open(self.host, self.sock_path, history=self.rpc_history, worker=IO_WORKER,
                                             conn=IO_WORKER)
        if not self.port:
            self.port = ex.free_port(self.cfg.address)
        await ex.create_subsystem(self.conn, self.cfg.address, self.port, self.op_timeout)
        self.ctrl = await Controller.connect(self.cfg.address, self.port, ex.NQN, io_queues=self.cfg.lanes,
                                             queue_depth=self.cfg.depth + 1, timeout=self.cfg.io_timeout)
        self.setup_ok = True

    def tasks(self) -> list[asyncio.Task[None]]:
        """Start the exporter and the lanes; the engine drains them with its own."""
        self.t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._exporter(), name="io-export")]
        self._tasks += [asyncio.create_task(self._slot(q), name=f"io-q{q}-d{d}")
                        for q in range(self.cfg.lanes) for d in range(self.cfg.depth)]
        return self._tasks

    async def finish(self) -> None:
        """After the storm's final checks: the subsystem goes (its namespaces went with their lvols)."""
        self.stats.wall_s = (time.monotonic() - self.t0) if self.t0 else 0.0
        if self.ctrl is not None:
            await self.ctrl.close()
            self.ctrl = None
        if self.conn is not None and self.conn.is_open and self.setup_ok:
            with contextlib.suppress(RpcError, RpcTimeout, RpcConnectionLost):
                await ex.delete_subsystem(self.conn, self.op_timeout)
        self.history.close()

    async def close(self) -> None:
        if self.ctrl is not None:
            await self.ctrl.close()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), timeout=1.0)
        self.history.close()

    def result(self) -> dict[str, Any]:
        if not self.stats.wall_s and self.t0:
            self.stats.wall_s = time.monotonic() - self.t0
        notes = list(self.notes)
        if self.history.cut:
            notes.append("io.jsonl was cut off at io.history_max_mb")
        return self.stats.to_dict(self.exports, notes)

    # -- the engine's RPCs ---------------------------------------------------------------------------------

    def on_send(self, op: Op) -> None:
        rule = op.rule
        uuid = self._target_of(op)
        self.ops_inflight[id(op)] = (op, uuid)
        self.sent_at[id(op)] = time.monotonic()
        if uuid is None:
            return
        if rule.view in STRUCTURAL:
            mine = self._named(op, uuid)
            for other, u in self.ops_inflight.values():
                if other is op or u is None or other.rule.view not in STRUCTURAL:
                    continue
                if rule.view == other.rule.view and rule.view in ("clone", "remove"):
                    continue  # two clones of one snapshot, two deletes of one lvol: the same blocks either way
                if mine & self._named(other, u):
                    self.partners.setdefault(id(op), set()).add(id(other))
                    self.partners.setdefault(id(other), set()).add(id(op))
        if rule.view == "remove":
            self.deleting.setdefault(uuid, time.monotonic())
            e = self.exports.by_uuid.get(uuid)
            if e is not None:
                e.live = False  # no new command; those in flight race the delete
        if uuid in self.mismatched_size:
            op.contended = op.lenient = True  # the bdev and its blob differ in size: the model cannot say
        if op.method == "bdev_lvol_resize" and (uuid in self.exports.by_uuid or uuid in self.exporting):
            # An exported lvol's shrink answers EBUSY after shrinking its blob (spdk_bdev_notify_blockcnt_change):
            # the model cannot know whether the namespace is there when the resize runs.
            op.contended = op.lenient = True
            self.resize_watch.add(id(op))

    def on_reply(self, op: Op) -> None:
        """Before the checker judges the reply: the model follows it, races are settled; I/O errors that
        waited for it are judged."""
        try:
            self._on_reply(op)
        finally:
            if self.deferred_errors or self.deferred_reads:
                self._judge_deferred()

    def _on_reply(self, op: Op) -> None:
        _, uuid = self.ops_inflight.pop(id(op), (op, None))
        sent = self.sent_at.pop(id(op), None)
        overlapped = self._settle_overlaps(op, uuid)
        images = self.images
        rule = op.rule
        if images is None:
            return
        now = time.monotonic()
        t_send = sent if sent is not None else now - max(0.0, (op.t_end or 0) - (op.t_start or 0))
        if rule.effect == "lvstore" and op.method == "bdev_lvol_delete_lvstore" and op.ok:
            for u in list(images.blobs):
                self.exports.gone(u)
            images.clear()
            return
        if rule.view == "add":
            if op.ok and isinstance(op.result, str):
                images.create(op.result, self._clusters(op.params.get("size_in_mib")) or 0,
                              bool(op.params.get("thin_provision")))
            return
        if uuid is None:
            return
        watched = id(op) in self.resize_watch
        self.resize_watch.discard(id(op))
        if op.method == "bdev_lvol_resize" and op.errno_name == "EBUSY" and (watched or uuid in self.exports.by_uuid):
            new = self._clusters(op.params.get("size_in_mib"))
            if new is not None:
                self._sized(uuid, t_send, now, images.blobs[uuid].clusters if uuid in images.blobs else None, new)
                images.resize(uuid, new, now, bdev_kept=True)
                self.stats.refused_shrinks += 1
                self.mismatched_size.add(uuid)
                self.storm.checker.taint.trees(self.storm.view, [op])
                self._note_around({uuid}, op)
            return
        if rule.view == "remove" and not op.ok:
            e = self.exports.by_uuid.get(uuid)
            if e is not None:
                e.stale = True  # the exporter removes its namespace (or finds it gone) before the nsid is reused
            return  # a refused delete changes nothing (the checker sees to a forced removal)
        if not op.ok or (rule.view not in STRUCTURAL and op.method != "bdev_lvol_set_read_only"):
            return
        racing = self._racing_writes(uuid, t_send)
        if racing and rule.view != "remove":
            self.storm.checker.taint.trees(self.storm.view, [op])  # who owns the raced clusters is open
        touched = self._named(op, uuid) | {c.uuid for c in images.children(uuid)}
        if rule.creates_lvol and isinstance(op.result, str):
            touched.add(op.result)
        if op.group is not None:  # the checker applies it to its model when the whole group has answered
            for u in touched:
                self.unjudged.setdefault(u, []).append(op.group)
        self._apply(op, uuid, racing, now, t_send)
        if overlapped:  # another change to its lvols overlapped it and also succeeded: their order is not known
            self._loosen("overlap", str(op.result) if rule.creates_lvol and isinstance(op.result, str) else uuid)
        self._note_around(touched, op)

    def _apply(self, op: Op, uuid: str, racing: list[_Write], now: float, t_send: float) -> None:
        images = self.images
        assert images is not None
        p, rule = op.params, op.rule
        if rule.view == "snapshot":
            snap = str(op.result)
            images.snapshot(uuid, snap)
            self._sized(uuid, t_send, now, snap, 0)
            for w in racing:
                for i in range(w.n):
                    images.raced_snapshot(snap, uuid, w.lba + i, w.wid, w.prev[i] if w.prev is not None else None)
                    self.stats.raced_blocks += 1
        elif rule.view == "clone":
            images.clone(uuid, str(op.result))
        elif rule.view == "remove":
            images.delete(uuid)
            self.exports.gone(uuid)
            self.mismatched_size.discard(uuid)
        elif rule.view == "resize":
            new = self._clusters(p.get("size_in_mib"))
            if new is not None:
                self._sized(uuid, t_send, now, images.blobs[uuid].clusters if uuid in images.blobs else None, new)
                images.resize(uuid, new, now)
                if images.blocks(uuid) == new * images.bpc:
                    self.mismatched_size.discard(uuid)
        elif rule.view == "orphan" and op.method == "bdev_lvol_set_parent_bdev":
            # spdk_bs_blob_set_external_parent: the lvol leaves its parent; the clusters it does not own read the
            # external bdev now (the storm's own malloc bdevs, never written: zeroes; an lvol: its blocks). Nothing
            # is copied: that is inflate, not this.
            self._mark_parent_race(uuid, racing)
            bdev = p.get("parent_name")
            images.set_parent(uuid, bdev if isinstance(bdev, str) and bdev in images.blobs else None)
        elif rule.view == "orphan":
            images.inflate(uuid)
        elif rule.view == "to-grandparent":
            self._mark_parent_race(uuid, racing)
            if op.method == "bdev_lvol_decouple_parent":
                images.decouple(uuid)
            else:
                images.detach(uuid)
        elif rule.view == "reparent":
            self._mark_parent_race(uuid, racing)
            images.set_parent(uuid, str(p.get(rule.lvol_params[1])))
        elif op.method == "bdev_lvol_set_read_only":
            images.set_read_only(uuid, now)

    def _sized(self, origin: str, sent: float, done: float, what: str | int | None, after: int) -> None:
        """A snapshot of `origin` (`what` its uuid) or a resize of it (`what` its size before, `after` its new
        size) answered: if the other kind overlapped it on the same lvol, the snapshot was taken before or after
        the resize, with either size (spdk_tgt runs them in any order)."""
        if what is None or self.images is None:
            return
        for o, _sent, d, w, a in self.sized:
            if o != origin or d < sent or type(w) is type(what):
                continue
            snap, sizes = (what, {int(w), a}) if isinstance(what, str) else (str(w), {what, after})
            self.images.size_raced(snap, sizes)
        self.sized.append((origin, sent, done, what, after))

    def _mark_parent_race(self, uuid: str, racing: list[_Write]) -> None:
        assert self.images is not None
        for w in racing:
            if w.t_done is None:
                w.racy_parent = True
            for i in range(w.n):
                self.images.mark_maybe(uuid, w.lba + i)

    def reconcile(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]]) -> None:
        """A quiesce point's listing: lvols the model lost or never knew, or knows with another parent or size,
        are taken as listed, their blocks loose until rewritten."""
        images = self.images
        if images is None:
            return
        listed = {e["uuid"]: e for e in lvols}
        names = {e["name"]: e["uuid"] for e in lvols}
        for u in [u for u in images.blobs if u not in listed]:
            images.forget(u)
            self.exports.gone(u)
        cs = self.storm.lvs.cluster_size
        for u in listed:
            b = bdevs.get(u) or {}
            info = (b.get("driver_specific") or {}).get("lvol") or {}
            parent = names.get(info.get("base_snapshot") or "")
            blocks = int(b.get("num_blocks", 0))
            blob = images.blobs.get(u)
            images.size_known(u)
            if blob is None:
                self.stats.loosened["listing-new"] = self.stats.loosened.get("listing-new", 0) + 1
                images.adopt(u, -(-blocks * images.block_size // cs), parent=parent,
                             read_only=bool(info.get("snapshot")), thin=bool(info.get("thin_provision")))
            elif blob.parent != parent or images.blocks(u) != blocks:
                why = "listing-parent" if blob.parent != parent else "listing-size"
                self.stats.loosened[why] = self.stats.loosened.get(why, 0) + 1
                images.reparent(u, parent)
                if u not in self.mismatched_size:
                    blob.clusters = -(-blocks * images.block_size // cs)
                images.loosen_tree(u)

    def align_mirror(self) -> None:
        """After a listing the checker's model knows how many clusters each lvol holds, not which: where this
        model knows which (a blob it never lost track of), the checker's takes them; elsewhere a write's
        allocation is left unjudged (its tree tainted) until the lvol is rewritten or re-listed."""
        images = self.images
        if images is None:
            return
        self.unsure_alloc.clear()
        for lv in self.storm.checker.model.lvols():
            b = images.blobs.get(lv.uuid)
            if b is None or b.loose or b.maybe or b.clusters != lv.num_clusters or lv.uuid in self.mismatched_size:
                self.unsure_alloc.add(lv.uuid)
            elif b.owned.bit_count() == lv.alloc.bit_count():
                lv.alloc = b.owned
            else:
                self.unsure_alloc.add(lv.uuid)

    # -- the exporter --------------------------------------------------------------------------------------------

    async def _exporter(self) -> None:
        conn = self.conn
        assert conn is not None and self.images is not None
        try:
            while not self.storm.stopping:
                await asyncio.sleep(EXPORT_ROUND_S)
                if not self.storm.gate_open.is_set():
                    continue
                for e in list(self.exports.by_nsid.values()):
                    if e.uuid not in self.storm.view.nodes or e.uuid not in self.images.blobs:
                        self.exports.gone(e.uuid)
                    elif e.stale and e.inflight == 0:
                        await ex.remove_namespace(conn, e.nsid, self.op_timeout)  # gone already: refused, fine
                        self.exports.gone(e.uuid)
                        self.deleting.pop(e.uuid, None)
                    self.exports.reap(e)
                live = self.exports.live()
                if len(live) >= self.cfg.namespaces:
                    if live and self.rng.random() < self.cfg.rotate_share:
                        await self._unexport(conn, self.rng.choice(live))
                    continue
                candidates = self._export_candidates()
                if not candidates:
                    continue
                view = self.storm.view
                writable = [u for u in candidates if not view.nodes[u].snapshot and not view.nodes[u].read_only]
                pool = writable if writable and self.rng.random() < WRITABLE_SHARE else candidates
                uuid = self.rng.choice(sorted(pool))
                nsid = self.exports.next_nsid()
                if nsid is None:
                    continue
                self.exporting.add(uuid)
                try:
                    added = await ex.add_namespace(conn, uuid, nsid, self.op_timeout)
                finally:
                    self.exporting.discard(uuid)
                if added:
                    self.exports.add(uuid, nsid)
                    self.identities[lvol_identity(uuid)] = uuid
                else:
                    self.exports.refused += 1
                    self.exports.give_back(nsid)
        except (RpcConnectionLost, RpcTimeout):
            return

    def _export_candidates(self) -> list[str]:
        """Lvols to export: known, not exported, not going, and no resize of them in flight (exported under it,
        a shrink answers EBUSY, so the checker could not judge that resize exactly; a resize sent while the
        export is in flight is judged leniently instead, see on_send)."""
        assert self.images is not None
        view = self.storm.view
        resizing = {u for op, u in self.ops_inflight.values() if op.method == "bdev_lvol_resize"}
        return [u for u in view.nodes if u not in self.exports.by_uuid and u not in view.hidden
                and u in self.images.blobs and u not in self.deleting and u not in resizing]

    async def _unexport(self, conn: RpcConnection, e: ex.Export) -> None:
        e.live = False
        for _ in range(100):  # its commands come back first (bounded: 100 x 10 ms)
            if e.inflight == 0 or self.storm.stopping:
                break
            await asyncio.sleep(0.01)
        self.deleting[e.uuid] = time.monotonic()
        if e.inflight == 0 and await ex.remove_namespace(conn, e.nsid, self.op_timeout):
            self.exports.reap(e)
        self.deleting.pop(e.uuid, None)

    # -- the lanes ---------------------------------------------------------------------------------------------

    async def _slot(self, queue: int) -> None:
        storm = self.storm
        while not storm.stopping:
            if not storm.gate_open.is_set():
                await storm.gate_open.wait()
                continue
            if self.cfg.rate_limit:
                now = time.monotonic()
                t = max(now, self.next_send)
                self.next_send = t + 1.0 / self.cfg.rate_limit
                if t > now:
                    await asyncio.sleep(t - now)
                    continue
            pick = self._pick()
            if pick is None:
                await asyncio.sleep(0.02)
                continue
            e, write, lba, n = pick
            storm.inflight += 1
            storm.drained.clear()
            e.inflight += 1
            try:
                if write:
                    await self._write(queue, e, lba, n)
                else:
                    await self._read(queue, e, lba, n)
            except (NvmeTransportError, NvmeTimeout) as exc:
                self._lost(exc)
                return
            finally:
                e.inflight -= 1
                self.exports.reap(e)
                storm.inflight -= 1
                if storm.inflight == 0:
                    storm.drained.set()

    def _pick(self) -> tuple[ex.Export, bool, int, int] | None:
        images = self.images
        assert images is not None
        live = self.exports.live()
        if not live:
            return None
        e = live[self.rng.randrange(len(live))]
        blob = images.blobs.get(e.uuid)
        if blob is None or blob.clusters == 0:
            return None
        write = self.rng.random() >= self.cfg.read_share and not blob.read_only
        hot = min(self.cfg.hot_clusters, blob.clusters)
        c = self.rng.randrange(hot)
        if c == hot - 1 and blob.clusters > hot:
            c = blob.clusters - 1
        lba = c * images.bpc + self.rng.randrange(images.bpc)
        n = min(self.rng.randint(1, self.cfg.max_blocks), (c + 1) * images.bpc - lba)
        if write and any((e.uuid, lba + i) in self.writing for i in range(n)):
            write = False  # one write per block at a time: a read instead
        return e, write, lba, n

    async def _write(self, queue: int, e: ex.Export, lba: int, n: int) -> None:
        assert self.ctrl is not None and self.images is not None
        bs = self.images.block_size
        wid = self.next_wid
        self.next_wid += 1
        ident = lvol_identity(e.uuid)
        data = b"".join(make_block(ident, lba + i, wid, bs) for i in range(n))
        w = _Write(wid, e.uuid, lba, n, time.monotonic())
        self.inflight_writes[wid] = w
        for i in range(n):
            self.writing[(e.uuid, lba + i)] = wid
        t_start = time.time()
        status = "ok"
        try:
            await self.ctrl.write(e.nsid, lba, data, bs, queue=queue, timeout=self.cfg.io_timeout)
        except NvmeError as exc:
            status = exc.status.name
        finally:
            del self.inflight_writes[wid]
            for i in range(n):
                self.writing.pop((e.uuid, lba + i), None)
        w.t_done = time.monotonic()
        self.stats.writes += 1
        self.history.record([round(t_start, 6), round(time.time(), 6), queue, "w", e.nsid, e.uuid, lba, n, wid,
                             status])
        if status != "ok":
            self._judge_error("write", e, lba, n, status, w.t_send, t_start)
            return
        self._wrote(w)

    def _wrote(self, w: _Write) -> None:
        images = self.images
        assert images is not None
        mirror = self.storm.checker.model
        racy = w.uuid in self.unsure_alloc or self._struct_since(w.uuid, w.t_send)
        w.prev = []
        for i in range(w.n):
            prev, _ = images.write(w.uuid, w.lba + i, w.wid)
            w.prev.append(prev)
            if w.racy_parent:
                images.mark_maybe(w.uuid, w.lba + i)
            if not racy:  # the checker's model allocates as the target did: where it owned nothing
                lv = mirror.find_by_uuid(w.uuid)
                c = (w.lba + i) // images.bpc
                if lv is not None and not lv.alloc >> c & 1 and c < lv.num_clusters:
                    lv.alloc |= 1 << c
                    mirror.set_free_clusters(mirror.free_clusters - 1)
        if racy:
            self.storm.checker.taint.trees(self.storm.view, [_tree_op(w.uuid)])
        self.recent.setdefault(w.uuid, deque(maxlen=RECENT_PER_LVOL)).append(w)
        self._prune_recent()

    async def _read(self, queue: int, e: ex.Export, lba: int, n: int) -> None:
        assert self.ctrl is not None and self.images is not None
        images = self.images
        at_send = [images.visible(e.uuid, lba + i) for i in range(n)]
        t_mono = time.monotonic()
        t_start = time.time()
        status = "ok"
        data = b""
        try:
            data = await self.ctrl.read(e.nsid, lba, n, images.block_size, queue=queue, timeout=self.cfg.io_timeout)
        except NvmeError as exc:
            status = exc.status.name
        self.stats.reads += 1
        if status != "ok":
            self.history.record([round(t_start, 6), round(time.time(), 6), queue, "r", e.nsid, e.uuid, lba, n, 0,
                                 status])
            self._judge_error("read", e, lba, n, status, t_mono, t_start)
            return
        bs = images.block_size
        allowed = []
        for i in range(n):
            v = union(at_send[i], images.visible(e.uuid, lba + i))
            for w in self._overlapping_writes(e.uuid, lba + i, t_mono):
                v = union(v, w.wid)
            allowed.append(v)
        seen = [parse_block(data[i * bs:(i + 1) * bs]) for i in range(n)]
        waiting = self._changes_in_flight(e.uuid)
        if waiting and len(self.deferred_reads) < RECENT_MAX:
            # A change to the lvol or its parents is still in flight: the read may have run after it, so it is
            # judged once the change has answered, against the state after it too.
            self.deferred_reads.append((waiting, (queue, e, lba, allowed, seen, t_start)))
            return
        self._judge_read(queue, e, lba, allowed, seen, t_start)

    def _changes_in_flight(self, uuid: str) -> set[int]:
        chain = self._chain(uuid)
        return {i for i, (op, u) in self.ops_inflight.items() if u in chain and
                (op.rule.view in STRUCTURAL or op.rule.effect == "lvstore")}

    def _judge_read(self, queue: int, e: ex.Export, lba: int, allowed: list[Value], seen: list[Seen], t_start: float,
                    *, after: bool = False) -> None:
        images = self.images
        assert images is not None
        bad = None
        for i, (v, s) in enumerate(zip(allowed, seen, strict=True)):
            b = lba + i
            if after:
                v = union(v, images.visible(e.uuid, b))
            if not self._fits(v, s, b):
                bad = (b, v, s)
                break
            self.stats.verified_blocks += 1
            if v == LOOSE:
                self.stats.loose_blocks += 1
        self.history.record([round(t_start, 6), round(time.time(), 6), queue, "r", e.nsid, e.uuid, lba, len(seen), 0,
                             "mismatch" if bad else "ok"])
        if bad is not None:
            self._mismatch(e, *bad, t_start)

    def _fits(self, allowed: Value, seen: Seen, lba: int) -> bool:
        if seen.kind == "zero":
            return allows(allowed, ZERO)
        if seen.kind == "garbage" or seen.lba != lba:
            return False
        return allows(allowed, seen.write_id)

    # -- judging ------------------------------------------------------------------------------------------------

    def _mismatch(self, e: ex.Export, lba: int, allowed: Value, seen: Seen, t_start: float) -> None:
        self.stats.mismatches += 1
        name = self._name(e.uuid)
        names = {i: self._name(u) for i, u in self.identities.items()}
        want = ("any stamp of this storm at that LBA, or zeroes" if allowed == LOOSE else
                " or ".join(_describe(v) for v in sorted(
                    allowed if isinstance(allowed, frozenset) else (allowed,))))
        around = "; ".join(self._around_of(e.uuid)) or "no operation on its tree since it was exported"
        self.storm.checker.add(Finding(
            "data-mismatch", f"{name} ({e.uuid}) lba {lba}: expected {want}, seen {seen.describe(names)}; "
            f"around it: {around}",
            {"method": "nvme_read", "params": {"nsid": e.nsid, "lvol": e.uuid, "lba": lba}, "t_start": t_start,
             "t_end": time.time(), "result": seen.describe(names)}))

    def _judge_error(self, what: str, e: ex.Export, lba: int, n: int, status: str, t_send: float,
                     t_start: float) -> None:
        """Judged once every change to the lvol in flight now has answered (the model then knows whether a
        resize, a delete or read-only explains it)."""
        self.stats.errors_by_status[status] = self.stats.errors_by_status.get(status, 0) + 1
        waiting = {i for i, (op, u) in self.ops_inflight.items() if u == e.uuid and
                   (op.rule.view in STRUCTURAL or op.method == "bdev_lvol_set_read_only")}
        if waiting and len(self.deferred_errors) < RECENT_MAX:
            self.deferred_errors.append((waiting, (what, e, lba, n, status, t_send, t_start)))
            return
        self._judge_error_now(what, e, lba, n, status, t_send, t_start)

    def _judge_deferred(self) -> None:
        still = []
        for waiting, args in self.deferred_errors:
            if waiting & self.ops_inflight.keys():
                still.append((waiting, args))
            else:
                self._judge_error_now(*args)
        self.deferred_errors = still
        reads = []
        for waiting, rargs in self.deferred_reads:
            if waiting & self.ops_inflight.keys():
                reads.append((waiting, rargs))
            else:
                self._judge_read(*rargs, after=True)
        self.deferred_reads = reads

    def _judge_error_now(self, what: str, e: ex.Export, lba: int, n: int, status: str, t_send: float,
                         t_start: float) -> None:
        images = self.images
        assert images is not None
        blob = images.blobs.get(e.uuid)
        gone = e.uuid in self.deleting or blob is None or not e.live
        past_end = blob is not None and lba + n > images.min_blocks_since(e.uuid, t_send - 1.0)
        read_only = what == "write" and blob is not None and blob.read_only
        full = what == "write" and self.storm.checker.model.free_clusters <= self.storm.checker.space_margin
        if gone or past_end or read_only or full:
            self.stats.expected_errors += 1
            return
        self.stats.errors += 1
        self.storm.checker.add(Finding(
            "io-error", f"{what} of {self._name(e.uuid)} ({e.uuid}) lba {lba} +{n} failed with {status}: the lvol is "
            f"live, writable and the range within it; around it: {'; '.join(self._around_of(e.uuid)) or 'nothing'}",
            {"method": f"nvme_{what}", "params": {"nsid": e.nsid, "lvol": e.uuid, "lba": lba, "blocks": n},
             "t_start": t_start, "t_end": time.time(), "error": {"code": None, "message": status, "errno": None}}))

    def _lost(self, exc: Exception) -> None:
        storm = self.storm
        if storm.stopping or (storm.crashed is not None and storm.crashed.is_set()):
            return
        if isinstance(exc, NvmeTimeout):
            storm.checker.add(Finding("unresponsive", f"target unresponsive: {exc}", None))
            storm.stop("unresponsive")
            return
        self.notes.append(f"I/O stopped: {exc}")
        storm.stop("connection_lost")

    # -- bookkeeping --------------------------------------------------------------------------------------------

    def _target_of(self, op: Op) -> str | None:
        params = op.rule.lvol_params
        if not params:
            return None
        v = op.params.get(params[0])
        if not isinstance(v, str):
            return None
        if self.images is not None and v in self.images.blobs:
            return v
        return self.storm.view.by_name.get(v.rpartition("/")[2]) if v not in self.storm.view.nodes else v

    def _settle_overlaps(self, op: Op, uuid: str | None) -> bool:
        """Did a change that overlapped this one on the same lvols succeed too? (Only then is their order
        open: of two racing deletes, or a clone racing a delete, usually one fails.) A partner still in flight
        decides when it answers: it loosens this op's tree then if it succeeds."""
        partners = self.partners.pop(id(op), set())
        deferred = self.pending_trees.pop(id(op), [])
        if not op.ok:
            for p in partners:
                self.partners.get(p, set()).discard(id(op))
            return False
        # A delete that answers after its partner did ran after it (run first, it would have made the partner
        # fail: No such device): the reply order is the order, and the model follows it. Any other pair of
        # successes may have run either way.
        trust = op.rule.view == "remove"
        if not trust:
            for tree in deferred:
                self._loosen("overlap", tree)
        overlapped = False
        for p in partners:
            if self.replied_ok.pop(p, False):
                overlapped = overlapped or not trust
            elif p in self.ops_inflight and uuid is not None:
                self.pending_trees.setdefault(p, []).append(uuid)
                self.partners.get(p, set()).discard(id(op))
        if partners:
            self.replied_ok[id(op)] = True
            if len(self.replied_ok) > 4096:
                self.replied_ok.pop(next(iter(self.replied_ok)))
        return overlapped or (bool(deferred) and not trust)

    def _loosen(self, why: str, uuid: str) -> None:
        assert self.images is not None
        self.stats.loosened[why] = self.stats.loosened.get(why, 0) + 1
        self.images.loosen_tree(uuid)

    @staticmethod
    def _named(op: Op, uuid: str) -> set[str]:
        """The lvols an operation changes the blocks of or takes them from: the one it acts on and a second
        one it names (set_parent's parent). Two changes that share one may not commute."""
        out = {uuid}
        for name in op.rule.lvol_params[1:]:
            v = op.params.get(name)
            if isinstance(v, str):
                out.add(v)
        return out

    def _clusters(self, size_mib: object) -> int | None:
        if not isinstance(size_mib, int):
            return None
        return -(-size_mib * (1 << 20) // self.storm.lvs.cluster_size)

    def _racing_writes(self, uuid: str, t_send: float) -> list[_Write]:
        """Writes to `uuid` that overlapped an operation sent at t_send and answered now."""
        out = [w for w in self.inflight_writes.values() if w.uuid == uuid]
        out += [w for w in self.recent.get(uuid, ()) if w.t_done is not None and w.t_done >= t_send]
        return out

    def _struct_since(self, uuid: str, t: float) -> bool:
        """A change to the lvol or its parents (what decides which clusters it owns) in flight now, or answered
        since t."""
        chain = self._chain(uuid)
        for u in chain:
            groups = self.unjudged.get(u)
            if groups:
                groups[:] = [g for g in groups if not g.root().closed]
                if groups:
                    return True
                del self.unjudged[u]
        if self._changes_in_flight(uuid):
            return True
        return any(self.last_change.get(c, 0.0) >= t for c in chain)

    def _chain(self, uuid: str) -> set[str]:
        assert self.images is not None
        out = {uuid}
        b = self.images.blobs.get(uuid)
        for _ in range(len(self.images.blobs)):
            parent = b.parent if b is not None else None
            if parent is None or parent in out:
                break
            out.add(parent)
            b = self.images.blobs.get(parent)
        return out

    def _overlapping_writes(self, uuid: str, lba: int, t_send: float) -> list[_Write]:
        out = [w for w in self.inflight_writes.values() if w.uuid == uuid and w.lba <= lba < w.lba + w.n]
        out += [w for w in self.recent.get(uuid, ()) if w.lba <= lba < w.lba + w.n and w.t_done is not None
                and w.t_done >= t_send]
        return out

    def _prune_recent(self) -> None:
        limit = time.monotonic() - RECENT_S
        if len(self.recent) > RECENT_LVOLS:
            for u in [u for u, q in self.recent.items() if not q or (q[-1].t_done or 0.0) < limit]:
                del self.recent[u]

    def _note_around(self, touched: set[str], op: Op) -> None:
        """The lvols a change touched: when (a write sent before raced it) and what (a finding names it)."""
        now = time.monotonic()
        text = op.describe()
        for u in touched:
            self.last_change[u] = now
            self.around.setdefault(u, deque(maxlen=AROUND)).append(text)
        if len(self.around) > 4 * len(self.storm.view.nodes) + 64:
            for u in [u for u in self.around if u not in self.storm.view.nodes][: len(self.around) // 2]:
                del self.around[u]
                self.last_change.pop(u, None)
                self.unjudged.pop(u, None)

    def _around_of(self, uuid: str) -> list[str]:
        return list(self.around.get(uuid, ()))

    def _name(self, uuid: str) -> str:
        node = self.storm.view.nodes.get(uuid)
        return node.name if node is not None else uuid[:8]


def _describe(v: int) -> str:
    return "zeroes" if v == ZERO else f"write {v}"


def _tree_op(uuid: str) -> Op:
    """A stand-in op naming one lvol, for the checker's taint walk."""
    op = Op("bdev_get_bdevs", {"name": uuid}, -2)
    op.keys = (uuid,)
    return op
