"""Bad input and interrupts through the real command line (`python -m harness.cli` in a subprocess): each is one
line naming the file or field and the fix, exit 2 for bad input and 130 for an interrupt, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.sync_loop import run_sync

REPO = Path(__file__).resolve().parent.parent
LVOL_STORM = [sys.executable, "-m", "harness.cli"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*LVOL_STORM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def _one_line(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in out + err, out + err
    lines = [line for line in err.splitlines() if line.startswith("lvol-storm: ")]
    assert len(lines) == 1, err
    return proc.returncode, lines[0], out


def _binary(path: Path) -> Path:
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    return path


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "--profile", "{tmp}/tool.bin"], r"{tmp}/tool.bin: not UTF-8 text (byte 136 is 0x80), so not YAML: a "
                                              "binary file? give the profile here"),
    (["run", "--inventory", "{tmp}/tool.bin"], r"{tmp}/tool.bin: not UTF-8 text (byte 136 is 0x80), so not YAML: "
                                                "a binary file? give the inventory here"),
    (["run", "--run-dir", "/proc/nosuch"], "--run-dir: /proc/nosuch: cannot write there (No such file or "
                                           "directory): give a directory you can write to"),
    (["run", "--run-dir", "{tmp}/tool.bin"], "--run-dir: {tmp}/tool.bin is a file, not a directory: give a "
                                             "directory (it is made if missing)"),
    (["replay", "{tmp}/brackets.jsonl"], "{tmp}/brackets.jsonl:1: not a JSON history record (nested deeper than a "
                                         "history line ever is): is it a history file?"),
    (["run", "--workers", "100000", "--set", "storm.strategies={}"],
     f"{REPO}/harness/profiles/default.yaml + --set: storm.workers: must be <= 62 (spdk_tgt serves at most 64 "
                                     "connections, SPDK_JSONRPC_MAX_CONNS, and the harness keeps 2 for its set-up "
                                     "calls and the watchdog's probe), got 100000"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    _binary(tmp_path / "tool.bin")
    (tmp_path / "brackets.jsonl").write_text("[" * 100_000 + "\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--target", "sim"]
    rc, line, _ = _one_line(_start(argv, tmp_path))
    assert (rc, line) == (2, f"lvol-storm: {expected.replace('{tmp}', str(tmp_path))}")


def _slow_target(tmp_path: Path) -> list[str]:
    """An spdk_tgt that never opens its socket: the harness waits for it (start_timeout_s) until told to stop."""
    fake = tmp_path / "spdk_tgt"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    return ["run", "--target", "spdk", "--spdk-tgt", str(fake), "--run-dir", str(tmp_path / "run"),
            "--set", "target.start_timeout_s=60"]


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]], ids=["sigint", "2xsigterm"])
def test_a_signal_while_the_target_starts_ends_the_run_at_once(tmp_path: Path, signals: list[int]) -> None:
    proc = _start(_slow_target(tmp_path), tmp_path)
    _wait_for(tmp_path / "run" / "target.log")  # the target is spawned: the harness now waits for its socket
    start = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10, "it waited for the target instead of stopping"
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    if len(signals) == 1:  # the run ends as an interrupted run, with its summary on disk
        assert out.strip().splitlines() == [f"verdict: interrupted before the storm (nothing ran, nothing judged); "
                                            f"run dir {tmp_path / 'run'}"]
        assert '"verdict": "interrupted"' in (tmp_path / "run" / "summary.json").read_text()
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "spdk_tgt")], capture_output=True).returncode == 1


def test_a_signal_after_the_run_while_it_prints_is_one_line_and_130(tmp_path: Path) -> None:
    """The run is over and the command is printing its table (here into a pipe nobody reads yet): the run's
    handler is gone, and a SIGTERM used to kill it silently (exit -15, the buffered table lost)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)  # full: the command's first line of output blocks
    os.set_blocking(write_end, True)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*LVOL_STORM, "run", "--target", "sim", "--duration", "1s", "--no-minimize",
                             "--run-dir", str(run_dir)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(write_end)
    _wait_for(run_dir / "report.html", timeout=60)  # written after summary.json: only the table is left
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with os.fdopen(read_end, "rb") as out:
        out.read()  # let it finish writing and exit
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(30) == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("lvol-storm: SIGTERM: stopped (no run was under way to drain; what a run saved "
                                    "is in its run directory)")


def test_an_interrupt_as_a_storm_ends_stays_the_interrupt() -> None:
    """The second signal landing as the storm's main task finishes: asyncio.run's clean-up used to raise
    'Event loop stopped before Future completed' over it (a traceback and exit 1)."""
    def second_signal() -> None:
        raise KeyboardInterrupt("SIGTERM")

    async def storm() -> int:
        lane = asyncio.ensure_future(asyncio.sleep(10))  # a lane still running
        asyncio.get_running_loop().call_soon(second_signal)
        return 1 if not lane.done() else 0

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        run_sync(storm())
    assert run_sync(asyncio.sleep(0, "done")) == "done"
