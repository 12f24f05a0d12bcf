"""Every way the reference target dies, through a whole run: storm -> watchdog -> crash report on disk.

One storm per fault mode; the report must carry the right kind of title, the decoded fault (segfaults), the core
and backtrace when cores can be collected, the last operations and a standalone reproducer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.config import load_config
from harness.run import StormRun
from harness.rundir import RunDir

MODES = {
    "forced-removal": r"^SIGSEGV in spdk_lvol_destroy \(reference target\)$",
    "abort-assert": r"^SIGABRT: Assertion '.+' failed",
    "abort-malloc": r"^SIGABRT: malloc\(\): ",
    "exit": r"^exit: target exited \d+ unexpectedly$",
    "hang": r"^hang: no RPC reply for \d+",
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_fault_mode_ends_the_run_with_a_complete_crash_report(mode: str, tmp_path: Path) -> None:
    # The forced removal needs a busy snapshot deleted (the busy-delete race); the other faults come from the mix.
    aim = ["storm.strategies=[busy-delete]"] if mode == "forced-removal" else []
    cfg = load_config("smoke", overrides=["watch.hang_after_s=2", "storm.op_timeout=20s", *aim],
                      cli={"target.kind": "sim", "target.sim_fault": mode, "target.sim_fault_after": 60,
                           "storm.duration": 40, "minimize.enabled": False})
    outcome = StormRun(cfg, RunDir(tmp_path / "run"), progress=False, announce=lambda m: None).execute()
    assert outcome.exit_code == 3, outcome.summary["storm"]
    assert outcome.summary["storm"]["stop_reason"] in ("crash", "connection_lost", "unresponsive")
    [crash_dir] = outcome.crash_dirs
    crash = json.loads((crash_dir / "crash.json").read_text())
    assert re.search(MODES[mode], crash["title"]), crash["title"]
    assert list(outcome.crash_titles) == [crash["title"]]
    assert crash["last_operations"], "the operations before the crash belong in the report"
    assert (crash_dir / "repro.py").read_text().startswith("#!")
    if mode == "forced-removal":
        fault = crash["fault"]
        assert (fault["fault_addr"], fault["comm"], fault["signal"]) == ("0x8", "reactor_0", "SIGSEGV")
        assert fault["error_bits"] == ["user", "read", "page not present"]
    if mode in ("forced-removal", "abort-assert", "abort-malloc"):
        notes = " ".join(crash["notes"])
        if "core: " in notes and "not writable" in notes:
            pytest.skip(f"cores cannot be collected here: {notes}")
        assert crash["core"] and (crash_dir / crash["core"]).exists(), crash["notes"]
        assert "#0" in (crash_dir / "backtrace.txt").read_text()
    if mode == "hang":
        assert crash["core"] is None  # alive when judged hung: nothing to dump
