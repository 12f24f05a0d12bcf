"""Every way the reference target dies, through a whole run: storm -> watchdog -> crash report on disk -> the
report's reproducer crashes a FRESH target of the same build (same fault, same --fault-after) with the same title.

One storm per fault mode (a module fixture); the report must carry the right title, the decoded fault
(segfaults), the core and backtrace when cores can be collected, the last operations and a standalone
reproducer. Then both faces of that reproducer are rerun against a fresh faulty target: the crash dir's
`repro.py` (plain SPDK client, titled here by a watchdog and the report code, as a storm run titles it) and
`lvol-storm replay <crash dir>/last-operations.jsonl` (which reads the run's config.yaml for the target).

`hang` and `exit` fire at the Nth lvol change the target has seen since it started (--fault-after, every call
of MUTATING_LVOL_METHODS, failed or not). That count is carried by nothing but the calls themselves, so their
reproducer re-crashes a fresh target only when it holds at least N of them. The report keeps the last 20
operations of every worker plus what they depend on; a run that dies within that (here N=30 with 4 workers: the
whole history, some 40 calls) gives a reproducer with every counted call, which the tests check before
rerunning. A larger N than the report's window (e.g. --fault-after 200) could not be reproduced from the crash
dir's operations; the run's whole history.jsonl (`lvol-storm replay history.jsonl`) still can.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main as cli_main
from harness.config import RunConfig, load_config
from harness.hosts.local import LocalHost
from harness.minimize.operations import load_operations
from harness.minimize.trial import needs_of
from harness.outcome import EXIT_REPRODUCED
from harness.rpc_rules.table import MUTATING_LVOL_METHODS
from harness.run import RunOutcome, StormRun
from harness.rundir import RunDir
from harness.session import TargetSession
from harness.watch.config import WatchConfig

pytestmark = pytest.mark.timeout(90)

HANG_AFTER_S = 2
FAULT_AFTER = 30  # hang/exit: the 30th lvol change; < 4 workers x the report's 20 last operations each
MODES = {
    "forced-removal": r"^SIGSEGV in spdk_lvol_destroy \(reference target\)$",
    "abort-assert": r"^SIGABRT: Assertion '.+' failed in \w+$",
    "abort-malloc": r"^SIGABRT: malloc\(\): unsorted double linked list corrupted$",
    "exit": r"^exit: target exited 0 unexpectedly$",
    "hang": rf"^hang: no RPC reply for {HANG_AFTER_S} s$",
}
EXIT_RC = {"forced-removal": -11, "abort-assert": -6, "abort-malloc": -6, "exit": 0, "hang": None}


@dataclass
class StormCrash:
    """One storm's outcome against one fault mode, and the crash dir it left."""

    mode: str
    run_dir: Path
    config: RunConfig
    outcome: RunOutcome
    crash_dir: Path
    crash: dict[str, Any]


@pytest.fixture(scope="module", params=list(MODES))
def storm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> StormCrash:
    mode: str = request.param
    run_dir = tmp_path_factory.mktemp(mode) / "run"
    # The forced removal needs a busy snapshot deleted (the busy-delete race); the other faults come from the mix.
    aim = ["storm.strategies=[busy-delete]"] if mode == "forced-removal" else []
    cfg = load_config("smoke", overrides=[f"watch.hang_after_s={HANG_AFTER_S}", "storm.op_timeout=20s",
                                          "target.stop_timeout_s=2", *aim],
                      cli={"target.kind": "sim", "target.sim_fault": mode, "target.sim_fault_after": FAULT_AFTER,
                           "storm.duration": 40, "minimize.enabled": False})
    outcome = StormRun(cfg, RunDir(run_dir), progress=False, announce=lambda m: None).execute()
    assert outcome.exit_code == 3, outcome.summary.to_json()["storm"]
    [crash_dir] = outcome.crash_dirs
    crash = json.loads((crash_dir / "crash.json").read_text())
    return StormCrash(mode, run_dir, cfg, outcome, crash_dir, crash)


def test_each_fault_mode_ends_the_run_with_a_complete_crash_report(storm: StormCrash) -> None:
    mode, crash, crash_dir, outcome = storm.mode, storm.crash, storm.crash_dir, storm.outcome
    assert outcome.summary.to_json()["storm"]["stop_reason"] in ("crash", "connection_lost", "unresponsive")
    assert re.search(MODES[mode], crash["title"]), crash["title"]
    assert list(outcome.crash_titles) == [crash["title"]]
    assert crash["last_operations"], "the operations before the crash belong in the report"
    assert (crash_dir / "repro.py").read_text().startswith("#!")
    notes = " ".join(crash["notes"])
    if mode == "forced-removal":
        fault = crash["fault"]
        assert (fault["fault_addr"], fault["comm"], fault["signal"]) == ("0x8", "reactor_0", "SIGSEGV")
        assert fault["error_bits"] == ["user", "read", "page not present"]
        # the sim's last words name the function its model crashed in; the native fault is its ctypes read
        assert "spdk-sim: SIGSEGV modelled in spdk_lvol_destroy" in (crash_dir / "target.log").read_text()
    if mode == "hang":
        assert crash["core"] is None  # alive when judged hung: nothing to dump
    if mode in ("forced-removal", "abort-assert", "abort-malloc"):
        if "core: " in notes and "not writable" in notes:
            pytest.skip(f"cores cannot be collected here: {notes}")
        if "core: " in notes and "another run changed it" in notes:
            pytest.skip(f"another job on this machine took the machine-wide core_pattern during the run: {notes}")
        assert crash["core"] and (crash_dir / crash["core"]).exists(), crash["notes"]
        assert "#0" in (crash_dir / "backtrace.txt").read_text()


def _counted_calls(crash_dir: Path) -> int:
    ops = [json.loads(line) for line in (crash_dir / "last-operations.jsonl").read_text().splitlines() if line]
    return sum(op["method"] in MUTATING_LVOL_METHODS for op in ops)


def _needs_every_counted_call(storm: StormCrash) -> None:
    if storm.mode in ("hang", "exit"):
        counted = _counted_calls(storm.crash_dir)
        assert counted >= FAULT_AFTER, (
            f"{storm.mode} fires at the {FAULT_AFTER}th lvol change since start; the crash dir's operations hold "
            f"only {counted}: no fresh target can reach it from them (see this module's docstring)")


def test_repro_py_crashes_a_fresh_faulty_target_with_the_same_title(storm: StormCrash, tmp_path: Path) -> None:
    _needs_every_counted_call(storm)
    host = LocalHost()
    fresh = load_config(str(storm.run_dir / "config.yaml"))  # the run's own target: same fault, same N
    assert (fresh.target.sim_fault, fresh.target.sim_fault_after) == (storm.mode, FAULT_AFTER)
    needs = needs_of(load_operations(storm.crash_dir / "last-operations.jsonl"))
    session = TargetSession(host, fresh.target, str(tmp_path / "t"), needs=needs,
                            watch=WatchConfig(hang_after_s=HANG_AFTER_S, probe_interval_s=0.5, core_dumps=False),
                            announce=lambda _m: None, keep_evidence=False).start()
    process = session.target.process
    assert process is not None
    repro = subprocess.Popen([sys.executable, str(storm.crash_dir / "repro.py"), session.sock_path],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        crashed = session.wait_for_death(settle_s=30)
        deadline = time.monotonic() + 3
        while repro.poll() is None and time.monotonic() < deadline and storm.mode != "hang":
            time.sleep(0.05)
        if repro.poll() is None:
            repro.kill()  # a hung target never answers the call in flight
        out = repro.communicate(timeout=10)[0]
        assert crashed, f"the reproducer left the fresh target alive:\n{out[-3000:]}"
        report = session.crash_report(history_tail=[])
        assert report is not None and report.title == storm.crash["title"], out[-3000:]
        if storm.mode != "hang":
            assert repro.returncode == EXIT_REPRODUCED and "target closed the connection at operation" in out, \
                out[-3000:]
            assert process.wait(5) == EXIT_RC[storm.mode]
    finally:
        if repro.poll() is None:
            repro.kill()
            repro.wait(5)
        session.close()


def test_lvol_storm_replay_of_the_crash_operations_crashes_a_fresh_target_again(
        storm: StormCrash, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_every_counted_call(storm)
    rc = cli_main(["replay", str(storm.crash_dir / "last-operations.jsonl"), "--run-dir", str(tmp_path / "r")])
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 3, text[-3000:]
    assert f"(fault {storm.mode})" in text  # the run's config.yaml chose the target
    assert "the target crashed with the same crash title" in text and storm.crash["title"] in text, text[-3000:]
