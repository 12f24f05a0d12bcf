"""The reference target's JSON-RPC server, served the way `spdk_tgt` serves it (lib/jsonrpc, lib/rpc).

One reactor (the process's main thread, named `reactor_0` so tid == pid as in the recordings) polls the
Unix socket, reads every connection, runs each request in arrival order and writes the replies: a storm
sees the same serialisation, pipelining and wire quirks as against the real target.

SPDK's quirks kept on purpose (see /work/shared/spdk/transcripts/*06_malformed_requests.json), each in its
module: where a JSON value ends and what closes a connection (`framing`), the envelope checks (`envelope`),
how replies are written (`json_writer`); here: more than 1,024 JSON values in a request, or a request that
does not fit the 32 KiB receive buffer, gets no reply and the connection is closed; at most 64 connections
are served, more wait in the listen backlog until one closes (an idle one holds its slot for as long as it
stays open, as in spdk_tgt: the harness keeps its own connections under 64, `StormConfig.max_workers`).
The log's layouts are `target_log`'s.

Stricter than spdk_tgt on one point: a connection may hold at most SPDK_JSONRPC_SEND_BUF_SIZE_MAX (32 MiB, the
most one spdk_tgt reply may be) of replies its client has not read, counting replies still waiting for their
latency or background job; beyond that it is closed and SPDK's message for that limit logged. spdk_tgt keeps
reading such a client and queues its replies without bound (jsonrpc_server_conn_send leaves a reply that
would block for the next poll): a client that wrote and never read took this target from 20 to 836 MB in 30 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import random
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from harness.sim import death
from harness.sim.envelope import Request, parse_envelope
from harness.sim.framing import INCOMPLETE, INVALID, scan_value
from harness.sim.json_writer import error_reply, notification_reply, result_reply
from harness.sim.nvmf import NvmfMethods
from harness.sim.nvmf_tcp import NvmfTcp
from harness.sim.protocol import DeferredReply, RpcFault, SimulatedCrash
from harness.sim.target_log import cpumask_cores, spdk_log_line, spdk_log_text, startup_lines

__all__ = [  # what `spdk-sim` (harness/sim/__main__.py) takes from here
    "ListenError",
    "RpcServer",
    "check_socket_path",
    "cpumask_cores",
    "spdk_log_line",
    "startup_lines",
]

RECV_BUF_SIZE = 32 * 1024  # SPDK_JSONRPC_RECV_BUF_SIZE
MAX_CONNS = 64  # SPDK_JSONRPC_MAX_CONNS
MAX_VALUES = 1024  # SPDK_JSONRPC_MAX_VALUES: more JSON values in one request is a parse error
SEND_BUF_SIZE_MAX = 32 * 1024 * 1024  # SPDK_JSONRPC_SEND_BUF_SIZE_MAX: here, all of a connection's unread replies
LISTEN_BACKLOG = 512
SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
REACTOR_NAME = "reactor_0"

ERROR_INVALID_PARAMS = -32602

# How often a reactor round passes when only background jobs are running (a deferred reply is waiting).
DEFERRED_ROUND_S = 0.001

# spdk_kill_instance's table (lib/event/app_rpc.c): names or numbers.
KILL_SIGNALS = {
    "SIGINT": signal.SIGINT,
    "SIGTERM": signal.SIGTERM,
    "SIGQUIT": signal.SIGQUIT,
    "SIGHUP": signal.SIGHUP,
    "SIGKILL": signal.SIGKILL,
    "SIGUSR1": signal.SIGUSR1,
}


class Dispatch(Protocol):
    """What the server needs from `harness.sim.methods.Dispatcher`."""

    def handle(self, method: str, params: object) -> object: ...

    def drain_log_lines(self) -> list[str]: ...


@dataclass(eq=False)
class Connection:
    """One accepted client, as SPDK's spdk_jsonrpc_server_conn keeps it."""

    sock: socket.socket
    number: int
    recv_buf: bytearray = field(default_factory=bytearray)
    send_buf: bytearray = field(default_factory=bytearray)
    pending: int = 0  # requests executed whose reply is not yet due
    held: int = 0  # bytes of those replies (or, behind a background job, of their requests)
    peer_closed: bool = False  # EOF seen (or receive buffer full): read no more, close once all is sent
    dead: bool = False  # socket closed; late replies are dropped
    events: int = 0


class ListenError(Exception):
    """The RPC socket could not be set up; `lines` are the target-log lines SPDK would print."""

    def __init__(self, lines: list[str], exit_code: int = 1) -> None:
        super().__init__(lines[0] if lines else "listen failed")
        self.lines = lines
        self.exit_code = exit_code


def check_socket_path(path: str) -> str | None:
    """A one-line error if `path` cannot be an AF_UNIX socket path, else None."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        return (
            f"spdk-sim: -r/--rpc-socket {path}: {size} bytes, AF_UNIX socket paths are at most "
            f"{SUN_PATH_MAX} bytes: use a shorter path"
        )
    if not path:
        return "spdk-sim: -r/--rpc-socket: empty path: give a socket path such as /var/tmp/spdk.sock"
    return None


def _socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class RpcServer:
    """SPDK's RPC server on one reactor: accept, read, run in arrival order, reply; die when told to."""

    def __init__(
        self,
        sock_path: str,
        dispatcher: Dispatch,
        *,
        latency_ms: float = 0.0,
        latency_jitter_ms: float = 0.0,
        poll_interval_ms: float = 0.0,
        seed: int | None = None,
        out: TextIO | None = None,
        core: int = 0,
    ) -> None:
        self.sock_path = sock_path
        self.lock_path = sock_path + ".lock"
        self.dispatcher = dispatcher
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self.jitter_s = max(0.0, latency_jitter_ms) / 1000.0
        self.poll_interval_s = max(0.0, poll_interval_ms) / 1000.0
        self.random = random.Random(seed)
        self.out = out if out is not None else sys.stdout
        self.core = core
        self.selector = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.listening = False
        self.lock_fd = -1
        self.conns: dict[int, Connection] = {}
        self.timers: list[tuple[float, int, Connection, bytes]] = []
        self.timer_seq = itertools.count()
        self.conn_numbers = itertools.count(1)
        self.stopping = False
        self.polled = False
        self.deferred: list[tuple[DeferredReply, Connection, Request, int]] = []
        """Replies waiting for a background job, in the order their requests ran."""
        """A request of this poll (one pass over the ready connections) already reached the dispatcher."""
        self.wake_r, self.wake_w = socket.socketpair()
        self.nvmf: NvmfTcp | None = None

    # -- the log ------------------------------------------------------------------------------------------
    def log(self, text: str) -> None:
        """One line to the target log (stdout), flushed: a crash right after must not lose it."""
        self.out.write(spdk_log_line(text) + "\n")
        self.out.flush()

    def _drain_log(self) -> None:
        drain: Callable[[], list[str]] | None = getattr(self.dispatcher, "drain_log_lines", None)
        if drain is not None:
            for line in drain():
                self.log(line)

    # -- set-up and tear-down -----------------------------------------------------------------------------
    def listen(self) -> None:
        """Take `PATH.lock`, remove a stale socket file, bind and listen (as spdk_rpc_listen does)."""
        in_use = [
            spdk_log_text("rpc.c", 181, "spdk_rpc_listen", "ERROR",
                          f"RPC Unix domain socket path {self.sock_path} in use. Specify another."),
            spdk_log_text("rpc.c", 46, "spdk_rpc_initialize", "ERROR",
                          f"Unable to start RPC service at {self.sock_path}"),
        ]
        try:
            self.lock_fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ListenError([spdk_log_text("rpc.c", 174, "spdk_rpc_listen", "ERROR",
                                             f"Cannot open lock file {self.lock_path}: {exc.strerror}"),
                               in_use[1]]) from exc
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.lock_fd)
            self.lock_fd = -1
            raise ListenError(in_use) from exc
        # SPDK trusts the lock alone; a live socket without it (another kind of server) is not ours to take.
        if os.path.exists(self.sock_path) and _socket_is_live(self.sock_path):
            self._release_lock(unlink=False)
            raise ListenError(in_use)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.sock_path)
            listener.listen(LISTEN_BACKLOG)
        except OSError as exc:
            listener.close()
            self._release_lock(unlink=True)
            raise ListenError([spdk_log_text("jsonrpc_server_tcp.c", 67, "spdk_jsonrpc_server_listen", "ERROR",
                                             f"could not bind JSON-RPC server: {exc.strerror}"),
                               in_use[1]]) from exc
        listener.setblocking(False)
        self.listener = listener
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self._listen_on()
        attach: Callable[[NvmfTcp], None] | None = getattr(self.dispatcher, "attach_reactor", None)
        if attach is not None and isinstance(self.dispatcher, NvmfMethods):
            self.nvmf = NvmfTcp(self.dispatcher, self.selector, self.log)
            attach(self.nvmf)

    def _release_lock(self, *, unlink: bool) -> None:
        if self.lock_fd >= 0:
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)
            os.close(self.lock_fd)
            self.lock_fd = -1

    def _listen_on(self) -> None:
        if self.listener is not None and not self.listening and len(self.conns) < MAX_CONNS:
            self.selector.register(self.listener, selectors.EVENT_READ, None)
            self.listening = True

    def _listen_off(self) -> None:
        if self.listener is not None and self.listening:
            self.selector.unregister(self.listener)
            self.listening = False

    def request_stop(self) -> None:
        """Ask the reactor to shut down cleanly (signal handlers and spdk_kill_instance use this)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    def _install_signal_handlers(self) -> None:
        def on_signal(_signum: int, _frame: object) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def shutdown(self) -> None:
        """Send what is queued (bounded), close every connection, remove the socket file and the lock."""
        deadline = time.monotonic() + 1.0
        for conn in list(self.conns.values()):
            if conn.send_buf and not conn.dead:
                with contextlib.suppress(OSError):
                    conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    conn.sock.sendall(conn.send_buf)
            self._close(conn)
        if self.listener is not None:
            self._listen_off()
            self.listener.close()
            self.listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
        self._release_lock(unlink=True)
        if self.nvmf is not None:
            self.nvmf.close_all()
        self.selector.close()

    # -- the loop -----------------------------------------------------------------------------------------
    def serve(self) -> int:
        """Run the reactor until a clean shutdown; returns the exit code (0)."""
        self._install_signal_handlers()
        with contextlib.suppress(OSError):
            death.set_thread_name(REACTOR_NAME)
        self.log(spdk_log_text("reactor.c", 990, "reactor_run", "NOTICE", f"Reactor started on core {self.core}"))
        next_tick = time.monotonic()
        while not self.stopping:
            if self.poll_interval_s > 0:
                # Like SPDK's RPC poller: every connection is looked at once per period.
                next_tick += self.poll_interval_s
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
                events = self.selector.select(0)
            else:
                events = self.selector.select(self._timeout())
            self.polled = False
            for key, mask in events:
                if key.fileobj is self.wake_r:
                    with contextlib.suppress(OSError):
                        self.wake_r.recv(4096)
                elif key.fileobj is self.listener:
                    self._accept()
                elif not isinstance(key.data, Connection):
                    key.data.on_ready(mask)  # the NVMe/TCP transport's sockets (harness.sim.nvmf_tcp)
                else:
                    conn: Connection = key.data
                    if mask & selectors.EVENT_WRITE and not conn.dead:
                        self._send(conn)
                    if mask & selectors.EVENT_READ and not conn.dead:
                        self._receive(conn)
                if self.stopping:
                    break
            self._run_due_timers()
            if self.deferred:
                self._complete_deferred()
        self.shutdown()
        return 0

    def _complete_deferred(self) -> None:
        """One reactor round has passed: jobs advance (here, if no request started a poll this round) and the
        replies whose jobs are done go out."""
        if not self.polled:
            poll_idle: Callable[[], None] | None = getattr(self.dispatcher, "poll_idle", None)
            if poll_idle is not None:
                poll_idle()
        waiting: list[tuple[DeferredReply, Connection, Request, int]] = []
        for deferred, conn, request, size in self.deferred:
            if conn.dead:
                continue
            if not deferred.ready():
                waiting.append((deferred, conn, request, size))
                continue
            try:
                result = deferred.result()
            except RpcFault as fault:
                reply = error_reply(request.id_json, fault.code, fault.message)
            else:
                reply = notification_reply(result) if request.notification else result_reply(request.id_json, result)
            conn.pending -= 1
            conn.held -= size
            self._complete_later(conn, reply)
            self._close_if_finished(conn)
        self.deferred = waiting
        self._drain_log()

    def _timeout(self) -> float | None:
        # Jobs behind a deferred reply advance once per round even without requests: a reactor never sleeps.
        idle = DEFERRED_ROUND_S if self.deferred else None
        if not self.timers:
            return idle
        due = max(0.0, self.timers[0][0] - time.monotonic())
        return due if idle is None else min(due, idle)

    def _accept(self) -> None:
        assert self.listener is not None
        while len(self.conns) < MAX_CONNS:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            sock.setblocking(False)
            conn = Connection(sock=sock, number=next(self.conn_numbers))
            self.conns[sock.fileno()] = conn
            self._set_interest(conn)
        if len(self.conns) >= MAX_CONNS:
            self._listen_off()

    def _set_interest(self, conn: Connection) -> None:
        if conn.dead:
            return
        want = (0 if conn.peer_closed else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.send_buf else 0)
        if want == conn.events:
            return
        if conn.events == 0:
            self.selector.register(conn.sock, want, conn)
        elif want == 0:
            self.selector.unregister(conn.sock)
        else:
            self.selector.modify(conn.sock, want, conn)
        conn.events = want

    def _close(self, conn: Connection) -> None:
        """SPDK's jsonrpc_server_conn_close: queued replies are dropped, the socket is closed."""
        if conn.dead:
            return
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        self.conns.pop(conn.sock.fileno(), None)
        conn.dead = True
        conn.send_buf.clear()
        conn.sock.close()
        self._listen_on()

    def _close_if_finished(self, conn: Connection) -> None:
        if conn.peer_closed and conn.pending == 0 and not conn.send_buf:
            self._close(conn)

    def _receive(self, conn: Connection) -> None:
        room = RECV_BUF_SIZE - len(conn.recv_buf)
        if room <= 0:
            data = b""  # SPDK's recv() into a full buffer returns 0: taken as the peer closing
        else:
            try:
                data = conn.sock.recv(room)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
        if not data:
            conn.peer_closed = True
            self._set_interest(conn)
            self._close_if_finished(conn)
            return
        conn.recv_buf += data
        offset = 0
        while not conn.dead:
            status, start, end, values = scan_value(conn.recv_buf, offset)
            if status == INCOMPLETE:
                break
            if status == INVALID or values > MAX_VALUES:
                self._close(conn)  # parse error: no resync point in a JSON stream; SPDK closes
                return
            self._execute(conn, bytes(conn.recv_buf[start:end]))
            offset = end
            if self.stopping:
                break
        if not conn.dead:
            del conn.recv_buf[:offset]
            if len(conn.recv_buf) >= RECV_BUF_SIZE:
                conn.peer_closed = True
            self._set_interest(conn)
            self._close_if_finished(conn)

    def _send(self, conn: Connection) -> None:
        if not conn.send_buf or conn.dead:
            return
        try:
            sent = conn.sock.send(conn.send_buf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        del conn.send_buf[:sent]
        self._set_interest(conn)
        self._close_if_finished(conn)

    def _queue_reply(self, conn: Connection, reply: bytes) -> None:
        """Queue a reply; it goes out on the next poll (so a parse error later in the same read drops it,
        as SPDK's connection close frees its send queue)."""
        if conn.dead or not reply:
            return
        conn.send_buf += reply
        if not self._within_send_limit(conn):
            return
        self._set_interest(conn)

    def _within_send_limit(self, conn: Connection) -> bool:
        """False (and the connection closed) once its client has left more than SEND_BUF_SIZE_MAX unread."""
        if len(conn.send_buf) + conn.held <= SEND_BUF_SIZE_MAX:
            return True
        self.log(spdk_log_text("jsonrpc_server.c", 141, "jsonrpc_server_write_cb", "ERROR",
                               f"Send buf exceeded maximum size ({SEND_BUF_SIZE_MAX})"))
        self._close(conn)
        return False

    def _complete_later(self, conn: Connection, reply: bytes) -> None:
        delay = self.latency_s + (self.random.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        if delay <= 0:
            self._queue_reply(conn, reply)
            return
        conn.pending += 1
        conn.held += len(reply)
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.timer_seq), conn, reply))
        self._within_send_limit(conn)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, conn, reply = heapq.heappop(self.timers)
            conn.pending -= 1
            conn.held -= len(reply)
            self._queue_reply(conn, reply)
            if not conn.dead:
                self._close_if_finished(conn)

    # -- one request --------------------------------------------------------------------------------------
    def _execute(self, conn: Connection, raw: bytes) -> None:
        try:
            text = raw.decode("utf-8")
            parsed = parse_envelope(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            self._close(conn)  # not JSON after all (bad UTF-8, NaN, ...): a parse error
            return
        if isinstance(parsed, bytes):
            self._queue_reply(conn, parsed)
            return
        if parsed.method == "spdk_kill_instance":
            self._kill_instance(conn, parsed)
            return
        if not self.polled:
            # The first request of a poll: the background jobs' I/O since the last poll completes first.
            self.polled = True
            start_poll: Callable[[], None] | None = getattr(self.dispatcher, "start_poll", None)
            if start_poll is not None:
                start_poll()
        try:
            result = self.dispatcher.handle(parsed.method, parsed.params)
        except RpcFault as fault:
            reply = error_reply(parsed.id_json, fault.code, fault.message)
        except SimulatedCrash as crash:
            self._drain_log()
            death.die(crash, self.log)
        except Exception as exc:  # a bug in the model, not a target behaviour: say so loudly, keep serving
            for line in traceback.format_exception(exc):
                for part in line.rstrip("\n").splitlines():
                    self.log(f"spdk-sim: internal error in {parsed.method}: {part}")
            reply = error_reply(parsed.id_json, -32603, f"spdk-sim internal error: {type(exc).__name__}: {exc}")
        else:
            if isinstance(result, DeferredReply):
                conn.pending += 1
                conn.held += len(raw)
                self.deferred.append((result, conn, parsed, len(raw)))
                self._drain_log()
                self._within_send_limit(conn)
                return
            reply = notification_reply(result) if parsed.notification else result_reply(parsed.id_json, result)
        self._drain_log()
        self._complete_later(conn, reply)

    def _kill_instance(self, conn: Connection, request: Request) -> None:
        """spdk_kill_instance: signal ourselves, then answer true (a SIGKILL leaves no time to answer)."""
        params = request.params
        sig: signal.Signals | None = None
        if isinstance(params, dict) and params.keys() == {"sig_name"} and isinstance(params["sig_name"], str):
            name = params["sig_name"]
            sig = KILL_SIGNALS.get(name)
            if sig is None:
                with contextlib.suppress(ValueError):
                    number = int(name, 10)
                    sig = next((s for s in KILL_SIGNALS.values() if s.value == number), None)
        if sig is None:
            self._queue_reply(conn, error_reply(request.id_json, ERROR_INVALID_PARAMS, "Invalid parameters"))
            return
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.request_stop()  # what SPDK's handler does: start the app's shutdown
        else:
            death.default_disposition(sig)
            os.kill(os.getpid(), sig)
        ok = notification_reply(True) if request.notification else result_reply(request.id_json, True)
        self._queue_reply(conn, ok)
