"""`RpcConnection` against a fake SPDK server: pipelining, out-of-order replies, deadlines, dropped
connections, history records, connecting through a tunnelled socket, and a throughput comparison."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness.history import History
from harness.hosts.local import LocalHost
from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcConnectError, RpcConnectionLost, RpcError, RpcTimeout
from harness.rpc.framing import UnreadResult
from harness.rpc.methods import RpcMethods
from tests.test_rpc_fake_server import FakeSpdkProcess

T = TypeVar("T")
HOST = LocalHost()


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSpdkProcess]:
    server = FakeSpdkProcess(tmp_path_factory.mktemp("fake") / "spdk.sock")
    yield server
    server.stop()


class TunnelHost(LocalHost):
    """Like SshHost: `connect_unix` hands back one end of a socketpair pumped to the real socket by threads."""

    def connect_unix(self, path: str, timeout: float = 5.0) -> socket.socket:
        upstream = super().connect_unix(path, timeout)
        ours, theirs = socket.socketpair()

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(1 << 16):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(theirs, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, theirs), daemon=True).start()
        return ours


def test_200_pipelined_calls_in_flight_on_one_connection_all_matched(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            # The server holds every reply until all 200 requests arrived, then answers newest first:
            # this only completes if all 200 were in flight at once, and each reply finds its own caller.
            results = await asyncio.gather(*(conn.call("reorder", {"n": 200, "tag": i}) for i in range(200)))
            assert results == list(range(200))
            assert conn.in_flight == 0 and conn.stray_replies == 0
            echoes = await asyncio.gather(*(conn.call("echo", {"i": i, "s": "é" * i}) for i in range(200)))
            assert [e["i"] for e in echoes] == list(range(200))
            assert all(e["s"] == "é" * e["i"] for e in echoes)
        finally:
            await conn.close()

    run(scenario())


def test_out_of_order_replies_reach_their_callers(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            slow = asyncio.ensure_future(conn.call("sleep", {"s": 0.3}))
            held = [asyncio.ensure_future(conn.call("reorder", {"n": 5, "tag": f"t{i}"})) for i in range(5)]
            fast = await conn.call("echo", {"x": 1})
            assert fast == {"x": 1} and not slow.done()
            assert await asyncio.gather(*held) == [f"t{i}" for i in range(5)]
            assert await slow is True
        finally:
            await conn.close()

    run(scenario())


def test_deadline_fails_one_call_while_others_still_succeed(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            started = time.monotonic()
            late = asyncio.ensure_future(conn.call("sleep", {"s": 0.6}, timeout=0.25))
            others = await asyncio.gather(*(conn.call("echo", {"i": i}) for i in range(50)))
            assert [o["i"] for o in others] == list(range(50))
            with pytest.raises(RpcTimeout, match=r"sleep: no reply within 0.25 s") as info:
                await late
            elapsed = time.monotonic() - started
            assert 0.25 <= elapsed < 0.55, elapsed
            assert info.value.errno_name == "ETIMEDOUT"
            # The reply that comes after the deadline is dropped, and the connection keeps working.
            await asyncio.sleep(0.5)
            assert conn.stray_replies == 1
            assert await conn.call("echo", {"after": True}) == {"after": True}
            assert conn.in_flight == 0
        finally:
            await conn.close()

    run(scenario())


def test_different_timeouts_expire_in_deadline_order(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            order: list[float] = []

            async def timed(timeout: float) -> None:
                with pytest.raises(RpcTimeout):
                    await conn.call("sleep", {"s": 2}, timeout=timeout)
                order.append(timeout)

            await asyncio.gather(*(timed(t) for t in (0.4, 0.1, 0.3, 0.2, 0.1)))
            assert order == [0.1, 0.1, 0.2, 0.3, 0.4]
            assert await conn.call("sleep", {"s": 0.2}, timeout=None) is True  # no deadline at all
            assert conn.in_flight == 0
        finally:
            await conn.close()

    run(scenario())


def test_dead_target_fails_every_pending_call_within_100_ms(tmp_path: Path) -> None:
    server = FakeSpdkProcess(tmp_path / "dying.sock")

    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, server.sock_path)
        calls = [asyncio.ensure_future(conn.call("hang"))]
        calls += [asyncio.ensure_future(conn.call("bdev_lvol_delete", {"name": f"l{i}"})) for i in range(99)]
        await asyncio.sleep(0.2)
        assert conn.in_flight == 100 and not any(c.done() for c in calls)
        killed = time.monotonic()
        server.proc.send_signal(signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - killed
        assert all(isinstance(o, RpcConnectionLost) for o in outcomes), outcomes[:3]
        assert elapsed < 0.1, f"pending calls took {elapsed * 1000:.0f} ms to fail"
        assert "the target closed the connection" in str(outcomes[1])
        assert not conn.is_open and conn.lost_reason == "the target closed the connection"
        with pytest.raises(RpcConnectionLost):
            await conn.call("echo")
        await conn.close()

    try:
        run(scenario())
    finally:
        server.stop()


def test_connection_closed_mid_stream_fails_pending_and_keeps_answered(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        answered = await conn.call("echo", {"a": 1})
        waiting = asyncio.ensure_future(conn.call("sleep", {"s": 5}))
        with pytest.raises(RpcConnectionLost):
            await conn.call("close")
        with pytest.raises(RpcConnectionLost):
            await waiting
        assert answered == {"a": 1}
        await conn.close()

    run(scenario())


def test_stray_replies_are_counted_and_garbage_closes_the_connection(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        # The server's `raw` call writes these bytes instead of a reply to it: two replies that match no
        # call (SPDK answers a bad envelope with `id: null`), then the reply the `raw` call waits for.
        stray = ('{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid request"}}\n'
                 '{"jsonrpc":"2.0","id":[1],"result":true}\n'
                 '{"jsonrpc":"2.0","id":1,"result":"mine"}\n')
        assert await conn.call("raw", {"text": stray}) == "mine"
        assert conn.stray_replies == 2 and conn.last_stray["id"] == [1]
        pending = asyncio.ensure_future(conn.call("sleep", {"s": 5}))
        with pytest.raises(RpcConnectionLost, match="unusable reply stream"):
            await conn.call("raw", {"text": "not json\n"})
        with pytest.raises(RpcConnectionLost, match="unusable reply stream"):
            await pending
        assert not conn.is_open
        await conn.close()

    run(scenario())


def test_error_replies_raise_rpc_error_with_errno(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            with pytest.raises(RpcError) as info:
                await conn.call("error", {"code": -32603, "message": "Device or resource busy"})
            assert (info.value.code, info.value.errno_name, info.value.method) == (-32603, "EBUSY", "error")
            with pytest.raises(RpcError) as info:
                await conn.call("bdev_no_such_method")
            assert info.value.code == -32601 and info.value.errno_name is None
            assert type(info.value) is RpcError
        finally:
            await conn.close()

    run(scenario())


def test_every_call_is_recorded_with_issue_order_seq(fake: FakeSpdkProcess, tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")

    async def scenario() -> None:
        conn = await RpcConnection.open(HOST, fake.sock_path, history=history, worker=3, conn=1)
        try:
            # Replies come back newest first; seq must still follow the order the calls were issued.
            await asyncio.gather(*(conn.call("reorder", {"n": 20, "tag": i}) for i in range(20)))
            with pytest.raises(RpcError):
                await conn.call("error", {"code": -19, "message": "No such device"})
            with pytest.raises(RpcTimeout):
                await conn.call("sleep", {"s": 1}, timeout=0.05)
            cancelled = asyncio.ensure_future(conn.call("sleep", {"s": 1}))
            await asyncio.sleep(0.05)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        finally:
            await conn.close()

    run(scenario())
    history.close()
    records = list(History.read(tmp_path / "history.jsonl"))
    assert len(records) == 23
    reorder = [r for r in records if r["method"] == "reorder"]
    assert [r["seq"] for r in reorder] != sorted(r["seq"] for r in reorder)  # written in completion order
    assert all(r["seq"] == r["params"]["tag"] + 1 and r["result"] == r["params"]["tag"] for r in reorder)
    assert all(r["worker"] == 3 and r["conn"] == 1 and r["v"] == 1 for r in records)
    assert all(r["t_start"] <= r["t_end"] for r in records)
    error, timeout, cancelled = records[20:]
    assert error["error"] == {"code": -19, "message": "No such device", "errno": "ENODEV"}
    assert "result" not in error
    assert timeout["error"]["errno"] == "ETIMEDOUT" and timeout["seq"] == 22
    assert cancelled["error"]["message"] == "cancelled before the reply" and cancelled["seq"] == 23
    assert history.errors_by_errno == {"ENODEV": 1, "ETIMEDOUT": 1, "code None": 1}


def test_connect_failure_is_one_line_naming_the_socket(tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody.sock")
    started = time.monotonic()
    with pytest.raises(RpcConnectError) as info:
        run(RpcConnection.open(HOST, missing, connect_timeout=0.4))
    assert time.monotonic() - started < 2.0
    text = str(info.value)
    assert missing in text and "No such file or directory" in text and "\n" not in text


def test_connect_retries_until_the_target_listens(tmp_path: Path) -> None:
    sock_path = tmp_path / "late.sock"
    servers: list[FakeSpdkProcess] = []
    starter = threading.Timer(0.4, lambda: servers.append(FakeSpdkProcess(sock_path)))
    starter.start()

    async def scenario() -> Any:
        conn = await RpcConnection.open(HOST, str(sock_path), connect_timeout=10.0)
        try:
            return await conn.call("spdk_get_version")
        finally:
            await conn.close()

    try:
        assert run(scenario())["version"].startswith("SPDK v24.09")
    finally:
        starter.join()
        for server in servers:
            server.stop()


def test_tunnelled_socket_like_ssh_and_typed_methods(fake: FakeSpdkProcess) -> None:
    async def scenario() -> None:
        conn = await RpcConnection.open(TunnelHost(), fake.sock_path)
        api = RpcMethods(conn)
        try:
            sent = await api.bdev_lvol_create("lvs0", "vol", 8, thin_provision=True)
            assert sent == {"method": "bdev_lvol_create", "params": {
                "lvs_name": "lvs0", "lvol_name": "vol", "size_in_mib": 8, "thin_provision": True}}
            sent = await api.bdev_lvol_snapshot("vol", "snap")
            assert sent["params"] == {"lvol_name": "vol", "snapshot_name": "snap"}
            sent = await api.bdev_lvol_get_lvols()
            assert sent["params"] == "<absent>"
            many = await asyncio.gather(*(api.bdev_lvol_delete(f"l{i}") for i in range(100)))
            assert [m["params"]["name"] for m in many] == [f"l{i}" for i in range(100)]
        finally:
            await conn.close()

    run(scenario())


# -- throughput: printed, not asserted (the machine is shared) ---------------------------------------------
# Wall-clock rates swing with the load other processes put on the machine; the client's CPU time per call
# (the server is another process) is the steadier number: it bounds what one client process can drive.

def _raw_socket_rate(sock_path: str, depth: int, calls: int) -> tuple[float, float]:
    """The floor to compare against: a blocking socket sending `depth` requests, then reading their replies.

    Returns (calls/s, client CPU us per call).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        sock.connect(sock_path)
        rid = 0
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls // depth):
            batch = []
            for _ in range(depth):
                rid += 1
                batch.append(json.dumps({"jsonrpc": "2.0", "method": "echo", "id": rid}).encode())
            sock.sendall(b"".join(batch))
            buf, got = b"", 0
            while got < depth:
                buf += sock.recv(1 << 16)
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    json.loads(line)
                    got += 1
        n = (calls // depth) * depth
        return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6


async def _connection_rate(sock_path: str, depth: int, calls: int, history: History | None) -> tuple[float, float]:
    conn = await RpcConnection.open(HOST, sock_path, history=history)
    try:
        async def caller(n: int) -> None:
            for _ in range(n):
                await conn.call("echo")

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(caller(calls // depth) for _ in range(depth)))
        n = (calls // depth) * depth
        return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e6
    finally:
        await conn.close()


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return max(r for r, _ in runs), min(c for _, c in runs)


def test_benchmark_connection_against_a_raw_socket_loop(fake: FakeSpdkProcess, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    calls = 4000
    lines = []
    for depth in (1, 4, 32):
        raw, raw_cpu = _best([_raw_socket_rate(fake.sock_path, depth, calls) for _ in range(2)])
        bare, bare_cpu = _best([run(_connection_rate(fake.sock_path, depth, calls, None)) for _ in range(2)])
        with History(tmp_path / f"bench{depth}.jsonl") as history:
            rec, rec_cpu = _best([run(_connection_rate(fake.sock_path, depth, calls, history)) for _ in range(2)])
        assert min(raw, bare, rec) > 0
        lines.append(f"depth {depth:2d}: raw socket {raw:6.0f}/s {raw_cpu:4.1f} us CPU | RpcConnection "
                     f"{bare:6.0f}/s ({bare / raw:.2f}) {bare_cpu:4.1f} us | with history {rec:6.0f}/s "
                     f"({rec / raw:.2f}) {rec_cpu:4.1f} us")
    with capsys.disabled():
        print("\nRpcConnection vs a raw socket loop (fake server; calls/s, ratio, client CPU per call):\n  "
              + "\n  ".join(lines))


def test_a_big_result_is_recorded_as_the_reply_carried_it(fake: FakeSpdkProcess, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Big results reach the history as the reply's own bytes (not encoded again); the line reads back the same."""
    from harness import history as history_mod

    encoded: list[object] = []
    real = history_mod._encode
    monkeypatch.setattr(history_mod, "_encode", lambda v: encoded.append(v) or real(v))
    history = History(tmp_path / "history.jsonl")

    async def scenario() -> list[object]:
        conn = await RpcConnection.open(HOST, fake.sock_path, history=history)
        try:
            await conn.call("spdk_get_version")
            return list(await asyncio.gather(conn.call("echo", {"x": "a" * 100_000}), conn.call("echo", {"x": "b"})))
        finally:
            await conn.close()

    big, small = run(scenario())
    history.close()
    records = [r for r in History.read(tmp_path / "history.jsonl") if r["method"] == "echo"]
    assert sorted(len(r["result"]["x"]) for r in records) == [1, 100_000]
    assert [r["result"] for r in records] in ([big, small], [small, big])
    assert small in encoded and big not in encoded  # the small one was encoded, the big one taken as it came


def test_error_replies_come_back_from_exchange_and_leave_no_reference_cycles(fake: FakeSpdkProcess) -> None:
    # A raised error used to keep itself alive through its traceback's frame (error -> traceback -> frame ->
    # error): at depth 64 the storm meets ~10,000 error replies a second, and the garbage collector's passes
    # over them cost it a fifth of its CPU.
    async def scenario() -> int:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        try:
            gc.collect()
            gc.disable()
            try:
                for i in range(200):
                    result, error = await conn.exchange("error", {"code": -16, "message": "Device or resource busy"})
                    assert result is None and error is not None and error.errno_name == "EBUSY"
                    assert type(error) is RpcError
                    with pytest.raises(RpcError):
                        await conn.call("error", {"code": -19, "message": f"No such device {i}"})
                    result, error = await conn.exchange("echo", {"i": i})
                    assert result == {"i": i} and error is None
                return gc.collect()
            finally:
                gc.enable()
        finally:
            await conn.close()

    assert run(scenario()) < 50  # 400 error replies: none of them left in a cycle


def test_requests_sent_by_callers_one_read_woke_go_out_in_one_write(fake: FakeSpdkProcess) -> None:
    # A batch of replies wakes its callers, and each sends its next request in the same loop turn. The first of
    # them used to go out alone (nothing else pending), waking the target for one request: on a 2-core machine
    # the target then preempted the harness mid-turn, and the depth-64 storm ran at 0.7 of a raw client.
    async def scenario() -> list[bytes]:
        conn = await RpcConnection.open(HOST, fake.sock_path)
        writes: list[bytes] = []
        transport = conn._transport
        assert transport is not None
        write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]
        try:
            async def lane(i: int) -> None:
                await conn.call("reorder", {"n": 8, "tag": i})  # the 8 replies come back in one write
                assert await conn.call("echo", {"i": i}) == {"i": i}

            await asyncio.gather(*(lane(i) for i in range(8)))
        finally:
            await conn.close()
        return writes

    writes = run(scenario())
    echo_writes = [w for w in writes if b'"echo"' in w]
    assert len(echo_writes) == 1 and echo_writes[0].count(b'"echo"') == 8, [w.count(b"\n") for w in writes]


def test_a_big_result_nobody_reads_stays_unread_and_still_reaches_the_history(fake: FakeSpdkProcess,
                                                                              tmp_path: Path) -> None:
    history = History(tmp_path / "history.jsonl")

    async def scenario() -> tuple[Any, Any, Any]:
        conn = await RpcConnection.open(HOST, fake.sock_path, history=history)
        try:
            await conn.call("spdk_get_version")  # a stream's first reply, if cut across reads, is decoded whole
            unread, _ = await conn.exchange("big", {"n": 100_000}, decode=False)
            read, _ = await conn.exchange("big", {"n": 100_000})
            small, _ = await conn.exchange("big", {"n": 10}, decode=False)
            return unread, read, small
        finally:
            await conn.close()

    unread, read, small = run(scenario())
    history.close()
    assert isinstance(unread, UnreadResult) and unread.value() == read == "é" * 100_000
    assert small == "é" * 10  # below BIG_REPLY: decoded whatever was asked
    assert [r["result"] for r in History.read(tmp_path / "history.jsonl")][1:] == [read, read, small]
