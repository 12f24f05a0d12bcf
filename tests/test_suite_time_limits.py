"""A suite's time limit is its own: a nightly hour and a soak of days are not cut at pytest-timeout's 300 s, a
nightly's own clock governs under a small `-o timeout`, and a long run stopped by a time limit anyway still
leaves summary.json with every crash it counted and a JUnit message that names the crash titles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.config import load_config
from harness.suite import START_AND_TEARDOWN_S, SUITES, time_limit

REPO = Path(__file__).resolve().parent.parent
EXIT_TITLE = "exit: target exited 0 unexpectedly"

SHOW_LIMITS = '''
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("timeout")
        print(f"LIMIT {item.nodeid} {marker.args[0] if marker else None}")
'''

IMPOSE_LIMIT = '''
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.timeout(float(__import__("os").environ["IMPOSED_LIMIT"])))
'''


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return {**env, "PYTHONPATH": f"{tmp_path}:{REPO}", **extra}


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"]


def test_the_limit_of_a_nightly_hour_and_a_soak_of_12_hours_is_their_own() -> None:
    nightly = load_config("nightly")
    budget = nightly.minimize.budget_s + START_AND_TEARDOWN_S
    assert time_limit(SUITES["nightly"], nightly) == 3600 + budget + START_AND_TEARDOWN_S
    soak = load_config("soak", cli={"storm.duration": "12h"})
    assert time_limit(SUITES["soak"], soak) == 12 * 3600 + budget + START_AND_TEARDOWN_S
    assert time_limit(SUITES["soak"], load_config("soak")) == 0  # open-ended: until Ctrl-C
    no_min = load_config("nightly", cli={"minimize.enabled": False})
    assert time_limit(SUITES["nightly"], no_min) == 3600 + START_AND_TEARDOWN_S


@pytest.mark.parametrize(("args", "expect"), [
    (["suites/nightly", "--target", "sim", "--bdev", "malloc"], 3600 + 600 + 2 * START_AND_TEARDOWN_S),
    (["suites/soak", "--target", "sim", "--duration", "12h"], 12 * 3600 + 600 + 2 * START_AND_TEARDOWN_S),
    (["suites/soak", "--target", "sim"], 0),
    (["suites/regression", "--target", "sim", "-o", "timeout=5"], 120 + 180 + 2 * START_AND_TEARDOWN_S),
])
def test_every_collected_test_carries_its_suites_limit_whatever_the_ini_says(
        tmp_path: Path, args: list[str], expect: float) -> None:
    (tmp_path / "show_limits.py").write_text(SHOW_LIMITS)
    proc = subprocess.run(_pytest(*args, "--co", "-p", "show_limits", "--run-dir", str(tmp_path / "run")),
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=_env(tmp_path))
    limits = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("LIMIT ")]
    assert limits and all(float(v) == expect for v in limits), proc.stdout + proc.stderr


@pytest.mark.timeout(120)
def test_a_nightly_runs_its_own_clock_under_a_small_ini_timeout(tmp_path: Path) -> None:
    """`-o timeout=3` would kill any test after 3 s; the nightly of 12 s runs its 12 s and ends on its own."""
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    proc = subprocess.run(_pytest("suites/nightly", "--target", "sim", "--bdev", "malloc", "--duration", "12s",
                                  "--set", "storm.workers=2", "--set", "minimize.enabled=false", "-o", "timeout=3",
                                  "--run-dir", str(run_dir)),
                          cwd=REPO, capture_output=True, text=True, timeout=110, env=_env(tmp_path))
    wall = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Timeout" not in out, out[-3000:]
    summary = json.loads((run_dir / "local" / "summary.json").read_text())
    assert summary["stopped_by"] == "duration" and summary["passed"] is True, summary["stopped_by"]
    assert wall >= 12 and summary["wall_s"] >= 11.5


@pytest.mark.timeout(120)
def test_a_long_run_stopped_by_a_time_limit_keeps_its_crashes_and_names_them(tmp_path: Path) -> None:
    """A limit shorter than the run (set by someone else: a CI job's own) stops a crashing nightly mid-way:
    the node's summary.json counts every crashed incarnation so far, the session's summary counts them too,
    and the JUnit message starts with the crash titles, then says what stopped it."""
    (tmp_path / "impose_limit.py").write_text(IMPOSE_LIMIT)
    run_dir = tmp_path / "run"
    proc = subprocess.run(_pytest("suites/nightly", "--target", "sim", "--bdev", "malloc", "--duration", "5m",
                                  "--sim-fault", "exit", "--set", "target.sim_fault_after=200",
                                  "--set", "storm.workers=2", "--set", "minimize.enabled=false",
                                  "-p", "impose_limit", "--run-dir", str(run_dir)),
                          cwd=REPO, capture_output=True, text=True, timeout=110,
                          env=_env(tmp_path, IMPOSED_LIMIT="15"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    node = json.loads((run_dir / "local" / "summary.json").read_text())
    crashed = [b for b in node["breakdown"] if b["outcome"] == "crash"]
    assert len(crashed) >= 2, node["breakdown"]
    assert node["crash_counts"] == {EXIT_TITLE: len(crashed)} and node["running"] is False
    assert node["verdict"] == "crash" and node["passed"] is False
    assert node["stopped_by"].startswith("interrupted ("), node["stopped_by"]
    session = json.loads((run_dir / "summary.json").read_text())
    assert [(c["title"], c["count"]) for c in session["crashes"]] == [(EXIT_TITLE, len(crashed))]
    assert session["verdict"] == "crash" and session["passed"] is False
    case = next(ET.parse(run_dir / "junit.xml").getroot().iter("testcase"))
    failure = case.find("failure")
    assert failure is not None
    message = failure.get("message", "") + (failure.text or "")
    assert message.startswith(f"crashes by title: {EXIT_TITLE} x"), message[:500]
    assert "stopped by: Timeout" in message, message[:500]
