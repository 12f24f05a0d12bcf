"""What the storm's episodes and lvstore cycles may ask of the engine, without importing it: the `Worker` they
run on, `Stopping` (raised inside a lane when the storm stops; never escapes the engine) and `StormControl`,
the engine's face towards them."""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from harness.rpc.client import RpcConnection
from harness.storm.checker import Checker, Finding, LvstoreInfo
from harness.storm.config import StormConfig
from harness.storm.esnaps import EsnapBdev, EsnapBdevs
from harness.storm.operations import Op
from harness.storm.scheduler import Scheduler, WorkerStream
from harness.storm.space import SpaceLedger
from harness.storm.view import TreeView


class Stopping(Exception):
    """Raised inside a lane when the storm is stopping; never escapes the engine."""


@dataclass
class Worker:
    """One worker: its step stream, its connection and (for episodes) a peer connection."""

    index: int
    stream: WorkerStream
    conn: RpcConnection
    peer: RpcConnection | None = None


class StormControl(Protocol):
    """The engine as episodes and lvstore cycles see it."""

    cfg: StormConfig
    view: TreeView
    sched: Scheduler
    space: SpaceLedger
    capabilities: set[str]
    lvs_name: str
    copy_dst: str | None
    copy_dst_mib: int
    esnaps: EsnapBdevs
    stopping: bool
    episode_notes: Counter[tuple[str, str]]

    @property
    def lvs(self) -> LvstoreInfo:
        """The lvstore as the target reported it (known once the storm is set up)."""
        ...

    @property
    def checker(self) -> Checker:
        """The storm's checker (exists once the storm is set up)."""
        ...

    async def execute(self, op: Op, conn: RpcConnection, *, bypass_gate: bool = False) -> Op:
        """Send op, wait for its reply, judge it; raises Stopping when the storm stops."""
        ...

    async def plain(self, op: Op, conn: RpcConnection, *, timeout: float | None = None) -> None:
        """Send an op the checker does not model (lvstore lifetime, external snapshots, a nested lvstore),
        still counted and timed."""
        ...

    async def make_esnap(self, name: str, mib: int, conn: RpcConnection) -> EsnapBdev | None:
        """A malloc bdev to be an external snapshot, with the run's stable UUID for its name."""
        ...

    def exclusive(self) -> AbstractAsyncContextManager[None]:
        """Pause every other lane until nothing is in flight."""
        ...

    async def resync(self, initial: bool = False) -> list[Finding]:
        """Re-read the target's tree; compare it with the model (or adopt it)."""
        ...

    def stop(self, reason: str) -> None: ...
