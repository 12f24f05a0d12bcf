"""TargetLogCap: a log written while it is capped loses no line, keeps its order, and holds at most the cap
plus a chunk on disk; a real (reference) target's flood of refusals ends as an archive and a short tail."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import zstandard

from harness.hosts.local import LocalHost
from harness.rpc.errors import RpcError
from harness.rpc.sync import SyncRpc
from harness.session import TargetSession
from harness.target import TargetConfig
from harness.target_log_cap import TAIL_BYTES, TargetLogCap


def _archive(path: Path) -> bytes:
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
        return r.read()


def _on_disk(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_capped_log_keeps_every_line_in_order_and_stays_within_the_cap(tmp_path: Path) -> None:
    log = tmp_path / "target.log"
    cap = TargetLogCap(log, 256 << 10, interval_s=3600)
    written: list[bytes] = []
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as the target's stdout is opened
    most = 0
    try:
        for i in range(60_000):
            line = f"[{i:06d}] blobstore.c:8621:bs_delete_blob_finish: *ERROR*: Failed to remove blob {i}\n"
            os.write(fd, line.encode())
            written.append(line.encode())
            if i % 5000 == 4999:
                os.write(fd, b"a line cut in two by a step: ")  # the step must not split it
                cap.step()
                most = max(most, _on_disk(log))  # right after a step: the unpunched tail and the cut line
                os.write(fd, b"its end\n")
                written.append(b"a line cut in two by a step: its end\n")
    finally:
        os.close(fd)
    total = sum(map(len, written))
    assert total > 5_000_000 and cap.punched > 4_000_000, (total, cap.punched)
    assert most <= TAIL_BYTES + (64 << 10), f"{most} bytes on disk after a step"
    assert os.stat(log).st_size == total, "the file keeps its size and offsets (tail -F follows it on)"
    assert open(log, "rb").read(4096) == b"\0" * 4096, "the archived prefix was given back"
    note = cap.finish()
    assert note and "target.log.zst" in note
    assert _archive(tmp_path / "target.log.zst") == b"".join(written), "every line, once, in order"
    plain = log.read_bytes().split(b"\n", 1)
    assert plain[0].startswith(b"[lvol-storm] this log grew past") and b"zstd -dc target.log.zst" in plain[0]
    assert b"".join(written).endswith(plain[1]) and len(plain[1]) > 100_000 and plain[1].startswith(b"[")


def test_a_log_under_the_cap_is_never_touched(tmp_path: Path) -> None:
    log = tmp_path / "target.log"
    log.write_bytes(b"Starting SPDK\n" * 100)
    cap = TargetLogCap(log, 1 << 20, interval_s=3600)
    assert cap.step() is False and cap.finish() is None
    assert log.read_bytes() == b"Starting SPDK\n" * 100 and not (tmp_path / "target.log.zst").exists()


@pytest.mark.timeout(120)
def test_a_targets_flood_of_refusals_is_archived_while_it_runs(tmp_path: Path) -> None:
    cfg = TargetConfig(kind="sim", log_cap_mb=0.125)
    with TargetSession(LocalHost(), cfg, str(tmp_path), announce=lambda m: None) as session:
        log = Path(session.target.log_path)
        assert session.target.log_cap is not None
        with SyncRpc(session.host, session.sock_path) as rpc:
            deadline = time.monotonic() + 60
            n = 0
            while (session.target.log_cap.punched == 0 and time.monotonic() < deadline) or n < 3000:
                with pytest.raises(RpcError):
                    rpc.call("bdev_malloc_delete", name=f"missing{n}")
                n += 1
                if n > 200_000:
                    break
        assert session.target.log_cap.punched > 0, "the log was capped while the target ran"
        threading.Event().wait(0.2)
    info = session.target.info
    assert "target.log.zst" in info.log_archive, info
    whole = _archive(tmp_path / "target.log.zst").decode()
    assert "Starting SPDK" in whole or "spdk-sim" in whole.lower(), whole[:300]
    assert all(f"Failed to open bdev with name: missing{i}\n" in whole for i in (0, n // 2, n - 1))
    assert log.stat().st_size < 300_000 and log.read_text().startswith("[lvol-storm]")
