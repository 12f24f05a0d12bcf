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
import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness.allocator import release_free_memory
from harness.history import EPISODE, SETUP_WORKER, History
from harness.hosts.base import Host
from harness.io.config import IoConfig
from harness.io.lanes import IoStorm
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.rpc_rules.table import COPY_DST, ESNAP_PREFIX
from harness.storm.checker import Checker, Finding, LvstoreInfo
from harness.storm.config import (
    ESNAP_METHODS,
    MIB,
    StormConfig,
    check_against_capabilities,
    check_against_lvstore,
    copy_destination_mib,
    esnap_bdev_mibs,
)
from harness.storm.control import Stopping, Worker
from harness.storm.episodes import Episode
from harness.storm.esnaps import ESNAP_COUNT, EsnapBdev, EsnapBdevs, esnap_uuid
from harness.storm.listing import read_listing
from harness.storm.operations import Op
from harness.storm.progress import Progress
from harness.storm.result import StormResult
from harness.storm.scheduler import HOT_SIZE, Scheduler, WorkerStream
from harness.storm.space import SpaceLedger
from harness.storm.strategies import STRATEGIES
from harness.storm.view import TreeView
from harness.sync_loop import run_sync

__all__ = ["Storm", "StormResult", "run_storm", "run_storm_sync"]


class Storm:
    """One storm run; see `run_storm`."""

    def __init__(self, cfg: StormConfig, *, host: Host, sock_path: str, lvs_name: str,
                 history: History | None, stop_event: threading.Event | None, capabilities: set[str],
                 run_dir: str | Path | None, crashed: threading.Event | None = None,
                 progress: bool | None = None, io: IoConfig | None = None) -> None:
        self.cfg = cfg
        self.io_cfg = io if io is not None and io.enabled else None
        self.io: IoStorm | None = None
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
        self.gate_open = asyncio.Event()
        self.gate_open.set()
        self.exclusive_lock = asyncio.Lock()
        self.drained = asyncio.Event()
        self.drained.set()
        self.workers: list[Worker] = []
        self.setup_conn: RpcConnection | None = None
        self._checker: Checker | None = None
        self._lvs: LvstoreInfo | None = None
        self.copy_dst: str | None = None
        self.copy_dst_mib = cfg.lvol_size_mib[1]
        self.esnaps = EsnapBdevs()
        self.next_send = 0.0
        self.t0 = 0.0
        self.last_reply = 0.0
        self._progress_enabled = progress
        self.progress: Progress | None = None
        self._wake = asyncio.Event()
        self.space = SpaceLedger(self.sched.short_of_space)
        self.episode_counts: Counter[str] = Counter()
        self.episode_notes: Counter[tuple[str, str]] = Counter()

    # -- public -----------------------------------------------------------------------------------------

    @property
    def checker(self) -> Checker:
        assert self._checker is not None, "the storm is not set up yet"
        return self._checker

    @property
    def lvs(self) -> LvstoreInfo:
        assert self._lvs is not None, "the storm is not set up yet"
        return self._lvs

    async def run(self) -> StormResult:
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
        lvs = self._lvs = LvstoreInfo.from_reply(stores[0])
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
        if esnap_bdev_mibs(cfg, lvs.cluster_size) and "bdev_lvol_clone_bdev" in self.capabilities:
            await self._make_esnaps()
        if not self.esnaps.shared:
            for method in ESNAP_METHODS:
                mix.pop(method, None)
        self.sched.lvs_name = self.lvs_name
        self.sched.copy_dst = self.copy_dst
        self.sched.esnaps = self.esnaps
        self._checker = Checker(self.view, lvs, check_busy_delete=cfg.check_busy_delete,
                                copy_dst_bytes=self.copy_dst_mib * MIB, esnaps=self.esnaps)
        hi_clusters = -(-cfg.lvol_size_mib[1] * 1024 * 1024 // self.lvs.cluster_size)
        self.checker.space_margin = 2 * hi_clusters * cfg.workers * cfg.depth
        await self.resync(initial=True)
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
            self.workers.append(Worker(w, WorkerStream(cfg, w, methods, weights), c, peer))
        if self.io_cfg is not None:
            self.io = IoStorm(self.io_cfg, self, host=self.host, sock_path=self.sock_path, history=self.history,
                              run_dir=self.run_dir, seed=cfg.seed, op_timeout=cfg.op_timeout)
            await self.io.setup()

    async def _make_copy_dst(self) -> None:
        """The shallow copies' destination: as large as the largest mix lvol and, for busy-delete, as a busy
        snapshot of BUSY_MIN_CLUSTERS (a smaller destination fails the copy at once: never busy)."""
        assert self.setup_conn is not None
        hi = copy_destination_mib(self.cfg, self.lvs.cluster_size) or self.cfg.lvol_size_mib[1]
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

    async def _make_esnaps(self) -> None:
        """The shared external snapshots the mix makes esnap clones of (`harness.storm.esnaps`)."""
        assert self.setup_conn is not None
        sizes = esnap_bdev_mibs(self.cfg, self.lvs.cluster_size)[:ESNAP_COUNT]
        for i, mib in enumerate(sizes):
            name = f"{ESNAP_PREFIX}{i}"
            made = await self.make_esnap(name, mib, self.setup_conn)
            if made is None:
                return
            self.esnaps.add(made, shared=True)

    async def make_esnap(self, name: str, mib: int, conn: RpcConnection) -> EsnapBdev | None:
        """A malloc bdev to be an external snapshot, with the run's stable UUID for its name (None, noted, if
        the target refused; an existing one is taken as it is)."""
        block = self.lvs.block_size or 4096
        uuid = esnap_uuid(self.cfg.seed, name)
        try:
            await conn.call("bdev_malloc_create", {"name": name, "num_blocks": mib * MIB // block,
                                                   "block_size": block, "uuid": uuid}, timeout=self.cfg.op_timeout)
            # Until the examine lets go of a new bdev (it holds it open for writing while it looks for an
            # lvstore), an esnap clone of it cannot claim it and is made degraded (seen on 1975133e9: a
            # create and a clone_bdev in one write give a UUID and an lvol without a bdev).
            await conn.call("bdev_wait_for_examine", None, timeout=self.cfg.op_timeout)
        except RpcError as exc:
            if exc.errno_name != "EEXIST":
                self.result.notes.append(f"no external snapshot {name}: bdev_malloc_create failed: {exc}")
                return None
            try:
                b = (await conn.call("bdev_get_bdevs", {"name": name}, timeout=self.cfg.op_timeout))[0]
            except (RpcError, TypeError, KeyError, IndexError):
                self.result.notes.append(f"no external snapshot {name}: {exc}, and it cannot be read")
                return None
            return EsnapBdev(name, b["uuid"], b["num_blocks"] * b["block_size"])
        return EsnapBdev(name, uuid, mib * MIB)

    async def resync(self, initial: bool = False) -> list[Finding]:
        """List the target's lvols and bdevs and compare them with the model (or adopt them at start)."""
        assert self.setup_conn is not None
        listing = await read_listing(self.setup_conn, self.sched.lvs_name, self.cfg.op_timeout)
        lvols, bdevs, store = listing.lvols, listing.bdevs, listing.store
        self.space.saw_free(store.free_clusters)
        self._lvs = store  # after an lvstore was made again: its new UUID (a reload checks it comes back)
        if self.io is not None:
            self.io.reconcile(lvols, bdevs)
        if initial:
            self.checker.adopt(lvols, bdevs, store)
            return []
        found = self.checker.compare(lvols, bdevs, store)
        if self.io is not None:
            self.io.align_mirror()
        return found

    # -- the storm proper -------------------------------------------------------------------------------

    async def _storm(self) -> None:
        cfg = self.cfg
        self.t0 = time.monotonic()
        self.last_reply = self.t0
        if self._progress_enabled is not False:
            self.progress = Progress(self, force=self._progress_enabled)
        lanes = [asyncio.create_task(self._lane(w, d), name=f"storm-w{w.index}-d{d}")
                 for w in self.workers for d in range(cfg.depth)]
        if self.io is not None:
            lanes += self.io.tasks()  # the I/O lanes stop, drain and pause with the RPC lanes
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
                exc = None if task.cancelled() else task.exception()
                if exc is not None:
                    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
                    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
                    self.result.notes.append(f"lane failed: {type(exc).__name__}: {exc}{at}")
            if self.progress is not None:
                self.progress.close()
        self.result.wall_s = time.monotonic() - self.t0

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopping = True
        if self.gate_open is not None:
            self.gate_open.set()
        self.space.freed.set()  # episodes waiting for room see the stop at once
        if self._wake is not None:
            self._wake.set()

    async def _watch_conn(self, conn: RpcConnection) -> None:
        reason = await conn.wait_closed()
        if not self.stopping:
            self.result.notes.append(f"connection {conn.conn} lost: {reason}")
            self.stop("crash" if self.crashed is not None and self.crashed.is_set() else "connection_lost")

    async def _monitor(self) -> None:
        cfg = self.cfg
        end = self.t0 + cfg.duration if cfg.duration > 0 else None
        while not self.stopping:
            now = time.monotonic()
            if self.crashed is not None and self.crashed.is_set():
                self.stop("crash")
            elif self.stop_event is not None and self.stop_event.is_set():
                self.stop("interrupted")
            elif end is not None and now >= end:
                self.stop("duration")
            if self.progress is not None:
                self.progress.tick()
            await asyncio.sleep(0.05)

    async def _lane(self, worker: Worker, depth_index: int) -> None:
        try:
            while not self.stopping:
                step = worker.stream.next()
                if step.strategy is not None:
                    ctx = Episode(self, worker, step.strategy, step.episode_seed)
                    self.episode_counts[step.strategy] += 1
                    tag = EPISODE.set(f"{worker.index}.{sum(self.episode_counts.values())}:{step.strategy}")
                    try:
                        await STRATEGIES[step.strategy](ctx)
                    finally:
                        EPISODE.reset(tag)
                        ctx.release()
                    continue
                op = self.sched.build(step, worker.index)
                if op.rule.effect == "lvstore":  # lvstore-wide: nothing else in flight
                    async with self.exclusive():
                        await self.execute(op, worker.conn, bypass_gate=True)
                else:
                    await self.execute(op, worker.conn)
        except Stopping:
            return

    # -- sending one op ---------------------------------------------------------------------------------

    async def execute(self, op: Op, conn: RpcConnection, *, bypass_gate: bool = False) -> Op:
        """Send `op`, wait for its reply, judge it. Raises Stopping when the storm is stopping."""
        if self.stopping:
            raise Stopping
        gate = self.gate_open
        if not bypass_gate and not gate.is_set():
            await gate.wait()
            if self.stopping:
                raise Stopping
        cfg = self.cfg
        if cfg.rate_limit:
            now = time.monotonic()
            t = max(now, self.next_send)
            self.next_send = t + 1.0 / cfg.rate_limit
            if t > now:
                await asyncio.sleep(t - now)
                if self.stopping:
                    raise Stopping
        if cfg.max_ops is not None and self.sent >= cfg.max_ops:
            self.stop("max_ops")
            raise Stopping
        self.sent += 1
        checker = self.checker
        op.conn = conn.conn
        if self.io is not None:
            self.io.on_send(op)
        checker.on_send(op)
        self.inflight += 1
        self.drained.clear()
        op.t_start = time.time()
        try:
            op.result, error = await conn.exchange(op.method, op.params, timeout=cfg.op_timeout,
                                                   decode=not op.rule.result_unread)
            if error is not None:
                op.error_code = error.code if error.code is not None else -1
                op.error_message = error.message
                op.errno_name = error.errno_name
        except RpcTimeout:
            op.t_end = time.time()
            self._unresponsive(op)
            checker.abandon(op)
            raise Stopping from None
        except RpcConnectionLost:
            op.t_end = time.time()
            checker.abandon(op)
            self.stop("crash" if self.crashed is not None and self.crashed.is_set() else "connection_lost")
            raise Stopping from None
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.drained.set()
        op.t_end = time.time()
        op.done = True
        self.last_reply = time.monotonic()
        self.ops_by_method[op.method] += 1
        if op.error_code is not None:
            self.errors_by_errno[op.outcome] += 1
        self.space.follow(op, self.sched.lvs_name)
        rule = op.rule
        if rule.status_method is not None and op.ok:
            await self._follow_job(op, conn, rule.status_method)
        if checker.wants_busy_check(op):
            await self._busy_check(op, conn)
        if self.io is not None:
            self.io.on_reply(op)
        checker.on_reply(op)
        if rule.new_lvstore_param is not None and op.ok:
            self.sched.lvs_name = op.params[rule.new_lvstore_param]
        return op

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
        self.checker.on_busy_check(op, exists, time.time())

    def _unresponsive(self, op: Op) -> None:
        waited = self.cfg.op_timeout
        if self.stop_reason is None:
                self.checker.add(Finding("unresponsive", f"target unresponsive after {waited:g} s "
                                     f"(no reply to {op.method})", op.record()))
        self.stop("unresponsive")

    # -- pauses -----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Pause every other lane and wait until nothing is in flight (quiesce points, lvstore-wide ops)."""
        assert self.exclusive_lock is not None and self.gate_open is not None and self.drained is not None
        async with self.exclusive_lock:
            if self.stopping:
                raise Stopping
            self.gate_open.clear()
            paused = time.time()
            try:
                try:
                    await asyncio.wait_for(self.drained.wait(), timeout=self.cfg.op_timeout)
                except TimeoutError:
                    self.checker.add(Finding(
                        "unresponsive", f"target unresponsive after {self.cfg.op_timeout:g} s "
                        f"({self.inflight} requests unanswered at a quiesce point)", None))
                    self.stop("unresponsive")
                    raise Stopping from None
                if self.stopping:
                    raise Stopping
                yield
            finally:
                self.result.pauses.append((paused, time.time()))
                if not self.stopping:
                    self.gate_open.set()

    async def _quiescer(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.cfg.quiesce_every)
            try:
                async with self.exclusive():
                    await self._quiesce_check()
            except Stopping:
                return
            except (RpcConnectionLost, RpcTimeout):
                return

    async def _quiesce_check(self) -> None:
        self.checker.settle()
        for finding in await self.resync():
            self.checker.add(finding)
        release_free_memory()  # nothing in flight: the moment to hand glibc's free heap back (harness.allocator)

    # -- the end ----------------------------------------------------------------------------------------

    async def _target_answers(self) -> str:
        """"yes", "gone" (the connection is lost) or "silent" (no answer in 5 s: hung, or stopped, which the
        watchdog decides; the run then waits for its verdict instead of tearing down)."""
        conn = self.setup_conn
        if conn is None or not conn.is_open:
            return "gone"
        try:
            await conn.call("spdk_get_version", None, timeout=min(self.cfg.op_timeout, 5.0))
            return "yes"
        except RpcTimeout:
            return "silent"
        except RpcConnectionLost:
            return "gone"
        except RpcError:
            return "yes"  # it answered

    async def _finish(self) -> None:
        res = self.result
        checker = self.checker
        conn = self.setup_conn
        assert conn is not None
        if self.stop_reason is None:
            self.stop_reason = "duration"
        stopped_dead = self.stop_reason in ("crash", "unresponsive", "lvstore_lost")
        answers = "no" if stopped_dead else await self._target_answers()
        if answers == "silent":
            res.notes.append("the target did not answer the final checks within 5 s")
            self.stop_reason = "unresponsive"
        alive = answers == "yes"
        if alive and self.stop_reason == "connection_lost":
            res.notes.append("a connection was lost but the target still answers")
        if alive:
            try:
                checker.settle()
                for finding in await self.resync():
                    checker.add(finding)
                if self.sched.lvs_name != self.lvs_name:
                    await conn.call(
                        "bdev_lvol_rename_lvstore", {"old_name": self.sched.lvs_name, "new_name": self.lvs_name},
                        timeout=self.cfg.op_timeout)
                    self.sched.lvs_name = self.lvs_name
                    checker.reset_lvstore_name(self.lvs_name)
                if self.cfg.final_cleanup:
                    await self._cleanup_all()
                stores = await conn.call(
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
        if self.io is not None:
            if alive:
                await self.io.finish()
            res.io = self.io.result()
        if self.copy_dst and alive:
            with contextlib.suppress(RpcError):
                await conn.call("bdev_malloc_delete", {"name": self.copy_dst}, timeout=self.cfg.op_timeout)
        if alive and not self.view.nodes:  # an esnap clone left would hold its bdev: the delete would wait
            for bdev in self.esnaps.by_name.values():
                if bdev.state == "present":
                    with contextlib.suppress(RpcError):
                        await conn.call("bdev_malloc_delete", {"name": bdev.name}, timeout=self.cfg.op_timeout)
        res.stop_reason = self.stop_reason or "duration"
        res.ops = sum(self.ops_by_method.values())
        res.ops_by_method = dict(self.ops_by_method)
        res.errors_by_errno = dict(self.errors_by_errno)
        res.findings = list(checker.findings)
        res.races = checker.races
        res.lvols_compared = checker.compared
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
        assert self.setup_conn is not None
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
        if self.io is not None:
            await self.io.close()
        conns = [self.setup_conn] + [c for w in self.workers for c in (w.conn, w.peer)]
        for conn in conns:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=1.0)

    async def plain(self, op: Op, conn: RpcConnection, *, timeout: float | None = None) -> None:
        """Send an op the checker does not model (lvstore lifetime, external snapshots, a nested lvstore),
        still counted and timed; `timeout` beyond op_timeout for a reply that waits on purpose."""
        op.conn = conn.conn
        op.t_start = time.time()
        try:
            op.result = await conn.call(op.method, op.params, timeout=timeout or self.cfg.op_timeout)
        except RpcConnectionLost:
            self.stop("connection_lost")
            raise Stopping from None
        except RpcTimeout:
            self._unresponsive(op)
            raise Stopping from None
        except RpcError as exc:
            op.error_code, op.error_message, op.errno_name = exc.code, exc.message, exc.errno_name
            self.errors_by_errno[op.outcome] += 1
        op.t_end = time.time()
        op.done = True
        self.ops_by_method[op.method] += 1


async def run_storm(cfg: StormConfig, *, host: Host, sock_path: str, lvs_name: str, history: History | None,
                    stop_event: threading.Event | None = None, capabilities: set[str] | None = None,
                    run_dir: str | Path | None = None, crashed: threading.Event | None = None,
                    progress: bool | None = None, io: IoConfig | None = None) -> StormResult:
    """Run one storm against the lvstore `lvs_name` behind `sock_path` on `host`.

    `stop_event` (set from another thread, e.g. Ctrl-C in the CLI) and `crashed` (the watchdog's Event) stop
    it within a second; so does a lost connection. Returns after final checks (when the target still answers)
    with the result; every op is in `history`. `capabilities` is `rpc_get_methods`' list (queried when empty).
    `progress`: None = a live line on a TTY, a log line every 30 s otherwise; False = silent.
    """
    storm = Storm(cfg, host=host, sock_path=sock_path, lvs_name=lvs_name, history=history,
                  stop_event=stop_event, capabilities=capabilities or set(), run_dir=run_dir, crashed=crashed,
                  progress=progress, io=io)
    result = await storm.run()
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "storm.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def run_storm_sync(cfg: StormConfig, **kwargs: Any) -> StormResult:
    """`run_storm` from synchronous code (the CLI, pytest fixtures): its own event loop. Signals are the face's:
    it sets `stop_event` on the first Ctrl-C, and the engine sees that within 50 ms."""
    return run_sync(run_storm(cfg, **kwargs))
