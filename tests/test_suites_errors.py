"""Bad input to the suites stops pytest with one clear line before any target starts or node is provisioned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, *args: str) -> tuple[int, str, Path]:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SPDK_", "PYTEST_XDIST")) and k != "LVOL_STORM_TARGET"}
    env["HOME"] = str(tmp_path)  # no ~/.aws/credentials
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "--run-dir", str(run_dir), "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout + proc.stderr, run_dir


def error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize(("args", "expect"), [
    (["suites/regression"], "regression: needs a real spdk_tgt and none was found (set SPDK_TGT or --spdk-tgt); "
                            "pass --target sim"),
    (["suites/regression", "--target", "auto"], "pass --target sim to run it against the reference target"),
    (["suites/regression", "--set", "target.kind=sim"], "regression: refuses the reference target"),
    (["suites/soak", "--target", "auto"], "soak: needs a real spdk_tgt"),
    (["suites/regression", "--sim-fault", "forced-removal"], "--sim-fault only applies to the reference target: "
                                                             "add --target sim"),
    (["suites/nightly"], "nightly: --terraform aws-sles: needs AWS credentials: set AWS_ACCESS_KEY_ID"),
    (["suites/soak"], "soak: needs an inventory of lab machines: --inventory FILE"),
    (["suites/nightly", "--tf-var", "region"], "--tf-var region: expected NAME=VALUE"),
    (["suites/soak", "--inventory", "missing-lab.yaml"], "soak: --inventory: missing-lab.yaml does not exist"),
    (["suites/smoke", "--target", "sim", "--set", "storm.bogus=1"], "storm.bogus: unknown field"),
    (["suites/smoke", "--target", "sim", "--set", "storm.workers=many"], "storm.workers: Input should be a valid "
                                                                         "integer"),
    (["suites/smoke", "--target", "sim", "--profile", "nope"], "--profile: no profile named 'nope'"),
    (["suites/regression", "--target", "sim", "--sim-fault", "bogus"], "unknown fault mode 'bogus'"),
    (["suites/nightly", "--target", "sim"], "add --bdev malloc"),
    (["suites"], "run one suite at a time"),
    (["suites/regression", "--target", "sim", "--inventory", "lab.yaml"], "regression: runs on this machine"),
])
def test_bad_input_is_one_line_before_anything_starts(tmp_path: Path, args: list[str], expect: str) -> None:
    rc, out, run_dir = run(tmp_path, *args)
    assert rc == pytest.ExitCode.USAGE_ERROR, out[-2000:]
    assert expect in error_line(out)
    assert not run_dir.exists() or not any(run_dir.iterdir()), "a refused suite must not create artefacts"


def test_unknown_suite_is_an_error(tmp_path: Path) -> None:
    rc, out, _ = run(tmp_path, "suites/bogus")
    assert rc == pytest.ExitCode.USAGE_ERROR
    assert "suites/bogus" in error_line(out)


def test_nightly_with_credentials_still_needs_the_runner_address(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n")
    rc, out, run_dir = run(tmp_path, "suites/nightly")
    assert rc == pytest.ExitCode.USAGE_ERROR
    assert "--tf-var runner_cidr=<your public IP>/32" in error_line(out)
    assert not (run_dir / "terraform").exists()


def test_bad_known_issues_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ki.yaml"
    bad.write_text("issues:\n  - crash: 'SIGSEGV'\n    policy: ignore\n    link: https://example.invalid/1\n")
    rc, out, _ = run(tmp_path, "suites/nightly", "--target", "sim", "--bdev", "malloc", "--known-issues", str(bad))
    assert rc == pytest.ExitCode.USAGE_ERROR
    assert "issues[0].policy: expected one of fail, xfail, avoid, got 'ignore'" in error_line(out)


@pytest.mark.skipif(os.geteuid() != 0, reason="--terraform local is checked for root before anything")
def test_collect_only_provisions_nothing(tmp_path: Path) -> None:
    """`--collect-only` (and `--help`) list what would run: no terraform init/apply/destroy, no target."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pytest", "suites/nightly", "--terraform", "local", "--nodes", "2",
                           "--target", "sim", "--bdev", "malloc", "--co", "-q", "-p", "no:cacheprovider",
                           "--run-dir", str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_mixed_storm[node0]" in proc.stdout and "test_mixed_storm[node1]" in proc.stdout
    assert "INTERNALERROR" not in proc.stdout + proc.stderr
    assert not (run_dir / "terraform").exists() and not (run_dir / "terraform.log").exists()
