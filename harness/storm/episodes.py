"""An episode: the context a strategy (`harness.storm.strategies`) runs in, on one worker.

Its own RNG (seeded from the worker's stream), names from its worker's counter, its worker's connection and
a peer connection, and a hold on what it creates: its lvols stay out of the random mix's (and other
episodes') picks until it ends, so the race it builds is not spoiled. Episodes that build big thick trees
get their room promised from the storm's space ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from harness.rpc_rules.table import ESNAP_PREFIX
from harness.storm.config import BUSY_MAX_MIB, BUSY_MIN_CLUSTERS, EPISODE_ESNAP_MIB, MIB
from harness.storm.control import Stopping, StormControl, Worker
from harness.storm.esnaps import EsnapBdev
from harness.storm.lvstore_cycles import recreate_lvstore, reload_blocker, reload_lvstore
from harness.storm.mirror import LvstoreInfo
from harness.storm.nested import NestedLvstore
from harness.storm.operations import OPTIONAL_METHODS, Op

SPACE_WAIT_S = 2.0
SPACE_TRIES = 40
SPACE_REREAD_S = 0.1
DELETE_SEEN_TRIES = 50
"""Reads (20 ms apart) that wait for a held external snapshot's delete to reach the target."""
NESTED_CLUSTER = 1024 * 1024


class Episode:
    """The EpisodeContext a strategy runs in: its own RNG, names from its worker, two connections."""

    def __init__(self, storm: StormControl, worker: Worker, strategy: str, seed: int) -> None:
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
        space = storm.space
        cs = storm.lvs.cluster_size
        lo = max(1, min(BUSY_MIN_CLUSTERS, storm.lvs.total_data_clusters // 3))
        hi = max(lo, min(BUSY_MAX_MIB, max_mib or BUSY_MAX_MIB) * MIB // cs)
        deadline = time.monotonic() + SPACE_WAIT_S
        for _ in range(SPACE_TRIES):
            free = await self.free_clusters()
            if free is None:
                return None
            avail = free - space.reserved
            if avail >= 2 * lo:
                n = max(lo, min(hi, avail // 6))
                space.promise(2 * n)
                self._reserved += 2 * n
                return -(-n * cs // MIB)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            space.freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(space.freed.wait(), timeout=left)
            if storm.stopping:
                raise Stopping
            await asyncio.sleep(SPACE_REREAD_S)  # many deletes may answer meanwhile: read the lvstore seldom
        space.short_of_space.add(self.worker.index)
        self.note(f"no room for a busy snapshot within {SPACE_WAIT_S:g} s (needs {2 * lo} clusters beside "
                  "the other episodes' trees)")
        return None

    def release(self) -> None:
        """The episode is over: its lvols go back to the random mix, its promised space to other episodes."""
        view = self.storm.view
        for u in self._held:
            view.unhide(u)
        self._held.clear()
        self.storm.space.give_back(self._reserved)
        self._reserved = 0

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
        await recreate_lvstore(self.storm, self.worker)

    async def reload_lvstore(self, while_unloaded: Callable[[], Awaitable[None]] | None = None) -> str | None:
        return await reload_lvstore(self.storm, self.worker, while_unloaded)

    async def resync(self) -> None:
        """Compare the target's whole tree with the model now (exclusive only)."""
        for finding in await self.storm.resync():
            self.storm.checker.add(finding)

    async def plain(self, method: str, params: dict[str, Any], *, peer: bool = False,
                    timeout: float | None = None) -> Op:
        """A call the checker does not judge (external snapshots, nested lvstores), counted and timed."""
        conn = self.worker.peer if peer and self.worker.peer is not None else self.worker.conn
        op = Op(method, params, self.worker.index, label=self.label)
        await self.storm.plain(op, conn, timeout=timeout)
        return op

    # -- external snapshots ---------------------------------------------------------------------------

    def pick_esnap(self) -> str | None:
        """One of the storm's shared external snapshots, or None (noted) when it has none."""
        shared = self.storm.esnaps.shared
        if not shared:
            self.note("the storm has no external snapshots (the target lacks bdev_lvol_clone_bdev)")
            return None
        return shared[self.rng.randrange(len(shared))]

    def esnap_mib(self, name: str) -> int:
        bdev = self.storm.esnaps.by_name.get(name)
        return bdev.size_bytes // MIB if bdev is not None else self.size_mib()

    async def own_esnap(self) -> EsnapBdev | None:
        """An external snapshot of this episode's own (one it may delete; `drop_esnap` when done)."""
        name = f"{ESNAP_PREFIX}_{self.name('x')}"
        cs = self.storm.lvs.cluster_size
        made = await self.storm.make_esnap(name, -(-EPISODE_ESNAP_MIB * MIB // cs) * cs // MIB, self.worker.conn)
        if made is None:
            self.note(f"could not make {name}")
            return None
        self.storm.esnaps.add(made)
        return made

    async def delete_esnap(self, bdev: EsnapBdev, *, held: bool) -> asyncio.Task[Op]:
        """Start deleting an external snapshot on the peer connection. `held`: esnap clones hold it, so the
        reply waits until they let go: the task is that reply; this returns once the target has taken the
        bdev out of its listings (the checker judges what follows against a bdev being deleted)."""
        op_timeout = self.storm.cfg.op_timeout

        async def delete() -> Op:
            op = Op("bdev_malloc_delete", {"name": bdev.name}, self.worker.index, label=self.label)
            with contextlib.suppress(Stopping):  # the storm stopping (a death) while the reply waits
                op = await self.plain("bdev_malloc_delete", {"name": bdev.name}, peer=True, timeout=op_timeout * 4)
            if op.ok:
                bdev.state = "gone"
            return op

        task = asyncio.ensure_future(delete())
        if held:
            for _ in range(DELETE_SEEN_TRIES):
                probe = await self.plain("bdev_get_bdevs", {"name": bdev.name})
                if probe.errno_name == "ENODEV" or task.done():
                    break
                await asyncio.sleep(0.02)
            if not task.done():
                bdev.state = "deleting"
        else:
            await task
        return task

    async def drop_esnap(self, bdev: EsnapBdev) -> None:
        """The episode is done with its external snapshot: deleted if it is there, forgotten."""
        if bdev.state == "present":
            await self.delete_esnap(bdev, held=False)
        if bdev.state == "gone":
            self.storm.esnaps.by_name.pop(bdev.name, None)

    async def reload_blocker(self) -> str | None:
        """Why the lvstore cannot be unloaded and loaded again (its base bdev is not an aio bdev), or None."""
        return await reload_blocker(self.storm, self.worker)

    async def recreate_esnap(self, bdev: EsnapBdev) -> bool:
        """Make a deleted external snapshot again under its UUID (exclusive only): the lvstore's degraded
        esnap clones of it get their bdevs (hotplug)."""
        made = await self.storm.make_esnap(bdev.name, bdev.size_bytes // MIB, self.worker.conn)
        if made is None or made.uuid != bdev.uuid:
            self.note(f"could not make {bdev.name} again under its UUID")
            return False
        bdev.state = "present"
        self.storm.checker.on_esnap_arrived(bdev.uuid)
        return True

    # -- a nested lvstore -----------------------------------------------------------------------------

    async def make_nested(self, lvol: str, name: str) -> NestedLvstore | None:
        """An lvstore on the lvol's bdev, judged by a model of its own (None, noted, if the target refused)."""
        op = await self.plain("bdev_lvol_create_lvstore", {"bdev_name": lvol, "lvs_name": name,
                                                           "cluster_sz": NESTED_CLUSTER})
        if not op.ok:
            self.note(f"bdev_lvol_create_lvstore on an lvol answered {op.outcome}")
            return None
        info = await self.plain("bdev_lvol_get_lvstores", {"lvs_name": name})
        if not info.ok or not info.result:
            self.note(f"the nested lvstore {name} is not listed: {info.outcome}")
            return None
        return NestedLvstore(self.storm, self.worker, LvstoreInfo.from_reply(info.result[0]), self.label)
