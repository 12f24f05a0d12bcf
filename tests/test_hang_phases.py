"""A hang is a hang whenever it starts: inside the storm, or so late that the threshold runs out after it. The
teardown never spends its timeouts and retries on a target the watchdog calls hung, and a target stopped
(SIGSTOP) past the threshold is reported, not passed as clean."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HANG = 4  # s, the threshold these runs use


def _run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--target", "sim", "--no-minimize",
                             "--set", f"watch.hang_after_s={HANG}", "--set", "watch.probe_interval_s=0.5",
                             "--set", "storm.workers=2", "--run-dir", str(tmp_path / "run"), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _summary(tmp_path: Path) -> dict[str, object]:
    data = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.timeout(120)
def test_a_target_stopped_past_the_threshold_is_a_hang_not_a_clean_run(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--duration", "6s")
    sock_dir = tmp_path / "run"
    deadline = time.monotonic() + 30
    pid = None
    while time.monotonic() < deadline and pid is None:  # the target is up once the history grows
        hist = sock_dir / "history.jsonl"
        if hist.exists() and hist.stat().st_size > 5000:
            found = subprocess.run(["pgrep", "-f", f"harness.sim -r {sock_dir}/spdk.sock"], capture_output=True,
                                   text=True)
            pid = int(found.stdout.split()[0]) if found.stdout.split() else None
        time.sleep(0.1)
    assert pid is not None, "the reference target never came up"
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3 * HANG)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a hung target is killed once reported
            os.kill(pid, signal.SIGCONT)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 3, out[-3000:]
    titles = [c["title"] for c in _summary(tmp_path)["crashes"]]  # type: ignore[attr-defined]
    assert titles == [f"hang: no RPC reply for {HANG} s"], titles
@pytest.mark.timeout(120)
def test_a_hang_whose_threshold_outlives_the_storm_is_reported_without_a_teardown_finding(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = _run(tmp_path, "--sim-fault", "hang", "--set", "target.sim_fault_after=5", "--duration", "2s")
    out = proc.communicate(timeout=100)[0]
    wall = time.monotonic() - t0
    assert proc.returncode == 3, out[-3000:]
    summary = _summary(tmp_path)
    assert [c["title"] for c in summary["crashes"]] == [f"hang: no RPC reply for {HANG} s"]  # type: ignore[attr-defined]
    assert not [f for f in summary["findings"] if f.get("kind") == "teardown"], summary["findings"]  # type: ignore[attr-defined]
    assert wall < 2 + 3 * HANG + 20, f"{wall:.0f} s: teardown retried against a hung target"


