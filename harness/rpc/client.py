"""`RpcConnection`: one pipelined asyncio JSON-RPC connection to the target, the storm's hot path.

SPDK polls its RPC socket on a timer (about every 8 ms), so one call at a time gets ~124 calls/s, while a
batch of pipelined requests is answered in one poll. So many calls are in flight on one connection, matched
by id. Writes issued in the same event-loop turn are coalesced into one `send` (after a read, every request the
woken callers send goes in one write), replies are split by an O(n) incremental parser right in
`data_received` (no reader task, no stream buffer copy), and deadlines are kept in one FIFO per timeout value
instead of one timer per call.

When the socket drops, every pending call fails in the same loop turn with `RpcConnectionLost`: that is how
the storm notices a dead target within milliseconds. A call is never retried here: the target may have
executed it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from harness.history import History
from harness.hosts.base import Host
from harness.rpc.connect import connect_unix_retrying_async
from harness.rpc.errors import RpcConnectionLost, RpcError, RpcTimeout
from harness.rpc.framing import (
    BIG_REPLY,
    FramingError,
    ReplyParser,
    UnreadResult,
    encode_json,
    encode_request_json,
    result_span,
)

RAW_RESULT_MIN = BIG_REPLY
"""Replies at least this big reach the history as the bytes that came (a listing of thousands of lvols is
MBs: encoding it again cost as much as decoding it)."""

# What a pending call's future resolves to besides a reply object: (marker, time.time() when it happened).
_TIMED_OUT = "timed out"
_LOST = "lost"


class RpcConnection(asyncio.Protocol):
    """A pipelined JSON-RPC connection; `open()` it, `call()` from many tasks at once, `close()` it.

    `worker`/`conn` only label the calls in the history. The connection is also its own asyncio Protocol.
    """

    def __init__(
        self,
        sock_path: str,
        *,
        history: History | None = None,
        worker: int = 0,
        conn: int = 0,
        host_name: str = "",
    ) -> None:
        self.sock_path = sock_path
        self.host_name = host_name
        self.worker = worker
        self.conn = conn
        self._history = history
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = ReplyParser(lazy_results=True)
        self._pending: dict[int, asyncio.Future[tuple[Any, float]]] = {}
        self._raw_replies: dict[int, bytes | memoryview] = {}
        """The bytes of big replies by id, for the history (see RAW_RESULT_MIN)."""
        self._next_id = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._corked = False
        self._batches = 0
        self._batch: str | None = None
        """The id of the cork()ed batch being filled (recorded with each of its calls), None when not corked."""
        # Deadlines: per timeout value a FIFO of (loop deadline, id, future); sends are in time order, so
        # each FIFO is sorted and one timer at its head serves all of it.
        self._deadlines: dict[float, deque[tuple[float, int, asyncio.Future[tuple[Any, float]]]]] = {}
        self._deadline_timers: dict[float, asyncio.TimerHandle] = {}
        self._lost_reason: str | None = None
        self._closing_reason: str | None = None
        self._closed = self._loop.create_future()
        self.stray_replies = 0
        """Replies whose id matches no pending call (late replies to timed-out calls, `id: null` errors)."""
        self.last_stray: Any = None

    # -- opening and closing ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: Host,
        sock_path: str,
        *,
        history: History | None = None,
        worker: int = 0,
        conn: int = 0,
        connect_timeout: float = 10.0,
    ) -> RpcConnection:
        """Connect through `host.connect_unix` (retried up to `connect_timeout` s; RpcConnectError after)."""
        sock = await connect_unix_retrying_async(host, sock_path, connect_timeout)
        self = cls(sock_path, history=history, worker=worker, conn=conn, host_name=host.name)
        try:
            await self._loop.create_connection(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        return self

    async def close(self) -> None:
        """Close the socket; calls still pending fail with RpcConnectionLost. Idempotent."""
        if self._transport is not None and self._lost_reason is None:
            self._closing_reason = "connection closed by the harness"
            self._flush_out()
            self._transport.close()
        if self._transport is not None:
            await asyncio.shield(self._closed)

    async def __aenter__(self) -> RpcConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._lost_reason is None and self._closing_reason is None

    @property
    def lost_reason(self) -> str | None:
        """Why the connection is gone (`the target closed the connection`, ...), None while it is open."""
        return self._lost_reason

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; returns why."""
        await asyncio.shield(self._closed)
        return self._lost_reason or "closed"

    # -- calling ----------------------------------------------------------------------------------------

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = 30.0,
        decode: bool = True,
    ) -> Any:
        """Send one request and wait for its reply; returns `result` (`decode`: see `exchange`).

        `params` goes on the wire as given (None: no `params` member). Raises RpcError (an error reply),
        RpcTimeout (no reply within `timeout` s of wall time; None waits forever; the request may still
        run), RpcConnectionLost (the socket closed first). Never retries.
        """
        result, error = await self.exchange(method, params, timeout=timeout, decode=decode)
        if error is None:
            return result
        try:
            raise error
        finally:
            # The traceback holds this frame: without this, error -> traceback -> frame -> error is a cycle
            # only the garbage collector frees.
            del error

    async def exchange(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = 30.0,
        decode: bool = True,
    ) -> tuple[Any, RpcError | None]:
        """`call`, with an error reply returned as `(None, RpcError)` instead of raised: the storm meets
        thousands a second (68% of its calls at depth 64), and a raised one costs a traceback, and frames kept
        alive in a reference cycle, each. No reply (RpcTimeout, RpcConnectionLost) still raises.

        `decode=False`: a big result (harness.rpc.framing.BIG_REPLY) comes back as an `UnreadResult`,
        validated but not decoded (a listing nobody reads costs ~10x less)."""
        if self._lost_reason is not None or self._closing_reason is not None or self._transport is None:
            raise RpcConnectionLost(method, None, self._lost_reason or self._closing_reason or "not connected")
        loop = self._loop
        self._next_id = rid = self._next_id + 1
        fut: asyncio.Future[tuple[Any, float]] = loop.create_future()
        self._pending[rid] = fut
        history = self._history
        seq = history.next_seq(self.worker) if history is not None else 0
        batch = self._batch
        params_json = None if params is None else encode_json(params)
        data = encode_request_json(method, params_json, rid)
        t_start = time.time()
        if self._flush_scheduled:
            self._out.append(data)
        elif len(self._pending) == 1:
            # Alone on the wire: send now (a coalescing turn would only add latency).
            self._transport.write(data)
        else:
            # Others are in flight: more requests may follow in this loop turn; send them together.
            self._out.append(data)
            self._flush_scheduled = True
            loop.call_soon(self._flush_out)
        if timeout is not None:
            deadline = loop.time() + timeout
            queue = self._deadlines.get(timeout)
            if queue is None:
                queue = self._deadlines[timeout] = deque()
            else:
                while queue and queue[0][2].done():  # answered calls leave from the front
                    queue.popleft()
            queue.append((deadline, rid, fut))
            if timeout not in self._deadline_timers:
                self._deadline_timers[timeout] = loop.call_at(deadline, self._expire, timeout)
        try:
            outcome, t_end = await fut
        except asyncio.CancelledError:
            self._raw_replies.pop(rid, None)
            # The request was sent: the target may run it. Keep that in the history.
            if self._pending.pop(rid, None) is not None and history is not None:
                history.record(self.worker, self.conn, method, params, t_start, time.time(), seq=seq,
                               error={"code": None, "message": "cancelled before the reply", "errno": None},
                               batch=batch)
            raise
        raw = self._raw_replies.pop(rid, None) if self._raw_replies else None
        if type(outcome) is dict:
            if "error" not in outcome:
                result = outcome.get("result")
                result_json = None if raw is None else result_span(raw)
                if type(result) is UnreadResult and (decode or (history is not None and result_json is None)):
                    result = result.value()  # asked for, or the history needs it (a reply of an odd shape)
                if history is not None:
                    history.record(self.worker, self.conn, method, params, t_start, t_end, result=result,
                                   seq=seq, params_json=params_json, batch=batch, result_json=result_json)
                return result, None
            err = outcome["error"]
            if isinstance(err, dict):
                exc: RpcError = RpcError(method, err.get("code"), str(err.get("message", "")))
            else:
                exc = RpcError(method, None, str(err))
        elif outcome is _TIMED_OUT:
            exc = RpcTimeout(method, None, f"no reply within {timeout:g} s on {self._where()}")
        else:
            exc = RpcConnectionLost(method, None, f"{self._lost_reason or 'connection lost'} ({self._where()})")
        if history is not None:
            history.record(self.worker, self.conn, method, params, t_start, t_end, error=exc, seq=seq,
                           params_json=params_json, batch=batch)
        if type(exc) is RpcError:
            return None, exc
        try:
            raise exc
        finally:
            del exc  # the traceback holds this frame (see `call`)

    def _where(self) -> str:
        return f"{self.host_name}:{self.sock_path}" if self.host_name else self.sock_path

    def cork(self) -> None:
        """Hold every request sent from now until `uncork()` and write them with one send: a pipelined batch
        the target reads, and serves, back to back (nothing from another connection in between).

        Each call of the batch is recorded with the batch's id (`"<worker>.<conn>-<n>"`): a replay must send
        them in one write again, or the race they were written together for is lost."""
        if not self._corked:
            self._batches += 1
            self._batch = f"{self.worker}.{self.conn}-{self._batches}"
        self._corked = True
        self._flush_scheduled = True

    def uncork(self) -> None:
        self._corked = False
        self._batch = None
        self._flush_out()

    def _flush_out(self) -> None:
        """Write every request queued in this loop turn with one send."""
        if self._corked:
            return
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        if self._transport is not None and self._lost_reason is None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _expire(self, timeout: float) -> None:
        """Fail the calls of this timeout group whose deadline passed; re-arm for the next one."""
        queue = self._deadlines[timeout]
        now = self._loop.time()
        t_end = time.time()
        pending = self._pending
        while queue:
            deadline, rid, fut = queue[0]
            if fut.done():
                queue.popleft()
                continue
            if deadline > now:
                break
            queue.popleft()
            pending.pop(rid, None)
            fut.set_result((_TIMED_OUT, t_end))
        if queue:
            self._deadline_timers[timeout] = self._loop.call_at(queue[0][0], self._expire, timeout)
        else:
            del self._deadline_timers[timeout]
            del self._deadlines[timeout]

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._parser.feed(data)
        except FramingError as exc:
            self._closing_reason = f"unusable reply stream: {exc}"
            assert self._transport is not None
            self._transport.abort()
            return
        if not messages:
            return
        t_end = time.time()
        pending = self._pending
        raws = self._parser.raw
        for i, msg in enumerate(messages):
            try:
                rid = msg.get("id") if type(msg) is dict else None
                fut = pending.pop(rid, None)  # type: ignore[arg-type]
            except TypeError:  # an unhashable id: not one of ours
                fut = None
            if fut is None:
                self.stray_replies += 1
                self.last_stray = msg
            elif not fut.done():
                if raws is not None and len(raws[i]) >= RAW_RESULT_MIN and self._history is not None:
                    self._raw_replies[rid] = raws[i]  # type: ignore[index]
                fut.set_result((msg, t_end))
        if not self._flush_scheduled and self._transport is not None:
            # The callers just woken send their next requests in this loop turn: gather them into one write.
            # Sent one by one, the first went out alone (nothing else pending) and woke the target for a
            # single request, which on a 2-core machine preempted the harness in the middle of its turn.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def eof_received(self) -> bool | None:
        return None  # Close our side too: SPDK never half-closes.

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closing_reason is not None:
            reason = self._closing_reason
        elif exc is not None:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
        else:
            reason = "the target closed the connection"
        self._lost_reason = reason
        t_end = time.time()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result((_LOST, t_end))
        for handle in self._deadline_timers.values():
            handle.cancel()
        self._deadline_timers.clear()
        self._deadlines.clear()
        self._out = []
        if not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        state = "open" if self.is_open else (self._lost_reason or "closing")
        return f"<RpcConnection {self._where()} worker={self.worker} conn={self.conn} {state}>"
