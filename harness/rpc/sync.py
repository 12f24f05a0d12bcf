"""`SyncRpc`: one blocking call at a time, for setup, teardown, checks and fixtures (not the storm).

It speaks the same wire format as `spdk.rpc.client.JSONRPCClient` (compact requests, `params` left out when
empty, None-valued params dropped like rpc.py does) but frames replies itself over `host.connect_unix`, so it
works over SSH too: JSONRPCClient only connects to a local address, times out on CPU time
(`time.process_time`) instead of wall time, re-scans its whole buffer per 4 KiB read and decodes each read
as UTF-8 on its own (a character split across reads breaks it). Errors are the same `RpcError` types as the
asyncio client's. Mutating calls are never retried; `call_read` retries only the idempotent reads.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from harness.history import SETUP_WORKER, History
from harness.hosts.base import Host
from harness.rpc.connect import connect_unix_retrying
from harness.rpc.errors import RpcAbandoned, RpcConnectError, RpcConnectionLost, RpcError, RpcTimeout
from harness.rpc.framing import FramingError, ReplyParser, encode_request
from harness.rpc_rules.table import READ_METHODS

_TRANSIENT = (RpcTimeout, RpcConnectionLost, RpcConnectError)
ABORT_POLL_S = 0.25
"""How often a call with an `abort` event looks at it while it waits for the reply."""


class SyncRpc:
    """A blocking JSON-RPC client on one socket; thread-safe by a lock (calls are serialized)."""

    def __init__(
        self,
        host: Host,
        sock_path: str,
        *,
        history: History | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        worker: int = SETUP_WORKER,
        conn: int = 0,
        abort: threading.Event | None = None,
    ) -> None:
        """`abort`: an event (the watchdog's `crashed`) that ends any wait at once with RpcAbandoned, so a
        teardown never spends its timeouts and retries on a target already known dead or hung."""
        self.host = host
        self.abort = abort
        self.sock_path = sock_path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.worker = worker
        self.conn = conn
        self._history = history
        self._lock = threading.Lock()
        self._next_id = 0
        self._sock: socket.socket | None = None
        self._parser = ReplyParser()
        self._connect()

    # -- connection -------------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._sock = connect_unix_retrying(self.host, self.sock_path, self.connect_timeout)
        self._parser = ReplyParser()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close the socket. Idempotent; a later call connects again."""
        with self._lock:
            self._drop()

    def __enter__(self) -> SyncRpc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncRpc {self.host.name}:{self.sock_path} {'open' if self._sock else 'closed'}>"

    # -- calls ------------------------------------------------------------------------------------------

    def call(self, method: str, /, **params: Any) -> Any:
        """Send `method` with `params` (None values dropped, like rpc.py) and return its `result`.

        Raises RpcError for an error reply, RpcTimeout after `timeout` s of wall time, RpcConnectionLost when
        the socket closes first. Never retried: use `call_read` for reads that may be retried.
        """
        return self.call_params(method, {k: v for k, v in params.items() if v is not None} or None)

    def call_params(self, method: str, params: dict[str, Any] | None, *, timeout: float | None = None) -> Any:
        """`call` with params as a dict sent exactly as given (None is no `params` member)."""
        with self._lock:
            return self._call_locked(method, params, self.timeout if timeout is None else timeout)

    def call_read(self, method: str, /, *, retries: int = 5, **params: Any) -> Any:
        """`call` for an idempotent read (a name in READ_METHODS), retried on timeout and lost connections.

        Refuses any other method: re-sending a mutating RPC whose outcome is unknown corrupts the run.
        """
        if method not in READ_METHODS:
            raise ValueError(
                f"call_read: {method} is not an idempotent read (READ_METHODS); use call(), which never retries"
            )
        for attempt in Retrying(
            stop=stop_after_attempt(max(1, retries)) | stop_after_delay(max(self.timeout, 1.0) * retries),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        ):
            with attempt:
                return self.call(method, **params)
        raise AssertionError("unreachable")  # pragma: no cover

    def methods(self) -> list[str]:
        """The target's method names (`rpc_get_methods`)."""
        return list(self.call_read("rpc_get_methods") or [])

    def _call_locked(self, method: str, params: dict[str, Any] | None, timeout: float) -> Any:
        if self.abort is not None and self.abort.is_set():
            raise RpcAbandoned(method, message="not sent: the watchdog saw the target die or hang")
        if self._sock is None:
            self._connect()  # Nothing was sent yet, so connecting again is safe even for a mutating call.
        sock = self._sock
        assert sock is not None
        self._next_id = rid = self._next_id + 1
        history = self._history
        seq = history.next_seq(self.worker) if history is not None else 0
        t_start = time.time()
        try:
            reply, t_end = self._exchange(sock, method, encode_request(method, params, rid), rid, timeout)
        except RpcError as exc:
            if history is not None:
                history.record(self.worker, self.conn, method, params, t_start, time.time(), error=exc, seq=seq)
            raise
        if "error" in reply:
            err = reply["error"]
            refused = (RpcError(method, err.get("code"), str(err.get("message", ""))) if isinstance(err, dict)
                       else RpcError(method, None, str(err)))
            if history is not None:
                history.record(self.worker, self.conn, method, params, t_start, t_end, error=refused, seq=seq)
            raise refused
        result = reply.get("result")
        if history is not None:
            history.record(self.worker, self.conn, method, params, t_start, t_end, result=result, seq=seq)
        return result

    def _exchange(self, sock: socket.socket, method: str, data: bytes, rid: int,
                  timeout: float) -> tuple[dict[str, Any], float]:
        deadline = time.monotonic() + timeout
        where = f"{self.host.name}:{self.sock_path}"
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(data)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if self.abort is not None and self.abort.is_set():
                    self._drop()
                    raise RpcAbandoned(method)
                sock.settimeout(remaining if self.abort is None else min(remaining, ABORT_POLL_S))
                try:
                    chunk = sock.recv(1 << 16)
                except TimeoutError:
                    if time.monotonic() < deadline:
                        continue  # a slice of the wait: look at `abort` again
                    raise
                if not chunk:
                    self._drop()
                    raise RpcConnectionLost(method, None, f"the target closed the connection ({where})")
                t_end = time.time()
                for msg in self._parser.feed(chunk):
                    # Replies to earlier calls that timed out arrive late: skip them.
                    if isinstance(msg, dict) and msg.get("id") == rid:
                        return msg, t_end
        except TimeoutError:
            # The reply may still come; a fresh socket keeps it from being taken for the next call's.
            self._drop()
            raise RpcTimeout(method, None, f"no reply within {timeout:g} s on {where}") from None
        except FramingError as exc:
            self._drop()
            raise RpcConnectionLost(method, None, f"unusable reply stream from {where}: {exc}") from exc
        except OSError as exc:
            self._drop()
            raise RpcConnectionLost(method, None, f"connection lost: {exc} ({where})") from exc
