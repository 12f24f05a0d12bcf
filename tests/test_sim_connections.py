"""The reference target bounds what one connection may hold (real sockets, a real `spdk-sim` process): a client
that writes and never reads is closed once its unread replies pass SPDK_JSONRPC_SEND_BUF_SIZE_MAX, with
SPDK's message for that limit in the log, and everyone else is served on."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from harness.sim.server import SEND_BUF_SIZE_MAX
from tests.test_sim_server import SimProcess, read_replies

MIB = 1024 * 1024
LIMIT_LINE = "jsonrpc_server.c: 141:jsonrpc_server_write_cb: *ERROR*: Send buf exceeded maximum size (33554432)"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _write_and_never_read(sim: SimProcess, total: int) -> tuple[int, float]:
    """Send echo requests of 16 KiB until the target closes us or `total` bytes went; (bytes sent, peak RSS)."""
    request = json.dumps({"jsonrpc": "2.0", "method": "echo", "id": 1, "params": ["x" * 16_000]}).encode() * 4
    peak = _rss_mib(sim.proc.pid)
    sent = 0
    with sim.connect(timeout=10) as s:
        try:
            while sent < total:
                s.sendall(request)
                sent += len(request)
                if sent % (4 * MIB) < len(request):
                    peak = max(peak, _rss_mib(sim.proc.pid))
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent, max(peak, _rss_mib(sim.proc.pid))


@pytest.mark.parametrize("latency", [[], ["--latency-ms", "60000"]], ids=["unread", "waiting-for-latency"])
def test_a_client_that_never_reads_is_closed_at_the_send_limit(tmp_path: Path, latency: list[str]) -> None:
    sim = SimProcess(tmp_path, *latency).wait_ready()
    try:
        before = _rss_mib(sim.proc.pid)
        other = sim.connect()
        sent, peak = _write_and_never_read(sim, total=6 * SEND_BUF_SIZE_MAX)
        assert sent < 3 * SEND_BUF_SIZE_MAX, f"still open after {sent / MIB:.0f} MiB of requests it never read"
        assert peak - before < 2.5 * SEND_BUF_SIZE_MAX / MIB, f"the target grew {peak - before:.0f} MiB"
        deadline = time.monotonic() + 5
        while LIMIT_LINE not in sim.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert LIMIT_LINE in sim.log()
        if not latency:  # a connection that was open all along, and a new one, are served as before
            other.sendall(b'{"jsonrpc": "2.0", "method": "echo", "id": 7, "params": [7]}')
            assert read_replies(other, 1)[0]["result"] == [7]
            assert sim.call("spdk_get_version")["result"]["version"].startswith("SPDK v24.09")  # type: ignore[index]
        other.close()
        assert sim.proc.poll() is None
    finally:
        sim.kill()


def test_a_client_that_reads_slowly_is_not_closed(tmp_path: Path) -> None:
    """The limit is on what is left unread, not on what passes through: 64 MiB of replies read late are fine."""
    sim = SimProcess(tmp_path).wait_ready()
    try:
        with sim.connect(timeout=10) as s:
            request = json.dumps({"jsonrpc": "2.0", "method": "echo", "id": 1, "params": ["y" * 30_000]}).encode()
            for _ in range(4):  # 4 x 16 MiB of replies, each batch read only after it was all sent
                for _ in range(16 * MIB // len(request)):
                    s.sendall(request)
                    time.sleep(0)
                got = 0
                while got < 16 * MIB // len(request):
                    chunk = s.recv(1 << 20)
                    assert chunk, "the target closed a connection that reads"
                    got += chunk.count(b"\n")
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)  # still open
        assert LIMIT_LINE not in sim.log()
    finally:
        sim.kill()


def test_64_idle_connections_hold_every_slot_as_in_spdk_tgt(tmp_path: Path) -> None:
    """SPDK_JSONRPC_MAX_CONNS: spdk_tgt never closes an idle connection, so 64 of them leave a 65th client
    connected and unanswered; the reference target does the same (the harness bounds its own connections)."""
    sim = SimProcess(tmp_path).wait_ready()
    idle = [sim.connect() for _ in range(64)]
    try:
        late = socket.socket(socket.AF_UNIX)
        late.settimeout(1.0)
        late.connect(sim.sock_path)  # the listen backlog takes it
        late.sendall(b'{"jsonrpc": "2.0", "method": "echo", "id": 1, "params": [1]}')
        with pytest.raises(TimeoutError):
            late.recv(1)
        idle.pop().close()
        assert read_replies(late, 1)[0]["result"] == [1]
        late.close()
    finally:
        for s in idle:
            s.close()
        sim.kill()
