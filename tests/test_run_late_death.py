"""A death the watchers hear of late is still a crash.

A dying process closes its sockets before its parent can reap it, and the watchdog hears of the exit a moment
later; on a loaded CI machine that moment stretched past the run's check, and a run whose target exited
mid-storm ended with `connection_lost`, no crash title and no crash report. The run now waits for the
watchers when the storm lost the target. Here both delays are made long on purpose."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.config import load_config
from harness.run import StormRun
from harness.rundir import RunDir
from harness.target import Target
from harness.watch.watchdog import Watchdog

WATCHDOG_LATE_S = 1.0
REAP_LATE_S = 0.4


def test_an_exit_the_watchdog_hears_of_after_the_storm_lost_the_target_is_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_exit = Watchdog._on_exit

    def late_on_exit(self: Watchdog, rc: int | None) -> None:
        time.sleep(WATCHDOG_LATE_S)
        on_exit(self, rc)

    alive = Target.alive
    dead_seen: dict[Target, float] = {}

    def late_reap(self: Target) -> bool:
        if alive(self):
            return True
        return time.monotonic() - dead_seen.setdefault(self, time.monotonic()) < REAP_LATE_S

    monkeypatch.setattr(Watchdog, "_on_exit", late_on_exit)
    monkeypatch.setattr(Target, "alive", late_reap)
    cfg = load_config("smoke", overrides=["target.sim_fault_after=300", "minimize.enabled=false",
                                          "target.stop_timeout_s=2"],
                      cli={"target.kind": "sim", "target.sim_fault": "exit", "storm.duration": "20s"})
    outcome = StormRun(cfg, RunDir(tmp_path / "run"), progress=False, announce=lambda _m: None).execute()
    assert outcome.summary.to_json()["storm"]["stop_reason"] == "connection_lost"  # the storm saw it first
    assert list(outcome.crash_titles) == ["exit: target exited 0 unexpectedly"], outcome.summary.to_json()["storm"]
    assert outcome.exit_code == 3 and len(outcome.crash_dirs) == 1
