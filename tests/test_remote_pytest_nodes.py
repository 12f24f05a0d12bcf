"""The pytest plugin's `nodes` fixture: `--terraform local` provisions for the session and destroys after it;
bad node options stop pytest in one line before anything is provisioned."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.nodes import terraform_run_id
from tests.test_remote_fleet import _free_octet, _leftovers, _wait_gone, needs_netns

USES_NODES = textwrap.dedent("""
    import json, os

    def test_nodes(nodes):
        hosts = [n.host() for n in nodes]
        out = {"names": [h.name for h in hosts], "local": [h.is_local for h in hosts],
               "addrs": [h.run(["ip", "-o", "-4", "addr", "show"]).stdout for h in hosts]}
        with open(os.environ["NODES_OUT"], "w") as f:
            json.dump(out, f)
""")


def _pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_uses_nodes.py").write_text(USES_NODES)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-q", str(tmp_path / "test_uses_nodes.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "NODES_OUT": str(tmp_path / "nodes.json"), **(env or {})})


def test_nodes_default_to_this_machine(tmp_path: Path) -> None:
    res = _pytest(tmp_path, "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert '"local": [true]' in (tmp_path / "nodes.json").read_text()


@pytest.mark.parametrize(("flags", "message"), [
    (["--inventory", "/nonexistent/lab.yaml"], "ERROR: --inventory: /nonexistent/lab.yaml does not exist"),
    (["--terraform", "aws-sles"], "ERROR: --terraform aws-sles: needs AWS credentials"),
    (["--terraform", "nosuch"], "ERROR: --terraform nosuch: no Terraform module"),
])
def test_bad_node_options_are_one_line_usage_errors(tmp_path: Path, flags: list[str], message: str) -> None:
    env = {k: "" for k in os.environ if k.startswith("AWS_")}
    res = _pytest(tmp_path, *flags, "--run-dir", str(tmp_path / "run"), env={**env, "HOME": str(tmp_path)})
    assert res.returncode == 4, res.stdout + res.stderr
    assert message in res.stderr, res.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "nodes.json").exists()


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(120)
def test_terraform_nodes_fixture_provisions_for_the_session_and_destroys(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    octet = _free_octet(40)
    try:
        res = _pytest(tmp_path, "--terraform", "local", "--nodes", "2", "--tf-var", f"subnet_octet={octet}",
                      "--run-dir", str(run_dir))
    finally:
        left = _wait_gone(terraform_run_id(run_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert not left, left
    text = (tmp_path / "nodes.json").read_text()
    tf_id = terraform_run_id(run_dir)
    assert f'"names": ["lvs-{tf_id}-0", "lvs-{tf_id}-1"]' in text and '"local": [false, false]' in text
    assert f"10.213.{octet}.2/30" in text and f"10.213.{octet}.6/30" in text  # each command ran in its namespace
    assert "terraform destroy" in (run_dir / "terraform.log").read_text()
    assert not _leftovers(tf_id)
