"""Send a `ReplayPlan` to a target: step by step, each step's calls in flight together, UUIDs remapped.

Each step's calls go out in one event-loop turn (pipelined when they share a connection, overlapping across
connections) and all are answered before the next step, so the target sees the recorded overlaps and nothing
that depended on an earlier answer is sent before it. The calls of a one-write batch (`Operation.batch`) go
out corked, in one socket write, as the storm wrote them: the target reads them in one poll. A lost
connection or a crash signalled by the watchdog ends the replay at once: the calls after a crash say nothing.
Calls are never retried.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from harness.history import History
from harness.hosts.base import Host
from harness.minimize.operations import BatchKey, ConnKey, Operation
from harness.minimize.plan import ReplayPlan
from harness.minimize.remap import Remap
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.sync_loop import run_sync

SERIAL_CONN: ConnKey = (0, 0)


@dataclass
class Answer:
    """What the fresh target said to one replayed call (params as sent, after remapping)."""

    op: Operation
    params: Any
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def differs(self) -> bool:
        """The answer's kind differs from the recording (an error where it succeeded, or the reverse)."""
        return (self.error is None) != (self.op.error is None) or (
            self.error is not None and self.op.error is not None
            and self.error.get("errno") != self.op.error.get("errno"))


@dataclass
class ReplayOutcome:
    answers: list[Answer] = field(default_factory=list)
    steps_done: int = 0
    lost: str | None = None
    """Why the connection went away (the target died or closed us), None if it stayed up."""
    timed_out: bool = False
    crashed: bool = False
    """The watchdog signalled a crash and the replay stopped."""
    remap: Remap = field(default_factory=Remap)
    seconds: float = 0.0

    @property
    def differing(self) -> list[Answer]:
        return [a for a in self.answers if a.differs()]


async def _call(conn: RpcConnection, op: Operation, params: Any, timeout: float) -> Answer:
    try:
        result = await conn.call(op.method, params, timeout=timeout)
        return Answer(op, params, result=result)
    except RpcError as exc:
        return Answer(op, params, error=exc.as_record() | {"lost": isinstance(exc, RpcConnectionLost),
                                                           "timeout": isinstance(exc, RpcTimeout)})


def _send_step(step: tuple[Operation, ...], conns: dict[ConnKey, RpcConnection], single_connection: bool,
               remap: Remap, timeout: float) -> list[asyncio.Future[Answer]]:
    """Start every call of a step now; a batch's calls are written with one send (cork, then uncork once each
    has queued its request: a task's first step runs before a callback scheduled after it)."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future[Answer]] = []
    last_of_batch = {op.batch_key: n for n, op in enumerate(step) if op.batch_key is not None}
    corked: set[BatchKey] = set()
    for n, op in enumerate(step):
        conn = conns[SERIAL_CONN if single_connection else op.conn_key]
        key = op.batch_key
        if key is not None and key not in corked:
            corked.add(key)
            conn.cork()
        tasks.append(asyncio.ensure_future(_call(conn, op, remap.apply(op.params), timeout)))
        if key is not None and last_of_batch[key] == n:
            loop.call_soon(conn.uncork)
    return tasks


async def replay_plan(
    host: Host,
    sock_path: str,
    plan: ReplayPlan,
    *,
    history: History | None = None,
    op_timeout_s: float = 10.0,
    crashed: threading.Event | None = None,
    connect_timeout_s: float = 5.0,
) -> ReplayOutcome:
    """Replay `plan` on `sock_path`; returns every answer, stopping at a lost connection, a timeout or a crash."""
    t0 = time.monotonic()
    out = ReplayOutcome()
    conns: dict[ConnKey, RpcConnection] = {}
    keys = [SERIAL_CONN] if plan.single_connection else sorted({op.conn_key for op in plan.ops})
    try:
        for worker, conn in keys:
            conns[(worker, conn)] = await RpcConnection.open(host, sock_path, history=history, worker=worker,
                                                             conn=conn, connect_timeout=connect_timeout_s)
        for step in plan.steps:
            if crashed is not None and crashed.is_set():
                out.crashed = True
                break
            answers = await asyncio.gather(*_send_step(step, conns, plan.single_connection, out.remap,
                                                       op_timeout_s))
            out.answers.extend(answers)
            out.steps_done += 1
            for answer in answers:
                if answer.ok and answer.op.ok:
                    out.remap.learn(answer.op.result, answer.result)
            if any(a.error and a.error.get("lost") for a in answers):
                out.lost = next(c.lost_reason for c in conns.values() if c.lost_reason) if any(
                    c.lost_reason for c in conns.values()) else "connection lost"
                break
            if any(a.error and a.error.get("timeout") for a in answers):
                out.timed_out = True
                break
    finally:
        for c in conns.values():
            await c.close()
        out.seconds = time.monotonic() - t0
        if crashed is not None and crashed.is_set():
            out.crashed = True
    return out


def replay_plan_sync(host: Host, sock_path: str, plan: ReplayPlan, **kwargs: Any) -> ReplayOutcome:
    """`replay_plan` from synchronous code (its own event loop)."""
    return run_sync(replay_plan(host, sock_path, plan, **kwargs))
