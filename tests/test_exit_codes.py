"""Exit codes say what happened (harness/outcome.py's table): a storm the target cannot serve is bad input, a
replay of nothing (or of half a file) is bad input, and every reproducer exits EXIT_REPRODUCED when the
target dies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import ConfigError
from harness.history import History, read_appended
from harness.outcome import EXIT_REPRODUCED, EXIT_USAGE
from harness.report.reproducer import reproducer_script

REPO = Path(__file__).resolve().parent.parent


def test_workers_are_bounded_by_the_connections_spdk_tgt_serves() -> None:
    plain = ["storm.strategies={}"]
    assert load_config("smoke", overrides=[*plain, "storm.workers=62"]).storm.workers == 62
    with pytest.raises(ConfigError, match=r"storm\.workers: must be <= 62 \(spdk_tgt serves at most 64 connections, "
                                          r"SPDK_JSONRPC_MAX_CONNS, .*\), got 100000$"):
        load_config("smoke", overrides=[*plain, "storm.workers=100000"])
    with pytest.raises(ConfigError, match=r"storm\.workers: must be <= 31 with strategies \(each worker has a "
                                          r"second connection for them\)"):
        load_config("smoke", overrides=["storm.strategies=[busy-delete]", "storm.workers=32"])


def _replay(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "replay", str(path), "--target", "sim"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _history(path: Path, frames: int) -> None:
    with History(path) as history:
        for frame in range(frames):
            for i in range(200):
                history.record(0, 0, "bdev_lvol_get_lvstores", {}, 1000.0 + frame + i / 1000,
                               1000.0 + frame + i / 1000 + 0.0001, result=[])
            history.flush()


@pytest.mark.parametrize("case", ["empty", "empty.zst", "cut.zst"])
def test_a_replay_of_nothing_or_of_half_a_file_is_bad_input(tmp_path: Path, case: str) -> None:
    path = tmp_path / ("history.jsonl.zst" if case.endswith(".zst") else "history.jsonl")
    path.write_bytes(b"")
    if case == "cut.zst":  # two whole frames, then half of the third: `the target survived` exited 0
        _history(path, 3)
        second = [offset for _, offset in read_appended(path, 0)][1]
        path.write_bytes(path.read_bytes()[: second + (path.stat().st_size - second) // 2])
        assert 400 <= len(list(History.read(path))) < 600  # the minimizer and the report still read up to the cut
    done = _replay(path)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("cut short: its whole zstd frames end at byte" if case == "cut.zst" else "holds no operations") \
        in done.stderr


def test_repro_py_exits_exit_reproduced_when_the_target_closes_the_connection(tmp_path: Path) -> None:
    pytest.importorskip("spdk.rpc.client")
    script = tmp_path / "repro.py"
    ops = [{"worker": 0, "seq": 0, "method": "bdev_lvol_delete", "params": {"name": "x"}, "t_start": 1.0,
            "t_end": 2.0, "error": {"code": None, "message": "connection lost"}}]
    script.write_text(reproducer_script(ops, "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "spdk.sock"))
    server.listen(1)

    def dies_at_the_first_call() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()  # what a target that crashed on the call does

    threading.Thread(target=dies_at_the_first_call, daemon=True).start()
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "spdk.sock")], capture_output=True, text=True,
                          timeout=60)
    server.close()
    assert done.returncode == EXIT_REPRODUCED == 3, done.stdout + done.stderr
    assert "target closed the connection at operation 0 (bdev_lvol_delete): REPRODUCED" in done.stdout
    no_target = subprocess.run([sys.executable, str(script), str(tmp_path / "none.sock")], capture_output=True,
                               text=True, timeout=60)
    assert no_target.returncode == EXIT_USAGE and "cannot connect to" in no_target.stderr
