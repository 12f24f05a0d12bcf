"""The smoke suite in its CI form (short) against the reference target: passes, every operation sent, the
effective config (profile + `--set`) saved in the run directory, JUnit XML and report beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from harness.storm.operations import KNOWN_METHODS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_smoke_suite_passes_and_sends_every_operation(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "suites/smoke", "--target", "sim", "--duration", "8s",
         "--set", "storm.workers=3", "--run-dir", str(run_dir), "-q", "-p", "no:cacheprovider", "-o", "timeout=0"],
        cwd=REPO, capture_output=True, text=True, timeout=110, env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    suite = ET.parse(run_dir / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "0"

    test_dir = run_dir / "test_every_operation"
    for cfg_path in (run_dir / "config.yaml", test_dir / "config.yaml"):
        cfg = yaml.safe_load(cfg_path.read_text())
        assert cfg["profile"] == "smoke"
        assert cfg["storm"]["workers"] == 3, f"{cfg_path}: --set storm.workers=3 not in the effective config"
        assert cfg["target"]["kind"] == "sim"
    run_summary = json.loads((test_dir / "summary.json").read_text())
    done = run_summary["ops_by_method"]
    assert not [m for m in KNOWN_METHODS if not done.get(m) and m != "bdev_lvol_rename_lvstore"], done
    assert run_summary["crashes"] == [] and run_summary["findings"] == []
    session = json.loads((run_dir / "summary.json").read_text())
    assert session["suite"] == "smoke" and session["failed"] == 0
    assert session["ops_by_method"] == done
    assert (run_dir / "report.html").stat().st_size > 1000
