"""The yardstick: a minimal raw-socket JSON-RPC client, and a replay of a storm's own calls through it.

`RawConnection` is what anyone would write to push a target as hard as possible: `json.dumps` a request,
write it, split replies on the newline SPDK ends each one with, match them by id. No history, no model,
no timeouts, no watchdog. It writes as the storm's `RpcConnection` does (alone on the wire: at once; after a
read, the requests its callers send in that loop turn: in one write), so the two differ in the harness's
work, not in how they use the socket. `replay_history` sends exactly the calls a storm sent (same methods,
same parameters, same connections, same depth: `depth` lanes per connection, as the storm has), so storm and
raw client do the same work on the target; UUIDs the target hands out are mapped from the storm's run to the
replay's as replies arrive, and a call that names a UUID not yet answered waits for it in its lane, as the
storm had waited for it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RawConnection(asyncio.Protocol):
    """One pipelined connection: `call()` from many tasks at once; replies matched by id."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.buf = b""
        self.closed = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, sock_path: str) -> RawConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(cls, sock_path)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            if line:
                msg = json.loads(line)
                fut = self.pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("target closed the connection"))
        self.pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, method: str, params: Any = None) -> asyncio.Future[dict[str, Any]]:
        """Write one request now; the future resolves to the whole reply object."""
        assert self.transport is not None
        self.next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        if params is not None:
            req["params"] = params
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        data = json.dumps(req).encode()
        if not self._flush_scheduled and len(self.pending) == 1:
            self.transport.write(data)  # alone on the wire: now
        else:
            self._out.append(data)  # with the others sent in this loop turn (as the storm's RpcConnection)
            self._schedule_flush()
        return fut

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        return await self.send(method, params)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            await self.closed


@dataclass
class Call:
    """One recorded call of a storm worker, and what the storm got back."""

    conn: int
    method: str
    params: Any
    ok: bool
    result: Any = None


@dataclass
class ReplayPlan:
    """A storm's calls per connection in issue order, and which call produced which UUID."""

    by_conn: dict[int, list[Call]]
    producer: dict[str, Call] = field(default_factory=dict)
    storm_calls: int = 0
    storm_wall_s: float = 0.0

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.by_conn.values())

    @property
    def storm_calls_per_s(self) -> float:
        return self.storm_calls / self.storm_wall_s if self.storm_wall_s > 0 else 0.0

    @classmethod
    def from_history(cls, path: str | Path) -> ReplayPlan:
        """Storm workers' calls (worker >= 0) from history.jsonl; setup and quiesce calls are not replayed."""
        rows: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("worker", -1) >= 0:
                    rows.append(rec)
        rows.sort(key=lambda r: (r["worker"], r["seq"]))
        by_conn: dict[int, list[Call]] = defaultdict(list)
        producer: dict[str, Call] = {}
        for r in rows:
            call = Call(r["conn"], r["method"], r.get("params"), "error" not in r, r.get("result"))
            by_conn[call.conn].append(call)
            if call.ok and isinstance(call.result, str) and len(call.result) == 36:
                producer[call.result] = call
        wall = (max(r["t_end"] for r in rows) - min(r["t_start"] for r in rows)) if rows else 0.0
        return cls(dict(by_conn), producer, len(rows), wall)


@dataclass
class ReplayResult:
    calls: int
    wall_s: float
    agree: int
    errors: int = 0
    storm_errors: int = 0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def agreement(self) -> float:
        """Fraction of calls whose outcome (ok or error) matched the storm's: the work was the same."""
        return self.agree / self.calls if self.calls else 0.0


class _UuidMap:
    """Storm UUID -> replay UUID, filled as the replay's creations are answered."""

    def __init__(self, plan: ReplayPlan) -> None:
        self.plan = plan
        self.new: dict[str, str] = {}
        self.answered: dict[int, asyncio.Event] = {}

    def event(self, call: Call) -> asyncio.Event:
        ev = self.answered.get(id(call))
        if ev is None:
            ev = self.answered[id(call)] = asyncio.Event()
        return ev

    async def params(self, params: Any, wait_s: float) -> Any:
        if not isinstance(params, dict):
            return params
        out = dict(params)
        for key, value in params.items():
            if type(value) is str and len(value) == 36:
                prod = self.plan.producer.get(value)
                if prod is not None and value not in self.new:
                    ev = self.event(prod)
                    if not ev.is_set():
                        try:
                            await asyncio.wait_for(ev.wait(), wait_s)
                        except TimeoutError:
                            pass
                out[key] = self.new.get(value, value)
        return out

    def answered_by(self, call: Call, reply: dict[str, Any]) -> None:
        if call.ok and isinstance(call.result, str) and isinstance(reply.get("result"), str):
            self.new[call.result] = reply["result"]
        if call.ok and isinstance(call.result, str):
            self.event(call).set()


async def replay_history(plan: ReplayPlan, sock_path: str, depth: int, *, wait_s: float = 2.0) -> ReplayResult:
    """Send the plan's calls, `depth` in flight per connection, one connection per storm connection."""
    uuids = _UuidMap(plan)
    conns = {c: await RawConnection.open(sock_path) for c in plan.by_conn}
    agree = errors = 0

    async def lane(conn: RawConnection, calls: Iterator[Call]) -> None:
        # `depth` lanes per connection take the calls in the storm's order, as the storm's lanes did: a call
        # that waits for a UUID holds up its own lane only, not the whole connection.
        nonlocal agree, errors
        for call in calls:
            params = await uuids.params(call.params, wait_s)
            try:
                reply = await conn.call(call.method, params)
            except ConnectionError:
                return
            agree += ("error" not in reply) == call.ok
            errors += "error" in reply
            uuids.answered_by(call, reply)

    async def one_conn(conn_id: int) -> None:
        calls = iter(plan.by_conn[conn_id])
        await asyncio.gather(*(lane(conns[conn_id], calls) for _ in range(depth)))

    t0 = time.monotonic()
    await asyncio.gather(*(one_conn(c) for c in conns))
    wall = time.monotonic() - t0
    for conn in conns.values():
        await conn.close()
    storm_errors = sum(1 for calls in plan.by_conn.values() for c in calls if not c.ok)
    return ReplayResult(plan.calls, wall, agree, errors, storm_errors)


def replay_one_at_a_time(plan: ReplayPlan, sock_path: str, seconds: float) -> tuple[int, float, int]:
    """The same calls through SPDK's own `JSONRPCClient`, one call at a time per connection (a thread each).

    Returns (calls, wall seconds, connections). Stops after `seconds`; UUIDs are mapped without waiting.
    """
    from spdk.rpc.client import JSONRPCClient, JSONRPCException

    new: dict[str, str] = {}
    counts: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def run(calls: list[Call]) -> None:
        client = JSONRPCClient(sock_path)
        n = 0
        for call in calls:
            if time.monotonic() >= deadline:
                break
            params = call.params
            if isinstance(params, dict):
                params = {k: new.get(v, v) if type(v) is str else v for k, v in params.items()}
            try:
                result = client.call(call.method, params)
                if call.ok and isinstance(call.result, str) and isinstance(result, str):
                    new[call.result] = result
            except JSONRPCException:
                pass
            n += 1
        client.close()
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=run, args=(calls,), name=f"bench-peer-{c}", daemon=True)
               for c, calls in plan.by_conn.items()]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return sum(counts), time.monotonic() - t0, len(threads)
