"""`lvol-storm run --inventory/--terraform`: refusals before anything starts, an inventory's settings reaching
each node, and a Ctrl-C in the middle of a Terraform run still draining, saving and destroying."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.nodes import terraform_hosts, terraform_run_id
from tests.test_remote_fleet import LVOL_STORM, REPO, _free_octet, _wait_gone, needs_netns, work_dirs


def test_cli_refuses_bad_node_flags_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws/credentials
    bad_inv = tmp_path / "lab.yaml"
    bad_inv.write_text("nodes:\n  - name: lab1\n    address: 192.0.2.1\n    key: /nonexistent/key\n")
    cases = [
        (["--inventory", str(tmp_path / "missing.yaml")], "--inventory: "),
        (["--inventory", str(bad_inv)], "nodes[0].key"),
        (["--terraform", "aws-sles", "--nodes", "2"], "needs AWS credentials"),
        (["--terraform", "nosuch"], "no Terraform module"),
        (["--nodes", "2"], "need --inventory FILE or --terraform MODULE"),
        (["--inventory", str(bad_inv), "--terraform", "local"], "exclude each other"),
    ]
    for flags, message in cases:
        run_dir = tmp_path / f"run{len(flags)}"
        res = subprocess.run([*LVOL_STORM, "run", "--target", "sim", *flags, "--run-dir", str(run_dir)],
                             capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
        assert res.returncode == 2, (flags, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (flags, res.stderr)
        assert not run_dir.exists(), flags  # nothing was provisioned or started


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(150)
def test_sigint_mid_storm_drains_saves_and_still_destroys(tmp_path: Path) -> None:
    """`lvol-storm run --terraform local --nodes 1 --duration 60s`, SIGINT once the storm runs: the storm
    drains, summary.json is written, Terraform destroys the node, and the command ends well before 60 s."""
    run_dir = tmp_path / "sig"
    proc = subprocess.Popen([*LVOL_STORM, "run", "--terraform", "local", "--nodes", "1", "--duration", "60s",
                             "--target", "sim", "--profile", "smoke", "--no-minimize", "--tf-var",
                             f"subnet_octet={_free_octet(20)}", "--run-dir", str(run_dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True)
    reader.start()
    tf_id = terraform_run_id(run_dir)
    before = work_dirs()
    try:
        deadline = time.monotonic() + 60
        started = False
        while time.monotonic() < deadline and proc.poll() is None:
            hist = list(run_dir.glob("lvs-*/history.jsonl"))
            if hist and sum(1 for _ in hist[0].open()) > 20:
                started = True
                break
            time.sleep(0.3)
        assert started, "".join(out)
        t_sig = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=90)
        reader.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = _wait_gone(tf_id, before)
    assert not left, left
    assert time.monotonic() - t_sig < 45, "".join(out)
    assert rc == 0, "".join(out)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["interrupted"] is True
    (name, node), = s["nodes"].items()
    assert node["stop_reason"] == "interrupted" and node["ops"] > 20, node
    assert (run_dir / name / "summary.json").exists() and (run_dir / name / "target.log").stat().st_size > 0
    assert "terraform destroy" in (run_dir / "terraform.log").read_text()


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(90)
def test_cli_run_with_an_inventory_applies_node_settings(tmp_path: Path) -> None:
    """`lvol-storm run --inventory FILE`: the inventory's per-node settings (cpumask) and a --node-set reach
    each node's config, both nodes storm, one merged summary."""
    import yaml

    state = tmp_path / "tf"
    state.mkdir()
    run_dir = tmp_path / "inv"
    before = work_dirs()
    try:
        with terraform_hosts("local", state, nodes=2, keep=False, tf_vars={"subnet_octet": _free_octet(50)}) as hosts:
            inventory = tmp_path / "lab.yaml"
            inventory.write_text(yaml.safe_dump({"nodes": [
                {"name": f"lab{i}", "address": h.address, "user": h.user, "key": h.key_path,  # type: ignore[attr-defined]
                 "known_hosts": h.known_hosts, "cpumask": "0x3" if i else "0x1"}  # type: ignore[attr-defined]
                for i, h in enumerate(hosts)]}))
            res = subprocess.run([*LVOL_STORM, "run", "--inventory", str(inventory), "--target", "sim", "--profile",
                                  "smoke", "--duration", "3s", "--node-set", "lab0:storm.workers=1",
                                  "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=80, cwd=REPO)
    finally:
        left = _wait_gone(terraform_run_id(state), before)
    assert not left, left
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert {n: v["outcome"] for n, v in s["nodes"].items()} == {"lab0": "clean", "lab1": "clean"}
    assert all(v["ops"] > 20 for v in s["nodes"].values()), s["nodes"]
    cfg0 = yaml.safe_load((run_dir / "lab0" / "config.yaml").read_text())
    cfg1 = yaml.safe_load((run_dir / "lab1" / "config.yaml").read_text())
    assert (cfg0["target"]["cpumask"], cfg0["storm"]["workers"]) == ("0x1", 1)
    assert cfg1["target"]["cpumask"] == "0x3" and cfg1["storm"]["workers"] != 1
    assert "lab0" in res.stdout and "lab1" in res.stdout and "verdict: clean" in res.stdout

