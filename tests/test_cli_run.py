"""`lvol-storm run` end to end against the reference target: exit codes, artefacts, and Ctrl-C leaving nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.leftovers import SESSIONS_DIR

LVOL_STORM = [sys.executable, "-m", "harness.cli"]


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LVOL_STORM, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


def _no_process_on(sock: str) -> bool:
    out = subprocess.run(["pgrep", "-f", sock], capture_output=True, text=True).stdout.strip()
    return out == ""


def test_healthy_run_exits_0_and_leaves_every_artefact(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = _run(["run", "--target", "sim", "--profile", "smoke", "--duration", "4s", "--run-dir", str(run_dir)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "REFERENCE TARGET" in res.stderr
    for name in ("config.yaml", "target.log", "history.jsonl", "summary.json"):
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["target"]["reference_target"] is True
    assert summary["storm"]["ops"] > 100 and summary["crashes"] == [] and summary["findings"] == []
    first = json.loads((run_dir / "history.jsonl").open().readline())
    assert {"worker", "seq", "method", "params", "t_start", "t_end"} <= first.keys()
    assert not (run_dir / "spdk.sock").exists()
    assert _no_process_on(str(run_dir / "spdk.sock"))


def test_crashing_target_exits_3_with_a_crash_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = _run(["run", "--target", "sim", "--sim-fault", "forced-removal", "--duration", "45s",
                "--set", "storm.strategies=[busy-delete]", "--set", "storm.strategy_share=0.5",
                "--no-minimize", "--run-dir", str(run_dir)])
    assert res.returncode == 3, res.stdout + res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["crashes"][0]["title"].startswith("SIGSEGV in ")
    assert summary["storm"]["stop_reason"] == "crash"
    assert any(f["kind"] == "busy-delete-removed" for f in summary["findings"])
    crash = json.loads(next((run_dir / "crashes").glob("001-*/crash.json")).read_text())
    assert crash["fault"]["fault_addr"] == "0x8" and crash["fault"]["comm"] == "reactor_0"
    assert not (run_dir / "spdk.sock").exists() and not (run_dir / "spdk.sock.lock").exists()


def test_bad_flag_value_is_exit_2_with_one_line(tmp_path: Path) -> None:
    res = _run(["run", "--target", "sim", "--set", "storm.workers=0", "--run-dir", str(tmp_path / "r")])
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "storm.workers: must be >= 1, got 0" in res.stderr


def test_missing_spdk_tgt_is_exit_4_saying_where_it_looked(tmp_path: Path) -> None:
    env = {**os.environ, "SPDK_TGT": "/nonexistent/spdk_tgt",
           "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}
    env.pop("SPDK_DIR", None)
    res = subprocess.run([*LVOL_STORM, "run", "--target", "spdk", "--run-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=60, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 4
    assert "spdk_tgt not found; looked at" in res.stderr and "/nonexistent/spdk_tgt (missing)" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_mid_run_drains_saves_and_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*LVOL_STORM, "run", "--target", "sim", "--duration", "60s", "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    history = run_dir / "history.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not history.exists() or history.stat().st_size < 20000):
        time.sleep(0.1)
    mine = f"{__import__('socket').gethostname()}-{proc.pid}-*.json"
    assert list(SESSIONS_DIR.glob(mine)), "the running session keeps no record of what it holds"
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["storm"]["stop_reason"] == "interrupted"
    assert summary["storm"]["ops"] > 0 and summary["findings"] == []
    assert not (run_dir / "spdk.sock").exists()
    assert _no_process_on(str(run_dir / "spdk.sock"))
    # What this run held on the machine (hugepages, mount, socket) is given back when its session record is
    # gone. Not the nr_hugepages sysctl read before and after: a second make test beside this one changes it.
    held = list(SESSIONS_DIR.glob(mine))
    assert held == [], [p.read_text() for p in held]
