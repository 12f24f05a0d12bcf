"""Both RPC clients against the reference target (`spdk-sim`) as a separate process, the way runs use it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from harness.history import History
from harness.hosts.base import HostProcess
from harness.hosts.local import LocalHost
from harness.rpc.client import RpcConnection
from harness.rpc.connect import connect_unix_retrying
from harness.rpc.errors import RpcConnectionLost, RpcError
from harness.rpc.methods import Capabilities, RpcMethods, SyncRpcMethods
from harness.rpc.sync import SyncRpc

T = TypeVar("T")
HOST = LocalHost()
SIM = Path(sys.executable).parent / "spdk-sim"


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def start_sim(tmp: Path, *extra: str) -> tuple[HostProcess, str]:
    if not SIM.exists():
        pytest.skip(f"{SIM} not installed (pip install -e . installs the spdk-sim entry point)")
    sock = str(tmp / "sim.sock")
    proc = HOST.spawn([str(SIM), "-r", sock, *extra], log_path=str(tmp / "sim.log"))
    connect_unix_retrying(HOST, sock, 10.0).close()  # listening
    return proc, sock


def stop_sim(proc: HostProcess) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(5.0)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[str]:
    proc, sock = start_sim(tmp_path)
    yield sock
    stop_sim(proc)


def test_version_and_methods_from_both_clients(sim: str) -> None:
    with SyncRpc(HOST, sim, connect_timeout=10.0) as rpc:
        version = rpc.call("spdk_get_version")
        methods = rpc.methods()
    assert version["version"].startswith("SPDK v24.09") and version["fields"]["major"] == 24
    caps = Capabilities.from_methods(methods)
    assert caps.missing_required == [] and caps.is_longhorn_fork

    async def scenario() -> tuple[object, object]:
        conn = await RpcConnection.open(HOST, sim)
        try:
            return await asyncio.gather(conn.call("spdk_get_version"), conn.call("rpc_get_methods"))
        finally:
            await conn.close()

    async_version, async_methods = run(scenario())
    assert async_version == version and sorted(async_methods) == sorted(methods)  # type: ignore[arg-type]


def test_lvol_errors_come_back_as_errno_names(sim: str, tmp_path: Path) -> None:
    with SyncRpc(HOST, sim) as rpc:
        setup = SyncRpcMethods(rpc)
        setup.bdev_malloc_create(65536, 4096, name="Malloc0")
        setup.bdev_lvol_create_lvstore("Malloc0", "lvs0", cluster_sz=1 << 20)
    history = History(tmp_path / "history.jsonl")

    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, sim, history=history, worker=1)
        api = RpcMethods(conn)
        try:
            lvol = await api.bdev_lvol_create("lvs0", "vol", 8, thin_provision=True)
            snap = await api.bdev_lvol_snapshot(lvol, "snap")
            await asyncio.gather(api.bdev_lvol_clone(snap, "c1"), api.bdev_lvol_clone(snap, "c2"))
            expected = [
                (api.bdev_lvol_create("lvs0", "vol", 8), "EEXIST"),
                (api.bdev_lvol_delete("lvs0/nope"), "ENODEV"),
                (api.bdev_lvol_delete(snap), "EPERM"),  # a snapshot with two clones
                (api.bdev_lvol_clone(lvol, "c3"), "EINVAL"),  # clone of a non-snapshot
            ]
            outcomes = await asyncio.gather(*(call for call, _ in expected), return_exceptions=True)
            for outcome, (_, name) in zip(outcomes, expected, strict=True):
                assert isinstance(outcome, RpcError) and outcome.errno_name == name, outcome
            lvols = await api.bdev_lvol_get_lvols(lvs_name="lvs0")
            assert sorted(v["name"] for v in lvols) == ["c1", "c2", "snap", "vol"]
        finally:
            await conn.close()

    run(scenario())
    history.close()
    errors = [r["error"]["errno"] for r in History.read(tmp_path / "history.jsonl") if "error" in r]
    assert sorted(errors) == ["EEXIST", "EINVAL", "ENODEV", "EPERM"]


def test_pipelining_pays_off_on_a_polling_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With spdk_tgt's ~8 ms poller one call at a time crawls; pipelined calls share a poll."""
    proc, sock = start_sim(tmp_path, "--poll-interval-ms", "8")

    async def scenario() -> tuple[float, float]:
        conn = await RpcConnection.open(HOST, sock, connect_timeout=10.0)
        try:
            await conn.call("spdk_get_version")
            started = time.perf_counter()
            for _ in range(20):
                await conn.call("bdev_get_bdevs")
            sequential = time.perf_counter() - started
            started = time.perf_counter()
            results = await asyncio.gather(*(conn.call("bdev_get_bdevs") for _ in range(200)))
            pipelined = time.perf_counter() - started
            assert len(results) == 200 and conn.stray_replies == 0
            return sequential, pipelined
        finally:
            await conn.close()

    try:
        sequential, pipelined = run(scenario())
    finally:
        stop_sim(proc)
    with capsys.disabled():
        print(f"\nspdk-sim --poll-interval-ms 8: 20 sequential calls {sequential * 1000:.0f} ms "
              f"({20 / sequential:.0f}/s); 200 pipelined {pipelined * 1000:.0f} ms ({200 / pipelined:.0f}/s)")
    assert sequential >= 20 * 0.004  # the poller is there
    assert pipelined < sequential  # ten times the calls in less time


def test_killed_target_fails_pending_calls_within_100_ms(tmp_path: Path) -> None:
    proc, sock = start_sim(tmp_path, "--latency-ms", "3000")

    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, sock, connect_timeout=10.0)
        calls = [asyncio.ensure_future(conn.call("bdev_get_bdevs")) for _ in range(50)]
        await asyncio.sleep(0.3)
        assert conn.in_flight == 50
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - killed
        assert all(isinstance(o, RpcConnectionLost) for o in outcomes), outcomes[:2]
        assert elapsed < 0.1, f"{elapsed * 1000:.0f} ms"
        await conn.close()

    try:
        run(scenario())
    finally:
        stop_sim(proc)


def _raw_rate(sock_path: str, method: str, depth: int, calls: int) -> float:
    """A minimal raw-socket client: write `depth` requests at once, read their replies, repeat."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        sock.connect(sock_path)
        rid = 0
        started = time.perf_counter()
        for _ in range(calls // depth):
            batch = []
            for _ in range(depth):
                rid += 1
                batch.append(json.dumps({"jsonrpc": "2.0", "method": method, "id": rid}).encode())
            sock.sendall(b"".join(batch))
            buf, got = b"", 0
            while got < depth:
                chunk = sock.recv(1 << 16)
                assert chunk, "spdk-sim closed the connection"
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    json.loads(line)
                    got += 1
        return (calls // depth) * depth / (time.perf_counter() - started)


async def _conn_rate(sock_path: str, method: str, depth: int, calls: int, history: History | None) -> float:
    conn = await RpcConnection.open(HOST, sock_path, history=history)
    try:
        async def caller(n: int) -> None:
            for _ in range(n):
                await conn.call(method)

        started = time.perf_counter()
        await asyncio.gather(*(caller(calls // depth) for _ in range(depth)))
        return (calls // depth) * depth / (time.perf_counter() - started)
    finally:
        await conn.close()


def test_benchmark_against_spdk_sim(sim: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: RpcConnection (with and without history) vs a raw socket, same target."""
    lines = []
    for depth, calls in ((1, 1000), (32, 6400)):
        raw = max(_raw_rate(sim, "bdev_lvol_get_lvstores", depth, calls) for _ in range(2))
        bare = max(run(_conn_rate(sim, "bdev_lvol_get_lvstores", depth, calls, None)) for _ in range(2))
        with History(tmp_path / f"h{depth}.jsonl") as history:
            recorded = max(run(_conn_rate(sim, "bdev_lvol_get_lvstores", depth, calls, history))
                           for _ in range(2))
        assert min(raw, bare, recorded) > 0
        lines.append(f"depth {depth:2d}: raw socket {raw:7.0f}/s  RpcConnection {bare:7.0f}/s ({bare / raw:.2f})"
                     f"  with history {recorded:7.0f}/s ({recorded / raw:.2f})")
    with capsys.disabled():
        print("\nagainst spdk-sim (bdev_lvol_get_lvstores):\n  " + "\n  ".join(lines))
