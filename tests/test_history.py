"""`History`: the history.jsonl format, the bounded in-memory tail, timed flushing, threads, replay reading."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.history import HISTORY_VERSION, SETUP_WORKER, History
from harness.rpc.errors import RpcError, RpcTimeout


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_lines_have_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "run" / "history.jsonl"
    with History(path) as history:
        seq = history.next_seq(0)
        history.record(0, 2, "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 8},
                       100.5, 100.75, result="c5d4571a-f3ae-4db9-91ba-75d0beb52374", seq=seq)
        history.record(0, 2, "bdev_lvol_delete", {"name": "a"}, 101.0, 101.25,
                       error=RpcError("bdev_lvol_delete", -32603, "Device or resource busy"))
        history.record(SETUP_WORKER, 0, "spdk_get_version", None, 99.0, 99.5, result={"version": "x"})
        history.record(1, 0, "bdev_lvol_snapshot", {"lvol_name": "a", "snapshot_name": "s"}, 102.0, 132.0,
                       error=RpcTimeout("bdev_lvol_snapshot", None, "no reply within 30 s"))
        history.record(1, 0, "bdev_lvol_get_xattr", {"name": "a", "xattr_name": "x"}, 103.0, 103.1,
                       error={"code": -32603, "message": "spdk_json_decode_object failed", "errno": None})
    lines = path.read_text().splitlines()
    assert len(lines) == 5
    first, busy, setup, timeout, decode = (json.loads(line) for line in lines)
    assert first == {"v": 1, "worker": 0, "conn": 2, "seq": 1, "method": "bdev_lvol_create",
                     "params": {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 8},
                     "t_start": 100.5, "t_end": 100.75, "result": "c5d4571a-f3ae-4db9-91ba-75d0beb52374"}
    assert busy["seq"] == 2 and "result" not in busy
    assert busy["error"] == {"code": -32603, "message": "Device or resource busy", "errno": "EBUSY"}
    assert setup["worker"] == -1 and setup["seq"] == 1 and setup["params"] is None
    assert timeout["error"] == {"code": None, "message": "no reply within 30 s", "errno": "ETIMEDOUT"}
    assert timeout["seq"] == 1  # seq counts per worker
    assert decode["error"]["errno"] is None
    assert history.summary() == {
        "total": 5,
        "ops_by_method": {"bdev_lvol_create": 1, "bdev_lvol_delete": 1, "spdk_get_version": 1,
                          "bdev_lvol_snapshot": 1, "bdev_lvol_get_xattr": 1},
        "errors_by_errno": {"EBUSY": 1, "ETIMEDOUT": 1, "code -32603": 1},
        "write_error": None,
    }


def test_unencodable_params_are_recorded_not_raised(tmp_path: Path) -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop
    with History(tmp_path / "h.jsonl") as history:
        history.record(0, 0, "odd", {"raw": b"\xff", "set": {3}}, 1.0, 2.0, result=True)
        history.record(0, 0, "circular", loop, 1.0, 2.0)
    odd, circular = history.tail()
    assert odd["params"] == {"raw": "\ufffd", "set": [3]} and odd["result"] is True
    assert circular["params"] == "{'self': {...}}"


def test_tail_and_per_worker_tail_are_bounded(tmp_path: Path) -> None:
    with History(tmp_path / "h.jsonl", tail_len=50, per_worker_tail_len=5) as history:
        for i in range(300):
            history.record(i % 3, 0, "bdev_lvol_resize", {"name": "a", "size_in_mib": i}, float(i), float(i))
        tail = history.tail()
        assert len(tail) == 50
        assert [r["params"]["size_in_mib"] for r in tail] == list(range(250, 300))
        assert [r["params"]["size_in_mib"] for r in history.tail(3)] == [297, 298, 299]
        assert history.tail(0) == []
        per_worker = history.per_worker_tail(4)
        assert sorted(per_worker) == [0, 1, 2]
        assert [r["params"]["size_in_mib"] for r in per_worker[1]] == [286, 289, 292, 295, 298][-4:]
        assert all(r["seq"] == 96 + k for k, r in enumerate(per_worker[0][-4:], start=1))
        assert len(history.per_worker_tail(100)[2]) == 5
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 300


def test_200k_records_keep_memory_flat_and_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    history = History(path, tail_len=1000, per_worker_tail_len=100)
    params = {"lvs_name": "lvs0", "lvol_name": "volume-with-a-longish-name", "size_in_mib": 64,
              "thin_provision": True}
    for i in range(2000):  # warm up allocator and counters
        history.record(i % 8, 0, "bdev_lvol_create", params, 1.0, 2.0, result="c5d4571a-f3ae-4db9")
    before = _rss_kib()
    started = time.perf_counter()
    for i in range(200_000):
        history.record(i % 8, i % 2, "bdev_lvol_create", params, 1.0, 2.0, result="c5d4571a-f3ae-4db9")
    per_record_us = (time.perf_counter() - started) / 200_000 * 1e6
    growth_kib = _rss_kib() - before
    history.close()
    assert len(history.tail()) == 1000
    assert all(len(v) == 100 for v in history.per_worker_tail(1000).values())
    assert history.total == 202_000
    # 200k lines are ~40 MB of text; keeping them would grow RSS by far more than this.
    assert growth_kib < 16 * 1024, f"RSS grew {growth_kib} KiB over 200k records"
    with path.open() as f:
        assert sum(1 for _ in f) == 202_000
    print(f"\nhistory: {per_record_us:.2f} us/record, RSS growth {growth_kib} KiB over 200k records")


def test_lines_reach_the_disk_within_a_second_without_close(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    history = History(path, flush_interval=0.2)
    try:
        history.record(0, 0, "bdev_lvol_delete", {"name": "a"}, 1.0, 2.0, result=True)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not path.read_text():
            time.sleep(0.05)
        assert path.read_text().count("\n") == 1
    finally:
        history.close()
    history.close()  # idempotent
    history.record(0, 0, "after_close", None, 1.0, 2.0)  # memory only, no error
    assert path.read_text().count("\n") == 1
    assert history.tail(1)[0]["method"] == "after_close"


def test_threads_record_concurrently_with_unique_per_worker_seq(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    history = History(path)

    def worker(w: int) -> None:
        for _ in range(5000):
            seq = history.next_seq(w % 2)
            history.record(w % 2, w, "bdev_lvol_get_lvols", None, 1.0, 2.0, result=[], seq=seq)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    history.close()
    records = list(History.read(path))
    assert len(records) == 20_000
    for w in (0, 1):
        seqs = sorted(r["seq"] for r in records if r["worker"] == w)
        assert seqs == list(range(1, 10_001))


def test_read_checks_the_version_and_tolerates_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with History(path) as history:
        for i in range(3):
            history.record(0, 0, "bdev_lvol_delete", {"name": f"l{i}"}, 1.0, 2.0, result=True)
    assert [r["params"]["name"] for r in History.read(path)] == ["l0", "l1", "l2"]
    # The harness died mid-write: the last line is cut; everything before it still replays.
    with path.open("a") as f:
        f.write('{"v":1,"worker":0,"conn":0,"seq":4,"method":"bdev_lv')
    assert len(list(History.read(path))) == 3

    other = tmp_path / "v2.jsonl"
    other.write_text('{"v":1,"worker":0,"seq":1,"method":"a"}\n{"v":2,"worker":0,"seq":2,"method":"a"}\n')
    with pytest.raises(ConfigError) as info:
        list(History.read(other))
    text = str(info.value)
    assert f"{other}:2" in text and "version 2" in text and f"reads version {HISTORY_VERSION}" in text
    assert "\n" not in text

    broken = tmp_path / "broken.jsonl"
    broken.write_text('not json\n{"v":1}\n')
    with pytest.raises(ConfigError, match=r"broken.jsonl:1: not a JSON history record"):
        list(History.read(broken))
    with pytest.raises(ConfigError, match="cannot read history"):
        list(History.read(tmp_path / "missing.jsonl"))


def test_memory_only_history_and_bad_sizes() -> None:
    history = History(None, tail_len=2)
    for i in range(5):
        history.record(7, 0, "m", {"i": i}, 1.0, 2.0)
    assert [r["params"]["i"] for r in history.tail()] == [3, 4]
    history.close()
    with pytest.raises(ConfigError, match="tail_len"):
        History(None, tail_len=0)


def test_a_full_disk_is_reported_not_raised() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    history = History("/dev/full")
    history.record(0, 0, "bdev_lvol_delete", {"name": "a"}, 1.0, 2.0, result=True)
    history.flush()
    assert history.write_error is not None and "No space left on device" in history.write_error
    history.record(0, 0, "bdev_lvol_delete", {"name": "b"}, 1.0, 2.0, result=True)  # still fine
    history.close()
    assert history.summary()["write_error"] == history.write_error
    assert [r["params"]["name"] for r in history.tail()] == ["a", "b"]


def test_an_unclosed_history_is_written_at_interpreter_exit(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "h.jsonl"
    script = (
        "from harness.history import History\n"
        f"h = History({str(path)!r}, flush_interval=60)\n"
        "for i in range(10): h.record(0, 0, 'm', {'i': i}, 1.0, 2.0)\n"
        "raise SystemExit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                          timeout=30, check=False)
    assert done.returncode == 3
    assert [r["params"]["i"] for r in History.read(path)] == list(range(10))


def test_one_write_batches_are_recorded_and_old_lines_without_them_still_load(tmp_path: Path) -> None:
    """A corked batch's calls carry one batch id (the target read them in one poll); a plain call has none, so
    a history written before batches were recorded reads back the same (version 1, no `batch`)."""
    import asyncio

    from harness.hosts.local import LocalHost
    from harness.minimize.operations import load_operations
    from harness.rpc.client import RpcConnection

    sock_path = str(tmp_path / "s.sock")
    reads: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = json.JSONDecoder()
        buf = ""
        while data := await reader.read(65536):
            buf += data.decode()
            requests = 0
            while buf.strip():
                try:
                    req, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                requests += 1
                writer.write(json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": True}).encode())
            reads.append(requests)
            await writer.drain()
        writer.close()

    async def run(history: History) -> None:
        server = await asyncio.start_unix_server(serve, sock_path)
        conn = await RpcConnection.open(LocalHost(), sock_path, history=history, worker=3, conn=7)
        try:
            await conn.call("bdev_get_bdevs", {"name": "alone"}, timeout=5)
            for _ in range(2):
                conn.cork()
                calls = [asyncio.ensure_future(conn.call(m, {"name": "x"}, timeout=5))
                         for m in ("bdev_lvol_register_snapshot_checksum", "bdev_lvol_delete")]
                asyncio.get_running_loop().call_soon(conn.uncork)
                await asyncio.wait_for(asyncio.gather(*calls), 5)
            await conn.call("bdev_get_bdevs", {"name": "after"}, timeout=5)
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()

    path = tmp_path / "history.jsonl"
    with History(path) as history:
        asyncio.run(asyncio.wait_for(run(history), 20))
    assert reads == [1, 2, 2, 1]  # each batch arrived in one read
    records = list(History.read(path))
    by_seq = sorted(records, key=lambda r: r["seq"])
    assert [r.get("batch") for r in by_seq] == [None, "3.7-1", "3.7-1", "3.7-2", "3.7-2", None]
    assert all(r["v"] == HISTORY_VERSION for r in records)
    # An old line (no batch field) and a new one load as operations: batch None / the batch's key.
    old = tmp_path / "old.jsonl"
    old.write_text('{"v":1,"worker":0,"conn":0,"seq":1,"method":"bdev_lvol_delete","params":{"name":"a"},'
                   '"t_start":1.0,"t_end":2.0,"result":true}\n')
    assert [o.batch for o in load_operations(old)] == [None]
    batched = [o for o in load_operations(path) if o.batch is not None]
    assert {o.batch_key for o in batched} == {(3, 7, "3.7-1"), (3, 7, "3.7-2")}


class _Writes:
    """A file that keeps each write's bytes (the history writes through it; flush and close are no-ops)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("compress", [False, True])
def test_big_lines_are_written_alone_and_small_ones_in_bounded_writes(tmp_path: Path, compress: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One join of a whole batch of listings (tens of MB) cost a fresh mmap and a page fault per 4 KiB each time:
    writes are now whole lines of at most PIECE_CHARS (a longer line alone), and the file is what it was."""
    import zstandard

    import harness.history as history_mod

    monkeypatch.setattr(history_mod, "PIECE_CHARS", 4096)
    h = History(tmp_path / ("h.jsonl.zst" if compress else "h.jsonl"))
    sink = _Writes()
    h._file = sink  # type: ignore[assignment]
    listing = [{"uuid": f"u{i}", "name": f"lvol{i}"} for i in range(2000)]  # ~60 KB of text
    want = []
    for i in range(60):
        big = i % 20 == 0
        result = listing if big else True
        raw = json.dumps(result, separators=(",", ":")).encode()
        h.record(i % 3, 0, "bdev_lvol_get_lvols" if big else "bdev_lvol_delete", {"name": f"x{i}"}, 1.0, 2.0,
                 result=None if big else True, result_json=memoryview(raw) if big and i == 20 else
                 raw.decode() if big else None)
        want.append(result)
    h.flush()
    h.close()
    if compress:  # each write one frame of whole lines
        data = [zstandard.ZstdDecompressor().decompressobj().decompress(w) for w in sink.writes]
        assert all(d.endswith(b"\n") for d in data)
    else:  # each write whole lines, or a long line whose newline is the next write
        data = sink.writes
        assert all(d.endswith(b"\n") or data[i + 1] == b"\n" for i, d in enumerate(data))
    assert b"".join(data).count(b"\n") == 60
    biggest = len(json.dumps(listing, separators=(",", ":"))) + 200
    assert max(len(d) for d in data) <= biggest  # the bound: no write holds more than one listing
    assert len(data) >= 4  # the three listings alone, the small lines around them apart
    lines = [json.loads(x) for x in b"".join(data).splitlines()]
    assert [x["result"] for x in lines] == want
    seqs = [x["seq"] for x in lines if x["worker"] == 2]
    assert seqs == list(range(seqs[0], seqs[0] + 20))  # in record order


def test_a_result_recorded_as_bytes_reads_back_like_text(tmp_path: Path) -> None:
    """A big reply's result reaches the history as the bytes read (a memoryview of them), never decoded to text:
    file and tails read the same as for the text of it."""
    raw = json.dumps([{"alias": "lvs0/é", "n": i} for i in range(3000)], ensure_ascii=False,
                     separators=(",", ":")).encode()
    paths = []
    for kind, value in (("text", raw.decode()), ("bytes", memoryview(raw))):
        path = tmp_path / f"{kind}.jsonl"
        with History(path) as h:
            h.record(1, 2, "bdev_lvol_get_lvols", {"lvs_name": "lvs0"}, 1.0, 2.0, result_json=value)
            assert h.tail()[0]["result"][1] == {"alias": "lvs0/é", "n": 1}
            assert h.per_worker_tail(1)[1][0]["result"] == json.loads(raw)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert [r["result"] for r in History.read(paths[1])] == [json.loads(raw)]
