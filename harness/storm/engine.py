"""The storm: N workers on N connections, each with `depth` requests in flight, on one lvstore, checked live.

One asyncio loop runs everything: lanes (depth per worker) draw steps from their worker's seeded stream, send
them, and hand each reply to the checker, which judges it against the model. A monitor task turns the
outside world (duration, max_ops, Ctrl-C, the watchdog's `crashed` Event, a lost connection) into one stop
flag that lanes test before every send, so the storm stops within a second; a quiesce task pauses all lanes
every `quiesce_every` seconds, drains, and compares the target's whole tree with the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.allocator import release_free_memory
from harness.history import SETUP_WORKER, History
from harness.hosts.base import Host
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.storm.checker import Checker, Finding, LvstoreInfo
from harness.storm.config import StormConfig, check_against_capabilities, check_against_lvstore
from harness.storm.operations import OPTIONAL_METHODS, Op
from harness.storm.progress import Progress
from harness.storm.scheduler import HOT_SIZE, Scheduler, WorkerStream
from harness.storm.strategies import STRATEGIES
from harness.storm.view import TreeView

COPY_DST = "storm_copy_dst"
MIB = 1024 * 1024
BUSY_MIN_CLUSTERS = 96
"""A busy snapshot's least size: its job must outlast the call behind it (the reference target advances a job
64 clusters per call; spdk_tgt reads 96 MiB for tens of milliseconds)."""
BUSY_MAX_MIB = 256
SPACE_WAIT_S = 2.0
SPACE_TRIES = 40
SPACE_REREAD_S = 0.1


@dataclass
class StormResult:
    """What a storm did and found; `to_dict()` is the storm part of summary.json."""

    ops: int = 0
    ops_by_method: dict[str, int] = field(default_factory=dict)
    errors_by_errno: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    stop_reason: str = "duration"
    wall_s: float = 0.0
    ops_per_s: float = 0.0
    lvols_live: int = 0
    free_clusters_start: int | None = None
    free_clusters_end: int | None = None
    races: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "ops_by_method": dict(self.ops_by_method),
            "errors_by_errno": dict(self.errors_by_errno),
            "findings": [f.to_dict() for f in self.findings],
            "stop_reason": self.stop_reason,
            "wall_s": round(self.wall_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "lvols_live": self.lvols_live,
            "free_clusters_start": self.free_clusters_start,
            "free_clusters_end": self.free_clusters_end,
            "races": self.races,
            "notes": list(self.notes),
        }


class _Stop(Exception):
    """Raised inside a lane when the storm is stopping; never escapes the engine."""


@dataclass
class _Worker:
    index: int
    stream: WorkerStream
    conn: RpcConnection
    peer: RpcConnection | None = None


class Storm:
    """One storm run; see `run_storm`."""

    def __init__(self, cfg: StormConfig, *, host: Host, sock_path: str, lvs_name: str,
                 history: History | None, stop_event: threading.Event | None, capabilities: set[str],
                 run_dir: str | Path | None, crashed: threading.Event | None = None,
                 progress: bool | None = None) -> None:
        self.cfg = cfg
        self.host = host
        self.sock_path = sock_path
        self.lvs_name = lvs_name
        self.history = history
        self.stop_event = stop_event
        self.crashed = crashed
        self.capabilities = set(capabilities)
        self.run_dir = Path(run_dir) if run_dir else None
        self.view = TreeView(hot_size=HOT_SIZE[cfg.contention])
        self.sched = Scheduler(cfg, self.view)
        self.result = StormResult()
        self.ops_by_method: Counter[str] = Counter()
        self.errors_by_errno: Counter[str] = Counter()
        self.sent = 0
        self.inflight = 0
        self.stopping = False
        self.stop_reason: str | None = None
        self.gate_open: asyncio.Event | None = None
        self.exclusive_lock: asyncio.Lock | None = None
        self.drained: asyncio.Event | None = None
        self.workers: list[_Worker] = []
        self.setup_conn: RpcConnection | None = None
        self.checker: Checker | None = None
        self.lvs: LvstoreInfo | None = None
        self.copy_dst: str | None = None
        self.copy_dst_mib = cfg.lvol_size_mib[1]
        self.next_send = 0.0
        self.t0 = 0.0
        self.last_reply = 0.0
        self._progress_enabled = progress
        self.progress: Progress | None = None
        self._wake: asyncio.Event | None = None
        self.lvs_free: int | None = None
        """free_clusters in the target's latest bdev_lvol_get_lvstores reply (any connection): the truth the
        progress line and episode sizing use (the model's count drifts while it judges races leniently)."""
        self.lvs_free_at = 0.0
        self.space_reserved = 0
        """Clusters promised to running episodes that build big thick trees (see `_Episode.reserve`)."""
        self.space_freed: asyncio.Event | None = None
        self.episode_counts: Counter[str] = Counter()
        self.episode_notes: Counter[tuple[str, str]] = Counter()

    # -- public -----------------------------------------------------------------------------------------

    async def run(self) -> StormResult:
        self.gate_open = asyncio.Event()
        self.gate_open.set()
        self.exclusive_lock = asyncio.Lock()
        self.drained = asyncio.Event()
        self.drained.set()
        self._wake = asyncio.Event()
        self.space_freed = asyncio.Event()
        try:
            await self._setup()
            await self._storm()
            await self._finish()
        finally:
            await self._close_all()
        return self.result

    # -- setup ------------------------------------------------------------------------------------------

    async def _setup(self) -> None:
        cfg = self.cfg
        self.setup_conn = await RpcConnection.open(self.host, self.sock_path, history=self.history,
                                                   worker=SETUP_WORKER, conn=SETUP_WORKER)
        conn = self.setup_conn
        if not self.capabilities:
            methods = await conn.call("rpc_get_methods", {}, timeout=cfg.op_timeout)
            self.capabilities = set(methods or [])
        stores = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": self.lvs_name}, timeout=cfg.op_timeout)
        self.lvs = LvstoreInfo.from_reply(stores[0])
        check_against_lvstore(cfg, cluster_size=self.lvs.cluster_size,
                              total_data_clusters=self.lvs.total_data_clusters,
                              free_clusters=self.lvs.free_clusters)
        missing = check_against_capabilities(cfg, self.capabilities)
        if missing:
            self.result.notes.append(f"target lacks {', '.join(missing)}: left out of the mix")
        mix = {m: w for m, w in cfg.mix.items() if w > 0 and m not in missing}
        wants_copy = ("bdev_lvol_start_shallow_copy" in mix or "busy-delete" in cfg.strategies)
        if wants_copy and "bdev_lvol_start_shallow_copy" in self.capabilities:
            await self._make_copy_dst()
        if "bdev_lvol_start_shallow_copy" in mix and self.copy_dst is None:
            mix.pop("bdev_lvol_start_shallow_copy")
        self.sched.lvs_name = self.lvs_name
        self.sched.copy_dst = self.copy_dst
        self.checker = Checker(self.view, self.lvs, check_busy_delete=cfg.check_busy_delete,
                               copy_dst_bytes=self.copy_dst_mib * MIB)
        hi_clusters = -(-cfg.lvol_size_mib[1] * 1024 * 1024 // self.lvs.cluster_size)
        self.checker.space_margin = 2 * hi_clusters * cfg.workers * cfg.depth
        await self._resync(initial=True)
        self.result.free_clusters_start = self.lvs.free_clusters if not self.view.nodes else None
        if self.view.nodes:
            self.result.notes.append(f"lvstore {self.lvs_name} held {len(self.view.nodes)} lvols at start; "
                                     "the leak check compares with its free clusters at start")
            self.result.free_clusters_start = self.lvs.free_clusters
        methods = list(mix)
        weights = [mix[m] for m in methods]
        need_peer = bool(cfg.strategies)
        for w in range(cfg.workers):
            c = await RpcConnection.open(self.host, self.sock_path, history=self.history, worker=w, conn=w)
            peer = None
            if need_peer:
                peer = await RpcConnection.open(self.host, self.sock_path, history=self.history, worker=w,
                                                conn=w + cfg.workers)
            self.workers.append(_Worker(w, WorkerStream(cfg, w, methods, weights), c, peer))

    async def _make_copy_dst(self) -> None:
        """The shallow copies' destination: as large as the largest mix lvol and, for busy-delete, as a busy
        snapshot of BUSY_MIN_CLUSTERS (a smaller destination fails the copy at once: never busy)."""
        assert self.setup_conn is not None and self.lvs is not None
        hi = self.cfg.lvol_size_mib[1]
        if "busy-delete" in self.cfg.strategies:
            hi = max(hi, min(BUSY_MAX_MIB, -(-BUSY_MIN_CLUSTERS * self.lvs.cluster_size // MIB)))
        block = self.lvs.block_size or 4096
        try:
            self.copy_dst = await self.setup_conn.call("bdev_malloc_create", {
                "name": COPY_DST, "num_blocks": hi * MIB // block, "block_size": block,
            }, timeout=self.cfg.op_timeout)
            self.copy_dst_mib = hi
        except RpcError as exc:
            if exc.errno_name == "EEXIST":
                self.copy_dst = COPY_DST
                with contextlib.suppress(RpcError, TypeError, KeyError, IndexError):
                    b = (await self.setup_conn.call("bdev_get_bdevs", {"name": COPY_DST},
                                                    timeout=self.cfg.op_timeout))[0]
                    self.copy_dst_mib = b["num_blocks"] * b["block_size"] // MIB
            else:
                self.result.notes.append(f"no shallow copies: bdev_malloc_create {COPY_DST} failed: {exc}")

    async def _resync(self, initial: bool = False) -> list[Finding]:
        """List the target's lvols and bdevs and compare them with the model (or adopt them at start)."""
        assert self.setup_conn is not None and self.checker is not None
        conn = self.setup_conn
        t = self.cfg.op_timeout
        lvols = await conn.call("bdev_lvol_get_lvols", {"lvs_name": self.sched.lvs_name}, timeout=t)
        bdevs_list = await conn.call("bdev_get_bdevs", {}, timeout=t)
        stores = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": self.sched.lvs_name}, timeout=t)
        bdevs = {b.get("uuid") or b.get("name"): b for b in bdevs_list or []
                 if b.get("product_name") == "Logical Volume"}
        store = LvstoreInfo.from_reply(stores[0])
        self._saw_free(store.free_clusters)
        if initial:
            self.checker.adopt(lvols, bdevs, store)
            return []
        return self.checker.compare(lvols, bdevs, store)

    # -- the storm proper -------------------------------------------------------------------------------

    async def _storm(self) -> None:
        cfg = self.cfg
        self.t0 = time.monotonic()
        self.last_reply = self.t0
        if self._progress_enabled is not False:
            self.progress = Progress(self, force=self._progress_enabled)
        lanes = [asyncio.create_task(self._lane(w, d), name=f"storm-w{w.index}-d{d}")
                 for w in self.workers for d in range(cfg.depth)]
        watchers = [asyncio.create_task(self._watch_conn(conn)) for w in self.workers
                    for conn in (w.conn, w.peer) if conn is not None]
        monitor = asyncio.create_task(self._monitor())
        quiescer = asyncio.create_task(self._quiescer()) if cfg.quiesce_every > 0 else None
        try:
            assert self._wake is not None
            await self._wake.wait()
        finally:
            self.stopping = True
            assert self.gate_open is not None
            self.gate_open.set()
            for task in (monitor, quiescer, *watchers):
                if task is not None:
                    task.cancel()
            # Lanes stop at their next send; give in-flight requests a bounded time to answer.
            drain_for = min(cfg.op_timeout, 5.0) if self.stop_reason not in ("connection_lost", "crash") \
                else 1.0
            done, pending = await asyncio.wait(lanes, timeout=drain_for)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
                    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
                    self.result.notes.append(f"lane failed: {type(exc).__name__}: {exc}{at}")
            if self.progress is not None:
                self.progress.close()
        self.result.wall_s = time.monotonic() - self.t0

    def _stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping = True
        if self.gate_open is not None:
            self.gate_open.set()
        if self.space_freed is not None:
            self.space_freed.set()  # episodes waiting for room see the stop at once
        if self._wake is not None:
            self._wake.set()

    async def _watch_conn(self, conn: RpcConnection) -> None:
        reason = await conn.wait_closed()
        if not self.stopping:
            self.result.notes.append(f"connection {conn.conn} lost: {reason}")
            self._stop("crash" if self.crashed is not None and self.crashed.is_set() else "connection_lost")

    async def _monitor(self) -> None:
        cfg = self.cfg
        end = self.t0 + cfg.duration if cfg.duration > 0 else None
        while not self.stopping:
            now = time.monotonic()
            if self.crashed is not None and self.crashed.is_set():
                self._stop("crash")
            elif self.stop_event is not None and self.stop_event.is_set():
                self._stop("interrupted")
            elif end is not None and now >= end:
                self._stop("duration")
            if self.progress is not None:
                self.progress.tick()
            await asyncio.sleep(0.05)

    async def _lane(self, worker: _Worker, depth_index: int) -> None:
        try:
            while not self.stopping:
                step = worker.stream.next()
                if step.strategy is not None:
                    ctx = _Episode(self, worker, step.strategy, step.episode_seed)
                    self.episode_counts[step.strategy] += 1
                    try:
                        await STRATEGIES[step.strategy](ctx)
                    finally:
                        ctx.release()
                    continue
                op = self.sched.build(step, worker.index)
                if op.rule.effect == "lvstore":  # lvstore-wide: nothing else in flight
                    async with self.exclusive():
                        await self.execute(op, worker.conn, bypass_gate=True)
                else:
                    await self.execute(op, worker.conn)
        except _Stop:
            return

    # -- sending one op ---------------------------------------------------------------------------------

    async def execute(self, op: Op, conn: RpcConnection, *, bypass_gate: bool = False) -> Op:
        """Send `op`, wait for its reply, judge it. Raises _Stop when the storm is stopping."""
        if self.stopping:
            raise _Stop
        gate = self.gate_open
        assert gate is not None and self.checker is not None
        if not bypass_gate and not gate.is_set():
            await gate.wait()
            if self.stopping:
                raise _Stop
        cfg = self.cfg
        if cfg.rate_limit:
            now = time.monotonic()
            t = max(now, self.next_send)
            self.next_send = t + 1.0 / cfg.rate_limit
            if t > now:
                await asyncio.sleep(t - now)
                if self.stopping:
                    raise _Stop
        if cfg.max_ops is not None and self.sent >= cfg.max_ops:
            self._stop("max_ops")
            raise _Stop
        self.sent += 1
        checker = self.checker
        op.conn = conn.conn
        checker.on_send(op)
        self.inflight += 1
        self.drained.clear()  # type: ignore[union-attr]
        op.t_start = time.time()
        try:
            op.result = await conn.call(op.method, op.params, timeout=cfg.op_timeout)
        except RpcTimeout:
            op.t_end = time.time()
            self._unresponsive(op)
            checker.abandon(op)
            raise _Stop from None
        except RpcConnectionLost:
            op.t_end = time.time()
            checker.abandon(op)
            self._stop("crash" if self.crashed is not None and self.crashed.is_set() else "connection_lost")
            raise _Stop from None
        except RpcError as exc:
            op.error_code = exc.code if exc.code is not None else -1
            op.error_message = exc.message
            op.errno_name = exc.errno_name
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.drained.set()  # type: ignore[union-attr]
        op.t_end = time.time()
        op.done = True
        self.last_reply = time.monotonic()
        self.ops_by_method[op.method] += 1
        if op.error_code is not None:
            self.errors_by_errno[op.outcome] += 1
        self._follow_space(op)
        rule = op.rule
        if rule.status_method is not None and op.ok:
            await self._follow_job(op, conn, rule.status_method)
        if checker.wants_busy_check(op):
            await self._busy_check(op, conn)
        checker.on_reply(op)
        if rule.new_lvstore_param is not None and op.ok:
            self.sched.lvs_name = op.params[rule.new_lvstore_param]
        return op

    def _saw_free(self, free: int) -> None:
        self.lvs_free = free
        self.lvs_free_at = time.monotonic()

    def _follow_space(self, op: Op) -> None:
        """Free space as the target reports it; a worker whose create met ENOSPC deletes until one of its
        deletes succeeds (growth turns into deletion, as at the lvol ceiling) instead of retrying in vain."""
        rule = op.rule
        if op.method == "bdev_lvol_get_lvstores" and op.ok and isinstance(op.result, list):
            for st in op.result:
                if isinstance(st, dict) and st.get("name") == self.sched.lvs_name and "free_clusters" in st:
                    self._saw_free(int(st["free_clusters"]))
        elif op.errno_name == "ENOSPC" and rule.takes_clusters != "never":
            self.sched.short_of_space.add(op.worker)
        elif rule.view == "remove" and op.ok:
            self.sched.short_of_space.discard(op.worker)
            if self.space_freed is not None:
                self.space_freed.set()

    async def _follow_job(self, op: Op, conn: RpcConnection, status_method: str) -> None:
        """Poll a job (a shallow copy) to its end with its row's status method: the lvol stays open (busy)
        until then."""
        op_id = (op.result or {}).get("operation_id")
        deadline = time.monotonic() + self.cfg.op_timeout
        while op_id is not None and time.monotonic() < deadline:
            try:
                state = await conn.call(status_method, {"operation_id": op_id}, timeout=self.cfg.op_timeout)
            except (RpcConnectionLost, RpcTimeout):
                return
            except RpcError:
                return
            if (state or {}).get("state") != "in progress":
                return
            await asyncio.sleep(0.02)

    async def _busy_check(self, op: Op, conn: RpcConnection) -> None:
        """Right after a delete answered EBUSY: is the lvol still there? (SPDK's forced removal says no.)"""
        name = op.params.get("name")
        try:
            await conn.call("bdev_get_bdevs", {"name": name}, timeout=self.cfg.op_timeout)
            exists = True
        except (RpcConnectionLost, RpcTimeout):
            return
        except RpcError as exc:
            exists = exc.errno_name != "ENODEV"
        assert self.checker is not None
        self.checker.on_busy_check(op, exists, time.time())

    def _unresponsive(self, op: Op) -> None:
        waited = self.cfg.op_timeout
        if self.stop_reason is None:
            assert self.checker is not None
            self.checker.add(Finding("unresponsive", f"target unresponsive after {waited:g} s "
                                     f"(no reply to {op.method})", op.record()))
        self._stop("unresponsive")

    # -- pauses -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Pause every other lane and wait until nothing is in flight (quiesce points, lvstore-wide ops)."""
        assert self.exclusive_lock is not None and self.gate_open is not None and self.drained is not None
        async with self.exclusive_lock:
            if self.stopping:
                raise _Stop
            self.gate_open.clear()
            try:
                try:
                    await asyncio.wait_for(self.drained.wait(), timeout=self.cfg.op_timeout)
                except TimeoutError:
                    self.checker.add(Finding(  # type: ignore[union-attr]
                        "unresponsive", f"target unresponsive after {self.cfg.op_timeout:g} s "
                        f"({self.inflight} requests unanswered at a quiesce point)", None))
                    self._stop("unresponsive")
                    raise _Stop from None
                if self.stopping:
                    raise _Stop
                yield
            finally:
                if not self.stopping:
                    self.gate_open.set()

    async def _quiescer(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.cfg.quiesce_every)
            try:
                async with self.exclusive():
                    await self._quiesce_check()
            except _Stop:
                return
            except (RpcConnectionLost, RpcTimeout):
                return

    async def _quiesce_check(self) -> None:
        assert self.checker is not None
        self.checker.settle()
        for finding in await self._resync():
            self.checker.add(finding)
        release_free_memory()  # nothing in flight: the moment to hand glibc's free heap back (harness.allocator)

    # -- the end ----------------------------------------------------------------------------------------

    async def _target_alive(self) -> bool:
        conn = self.setup_conn
        if conn is None or not conn.is_open:
            return False
        try:
            await conn.call("spdk_get_version", None, timeout=min(self.cfg.op_timeout, 5.0))
            return True
        except (RpcConnectionLost, RpcTimeout):
            return False
        except RpcError:
            return True  # it answered

    async def _finish(self) -> None:
        res = self.result
        checker = self.checker
        assert checker is not None
        if self.stop_reason is None:
            self.stop_reason = "duration"
        alive = self.stop_reason not in ("crash", "unresponsive", "lvstore_lost") and await self._target_alive()
        if alive and self.stop_reason == "connection_lost":
            res.notes.append("a connection was lost but the target still answers")
        if alive:
            try:
                checker.settle()
                for finding in await self._resync():
                    checker.add(finding)
                if self.sched.lvs_name != self.lvs_name:
                    await self.setup_conn.call(  # type: ignore[union-attr]
                        "bdev_lvol_rename_lvstore", {"old_name": self.sched.lvs_name, "new_name": self.lvs_name},
                        timeout=self.cfg.op_timeout)
                    self.sched.lvs_name = self.lvs_name
                    checker.reset_lvstore_name(self.lvs_name)
                if self.cfg.final_cleanup:
                    await self._cleanup_all()
                stores = await self.setup_conn.call(  # type: ignore[union-attr]
                    "bdev_lvol_get_lvstores", {"lvs_name": self.lvs_name}, timeout=self.cfg.op_timeout)
                res.free_clusters_end = stores[0]["free_clusters"]
                if self.cfg.final_cleanup and res.free_clusters_start is not None \
                        and not self.view.nodes and res.free_clusters_end != res.free_clusters_start:
                    checker.add(Finding(
                        "leaked-clusters",
                        f"after deleting every lvol, free_clusters is {res.free_clusters_end}, "
                        f"started at {res.free_clusters_start}: "
                        f"{res.free_clusters_start - res.free_clusters_end} clusters leaked "
                        f"(suspects: {checker.leak_suspects_text()})", checker.leak_suspect_record()))
            except (RpcConnectionLost, RpcTimeout) as exc:
                res.notes.append(f"final checks cut short: {exc}")
                if self.crashed is not None and self.crashed.is_set():
                    self.stop_reason = "crash"
        if self.copy_dst and alive:
            with contextlib.suppress(RpcError):
                await self.setup_conn.call("bdev_malloc_delete", {"name": self.copy_dst},  # type: ignore
                                           timeout=self.cfg.op_timeout)
        res.stop_reason = self.stop_reason or "duration"
        res.ops = sum(self.ops_by_method.values())
        res.ops_by_method = dict(self.ops_by_method)
        res.errors_by_errno = dict(self.errors_by_errno)
        res.findings = list(checker.findings)
        res.races = checker.races
        if checker.repeat_count:
            res.notes.append(f"{checker.repeat_count} repeats of the findings above were not listed again")
        res.notes.extend(self.episode_summary())
        res.ops_per_s = res.ops / res.wall_s if res.wall_s > 0 else 0.0
        res.lvols_live = len(self.view.nodes)

    def episode_summary(self) -> list[str]:
        """One note per strategy whose episodes stopped short of their race or its follow-up, with why."""
        out = []
        for strategy, total in sorted(self.episode_counts.items()):
            why = [(reason, n) for (s, reason), n in self.episode_notes.most_common() if s == strategy]
            if why:
                text = "; ".join(f"{reason} ({n})" for reason, n in why[:6])
                out.append(f"{strategy}: {total} episodes; {text}")
        return out

    async def _cleanup_all(self) -> None:
        """Delete every lvol leaf-first on one connection, checking each delete returns its clusters."""
        assert self.setup_conn is not None and self.checker is not None
        conn = self.setup_conn
        t = self.cfg.op_timeout
        for _ in range(len(self.view.nodes) + 1):
            leaves = [u for u, n in self.view.nodes.items() if not n.children]
            if not leaves:
                break
            for uuid in leaves:
                before = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": self.lvs_name}, timeout=t)
                bdev = await conn.call("bdev_get_bdevs", {"name": uuid}, timeout=t)
                held = (bdev[0].get("driver_specific", {}).get("lvol", {}) or {}).get("num_allocated_clusters", 0)
                op = Op("bdev_lvol_delete", {"name": uuid}, SETUP_WORKER, label="cleanup")
                op.conn = SETUP_WORKER
                self.checker.on_send(op)
                op.t_start = time.time()
                try:
                    op.result = await conn.call("bdev_lvol_delete", {"name": uuid}, timeout=t)
                except RpcConnectionLost:
                    raise
                except RpcError as exc:
                    op.error_code, op.error_message, op.errno_name = exc.code, exc.message, exc.errno_name
                op.t_end = time.time()
                op.done = True
                self.checker.on_reply(op)
                if op.ok:
                    after = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": self.lvs_name}, timeout=t)
                    self.checker.check_release(op, before[0]["free_clusters"], after[0]["free_clusters"], held)
            self.checker.settle()

    async def _close_all(self) -> None:
        conns = [self.setup_conn] + [c for w in self.workers for c in (w.conn, w.peer)]
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1.0)

    async def recreate_lvstore(self, worker: _Worker) -> None:
        """Delete the lvstore with everything in it and make it again on the same bdev (exclusive only)."""
        assert self.lvs is not None and self.checker is not None
        conn = worker.conn
        name = self.sched.lvs_name
        op = Op("bdev_lvol_delete_lvstore", {"lvs_name": name}, worker.index, label="lvstore-delete-with-tree")
        await self._plain(op, conn)
        if not op.ok:
            return
        create = Op("bdev_lvol_create_lvstore", {"bdev_name": self.lvs.base_bdev, "lvs_name": self.lvs_name,
                                                 "cluster_sz": self.lvs.cluster_size},
                    worker.index, label="lvstore-delete-with-tree")
        await self._plain(create, conn)
        if not create.ok:
            self.checker.add(Finding("lvstore-recreate-failed", f"could not recreate the lvstore: "
                                     f"{create.error_message}", create.record()))
            self._stop("connection_lost")
            raise _Stop
        self.sched.lvs_name = self.lvs_name
        await self._resync(initial=True)

    async def reload_lvstore(self, worker: _Worker) -> str | None:
        """Unload the lvstore by hot-removing its aio base bdev, make the bdev again on the same file and let
        the examine load it (exclusive only): what is on disk must come back exactly as the model has it.
        Returns why it did not happen (not aio, a refused step), or None."""
        assert self.lvs is not None and self.checker is not None
        conn, t = worker.conn, self.cfg.op_timeout
        base = self.lvs.base_bdev
        try:
            info = (await conn.call("bdev_get_bdevs", {"name": base}, timeout=t))[0]
        except RpcError as exc:
            return f"bdev_get_bdevs {base}: {exc}"
        aio = (info.get("driver_specific") or {}).get("aio")
        if not isinstance(aio, dict) or not aio.get("filename"):
            return f"base bdev {base} is not an aio bdev (bdev.kind: aio reloads; malloc would lose the data)"
        self.checker.settle()
        name = self.sched.lvs_name
        delete = Op("bdev_aio_delete", {"name": base}, worker.index, label="lvstore-reload")
        await self._plain(delete, conn)
        if not delete.ok:
            return f"bdev_aio_delete {base} answered {delete.outcome}"
        gone = False
        for _ in range(100):  # the unload finishes after the delete answers on some builds: 5 s at most
            try:
                await conn.call("bdev_lvol_get_lvstores", {"lvs_name": name}, timeout=t)
            except RpcError:
                gone = True
                break
            await asyncio.sleep(0.05)
        params: dict[str, Any] = {"filename": aio["filename"], "name": base}
        if aio.get("block_size_override"):
            params["block_size"] = info.get("block_size")
        create = Op("bdev_aio_create", params, worker.index, label="lvstore-reload")
        await self._plain(create, conn)
        stores: list[dict[str, Any]] = []
        if create.ok:
            await conn.call("bdev_wait_for_examine", None, timeout=t)
            with contextlib.suppress(RpcError):
                stores = await conn.call("bdev_lvol_get_lvstores", {"lvs_name": name}, timeout=t)
        if not gone or not stores or stores[0].get("uuid") != self.lvs.uuid:
            why = ("the lvstore was still listed 5 s after its base bdev was deleted" if not gone else
                   f"bdev_aio_create answered {create.outcome}" if not create.ok else
                   f"after the reload bdev_lvol_get_lvstores {name} shows {stores or 'nothing'}, "
                   f"not lvstore {self.lvs.uuid}")
            self.checker.add(Finding("lvstore-reload-failed", f"unload and reload of lvstore {name} on {base}: "
                                     f"{why}", create.record()))
            self._stop("lvstore_lost")
            raise _Stop
        self.checker.on_reload()
        for finding in await self._resync():
            self.checker.add(finding)
        return None

    async def _plain(self, op: Op, conn: RpcConnection) -> None:
        """Send an op the checker does not model (lvstore lifetime), still counted and timed."""
        op.conn = conn.conn
        op.t_start = time.time()
        try:
            op.result = await conn.call(op.method, op.params, timeout=self.cfg.op_timeout)
        except RpcConnectionLost:
            self._stop("connection_lost")
            raise _Stop from None
        except RpcTimeout:
            self._unresponsive(op)
            raise _Stop from None
        except RpcError as exc:
            op.error_code, op.error_message, op.errno_name = exc.code, exc.message, exc.errno_name
            self.errors_by_errno[op.outcome] += 1
        op.t_end = time.time()
        op.done = True
        self.ops_by_method[op.method] += 1


class _Episode:
    """The EpisodeContext a strategy runs in: its own RNG, names from its worker, two connections."""

    def __init__(self, storm: Storm, worker: _Worker, strategy: str, seed: int) -> None:
        self.storm = storm
        self.worker = worker
        self.label = strategy
        self.rng = random.Random(seed)
        self._exclusive = False
        self._held: list[str] = []
        self._reserved = 0

    @property
    def lvs_name(self) -> str:
        return self.storm.sched.lvs_name

    @property
    def copy_dst(self) -> str | None:
        return self.storm.copy_dst

    @property
    def copy_dst_mib(self) -> int:
        return self.storm.copy_dst_mib

    def name(self, kind: str) -> str:
        return self.worker.stream.name(kind)

    def size_mib(self) -> int:
        lo, hi = self.storm.cfg.lvol_size_mib
        return self.rng.randint(lo, hi)

    def note(self, reason: str) -> None:
        """Why this episode stopped short of its race or follow-up (counted per reason into StormResult.notes)."""
        self.storm.episode_notes[(self.label, reason)] += 1

    async def free_clusters(self) -> int | None:
        """The lvstore's free clusters as the target reports them now (a read on this worker's connection)."""
        op = await self.do("bdev_lvol_get_lvstores", {"lvs_name": self.lvs_name})
        if op.ok and isinstance(op.result, list) and op.result and isinstance(op.result[0], dict):
            return int(op.result[0].get("free_clusters", 0))
        self.note(f"bdev_lvol_get_lvstores answered {op.outcome}")
        return None

    async def reserve_busy_size(self, max_mib: int | None = None) -> int | None:
        """MiB for the origin of a busy snapshot, chosen from the target's free clusters now: at least
        BUSY_MIN_CLUSTERS (so the job outlasts the calls behind it), a sixth of what is not promised to other
        episodes' trees (this tree holds two copies), at most BUSY_MAX_MIB. Twice that is promised to this
        episode until it ends. With too little room it waits (bounded) for deletes; None (noted) if none came."""
        storm = self.storm
        assert storm.lvs is not None and storm.space_freed is not None
        cs = storm.lvs.cluster_size
        lo = max(1, min(BUSY_MIN_CLUSTERS, storm.lvs.total_data_clusters // 3))
        hi = max(lo, min(BUSY_MAX_MIB, max_mib or BUSY_MAX_MIB) * MIB // cs)
        deadline = time.monotonic() + SPACE_WAIT_S
        for _ in range(SPACE_TRIES):
            free = await self.free_clusters()
            if free is None:
                return None
            avail = free - storm.space_reserved
            if avail >= 2 * lo:
                n = max(lo, min(hi, avail // 6))
                storm.space_reserved += 2 * n
                self._reserved += 2 * n
                return -(-n * cs // MIB)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            storm.space_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(storm.space_freed.wait(), timeout=left)
            if storm.stopping:
                raise _Stop
            await asyncio.sleep(SPACE_REREAD_S)  # many deletes may answer meanwhile: read the lvstore seldom
        storm.sched.short_of_space.add(self.worker.index)
        self.note(f"no room for a busy snapshot within {SPACE_WAIT_S:g} s (needs {2 * lo} clusters beside "
                  "the other episodes' trees)")
        return None

    def release(self) -> None:
        """The episode is over: its lvols go back to the random mix, its promised space to other episodes."""
        view = self.storm.view
        for u in self._held:
            view.unhide(u)
        self._held.clear()
        if self._reserved:
            self.storm.space_reserved -= self._reserved
            self._reserved = 0
            if self.storm.space_freed is not None:
                self.storm.space_freed.set()

    def has(self, method: str) -> bool:
        return method not in OPTIONAL_METHODS or method in self.storm.capabilities

    def exists(self, uuid: str) -> bool:
        """Whether the storm believes uuid is live (another worker may have deleted it)."""
        return uuid in self.storm.view.nodes

    def pick_existing(self, kind: str) -> str | None:
        return self.storm.view.pick(kind, self.rng.random(), self.storm.sched.hot, self.rng.random())

    async def do(self, method: str, params: dict[str, Any], *, peer: bool = False) -> Op:
        conn = self.worker.peer if peer and self.worker.peer is not None else self.worker.conn
        op = Op(method, params, self.worker.index, label=self.label)
        await self.storm.execute(op, conn, bypass_gate=self._exclusive)
        self._hold(op)
        return op

    def _hold(self, op: Op) -> None:
        """What the episode creates stays out of the random mix's (and other episodes') picks until it ends:
        a random clone, set_parent or delete on its tree would spoil the race it builds."""
        if op.ok and op.rule.creates_lvol and isinstance(op.result, str):
            self.storm.view.hide(op.result)
            self._held.append(op.result)

    async def pipelined(self, *calls: tuple[str, dict[str, Any]], peer: bool = False) -> list[Op]:
        """Send `calls` back to back in one write on one connection: the target reads them together and runs
        them in this order with nothing from other connections in between (on two connections the order is
        the target's poller's, and a delete often ran before the job it was meant to meet)."""
        conn = self.worker.peer if peer and self.worker.peer is not None else self.worker.conn
        ops = [Op(m, p, self.worker.index, label=self.label) for m, p in calls]
        conn.cork()
        try:
            tasks = [asyncio.ensure_future(self.storm.execute(op, conn, bypass_gate=self._exclusive))
                     for op in ops]
        finally:
            # Each task sends at its first step, which runs in the next loop turn before this callback.
            asyncio.get_running_loop().call_soon(conn.uncork)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        for op in ops:
            self._hold(op)
        return ops

    async def cleanup(self, uuids: list[str]) -> None:
        view = self.storm.view
        left = [u for u in dict.fromkeys(uuids) if u in view.nodes]
        for _ in range(len(left) + 1):
            progress = False
            for u in list(left):
                if u not in view.nodes:
                    left.remove(u)
                    continue
                if view.children_of(u):
                    continue
                await self.do("bdev_lvol_delete", {"name": u})
                left.remove(u)
                progress = True
            if not left or not progress:
                return

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self.storm.exclusive():
            self._exclusive = True
            try:
                yield
            finally:
                self._exclusive = False

    async def recreate_lvstore(self) -> None:
        await self.storm.recreate_lvstore(self.worker)

    async def reload_lvstore(self) -> str | None:
        return await self.storm.reload_lvstore(self.worker)


async def run_storm(cfg: StormConfig, *, host: Host, sock_path: str, lvs_name: str, history: History | None,
                    stop_event: threading.Event | None = None, capabilities: set[str] | None = None,
                    run_dir: str | Path | None = None, crashed: threading.Event | None = None,
                    progress: bool | None = None) -> StormResult:
    """Run one storm against the lvstore `lvs_name` behind `sock_path` on `host`.

    `stop_event` (set from another thread, e.g. Ctrl-C in the CLI) and `crashed` (the watchdog's Event) stop
    it within a second; so does a lost connection. Returns after final checks (when the target still answers)
    with the result; every op is in `history`. `capabilities` is `rpc_get_methods`' list (queried when empty).
    `progress`: None = a live line on a TTY, a log line every 30 s otherwise; False = silent.
    """
    storm = Storm(cfg, host=host, sock_path=sock_path, lvs_name=lvs_name, history=history,
                  stop_event=stop_event, capabilities=capabilities or set(), run_dir=run_dir, crashed=crashed,
                  progress=progress)
    result = await storm.run()
    if run_dir is not None:
        import json

        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "storm.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def run_storm_sync(cfg: StormConfig, **kwargs: Any) -> StormResult:
    """`run_storm` from synchronous code (the CLI, pytest fixtures): its own event loop. Signals are the face's:
    it sets `stop_event` on the first Ctrl-C, and the engine sees that within 50 ms."""
    return asyncio.run(run_storm(cfg, **kwargs))
