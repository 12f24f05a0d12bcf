"""The regression suite end to end, as CI runs it: pytest in a subprocess against the reference target.

The known-bad build (`--sim-fault forced-removal`) must fail busy-delete with the crash title in the JUnit
failure message and leave a crash bundle; the healthy build must pass the same test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_suite(tmp_path: Path, *args: str, timeout: float = 150.0) -> tuple[subprocess.CompletedProcess[str], Path]:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "--run-dir", str(run_dir), "-q", "-p", "no:cacheprovider",
         "-o", "timeout=0"],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
    )
    return proc, run_dir


def junit_failures(path: Path) -> list[tuple[str, str]]:
    root = ET.parse(path).getroot()
    return [(case.get("name", ""), fail.get("message", "") + "\n" + (fail.text or ""))
            for case in root.iter("testcase") for fail in case.findall("failure")]


@pytest.mark.timeout(170)
def test_forced_removal_fails_busy_delete_with_crash_title(tmp_path: Path) -> None:
    proc, run_dir = run_suite(tmp_path, "suites/regression", "--target", "sim", "--sim-fault", "forced-removal",
                              "-k", "busy-delete", "--duration", "20s",
                              "--set", "minimize.enabled=false")  # minimizing is harness.minimize's test, and slow
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    junit = run_dir / "junit.xml"
    assert junit.exists(), f"no JUnit XML in the run directory by default: {sorted(p.name for p in run_dir.iterdir())}"
    failures = junit_failures(junit)
    assert [name for name, _ in failures] == ["test_delete_race[busy-delete]"], failures
    message = failures[0][1]
    assert re.search(r"SIGSEGV in \S+", message), message[:2000]
    bundle = re.search(r"crash bundle: (\S+/crash\.json)", message)
    assert bundle, message[:2000]
    crash = json.loads(Path(bundle.group(1)).read_text())
    assert crash["title"].startswith("SIGSEGV in ")
    assert crash["title"] in message
    assert (Path(bundle.group(1)).parent / "repro.py").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["suite"] == "regression" and summary["failed"] == 1
    assert summary["crashes"][0]["title"] == crash["title"]
    assert (run_dir / "report.html").exists()
    test_dir = run_dir / "test_delete_race-busy-delete"
    assert (test_dir / "report.html").exists() and (test_dir / "history.jsonl").exists()
    storm = json.loads((test_dir / "summary.json").read_text())["storm"]
    assert storm["stop_reason"] in ("crash", "connection_lost") and storm["wall_s"] < 10, storm  # well within 20 s


@pytest.mark.timeout(120)
def test_healthy_reference_target_passes_busy_delete(tmp_path: Path) -> None:
    proc, run_dir = run_suite(tmp_path, "suites/regression", "--target", "sim", "-k", "busy-delete",
                              "--duration", "8s")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "1 passed" in proc.stdout
    assert junit_failures(run_dir / "junit.xml") == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["crashes"] == [] and summary["failed"] == 0
    assert summary["ops_by_method"].get("bdev_lvol_delete", 0) > 0
