"""A target killed from outside (kill -9 by someone else) is reported fast and plainly, and not minimized:
there is no core to wait for and no bug of the storm's to cut down."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from harness.config import load_config
from harness.hosts.local import LocalHost
from harness.run import StormRun
from harness.rundir import RunDir


@pytest.mark.timeout(90)
def test_a_kill_9_mid_storm_is_a_quick_report_and_no_minimization(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=["storm.duration=30s", "storm.workers=2", "minimize.budget_s=60"],
                      cli={"target.kind": "sim"})
    said: list[str] = []
    killed_at: list[float] = []
    run = StormRun(cfg, RunDir(tmp_path / "run"), LocalHost(), announce=said.append, progress=False)

    def kill_once_storming() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            history = tmp_path / "run" / "history.jsonl"
            target = run.target
            if target is not None and target.info.pid and history.exists() and history.stat().st_size > 20_000:
                os.kill(target.info.pid, signal.SIGKILL)
                killed_at.append(time.monotonic())
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_storming, daemon=True)
    killer.start()
    outcome = run.execute()
    done = time.monotonic()
    killer.join(timeout=5)
    assert killed_at
    assert list(outcome.crash_titles) == ["SIGKILL: target killed from outside"], outcome.crash_titles
    crash_dir = outcome.crash_dirs[0]
    notes = (crash_dir / "crash.json").read_text()
    assert "the kernel writes no core for SIGKILL" in notes and "ulimit" not in notes
    assert not any(m.startswith("minimizing") for m in said), said
    assert any("not minimized" in n and "killed from outside" in n for n in outcome.summary.notes)
    assert not (crash_dir / "repro.min.jsonl").exists()
    took = done - killed_at[0]
    assert took < 8, f"kill -9 to a finished run took {took:.1f} s (it waited 10 s for a core that never comes)"
