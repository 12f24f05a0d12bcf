"""A fleet run: one `StormRun` per node, all at once, evidence brought home, one merged summary on top.

Each node gets its own local directory (`<run_dir>/<node>/`, a complete run directory of its own) and its
own work directory on the node (`/tmp/lvol-storm/<run-id>/<node>`, short enough for the AF_UNIX socket).
One stop event serves every node, so a single Ctrl-C makes every storm drain, check and save. A node that
cannot start is an error of that node, never a reason to abandon the others' evidence.

Nodes that share one kernel (terraform/local's network namespaces) share `core_pattern` too, which is
machine-wide and held by whichever run set it last: their `cores` directories are then links to one
directory, so each node still finds its own core (by pid) wherever the pattern pointed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shlex
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness.config import RunConfig, apply_override
from harness.errors import ConfigError, HarnessError, HostError, TargetError
from harness.hosts.base import Host
from harness.rundir import RunDir
from harness.target import resolve_kind

Announce = Callable[[str], None]
REMOTE_WORK_ROOT = "/tmp/lvol-storm"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
TERRAFORM_MODULES = ("local", "aws-sles")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- nodes and their configs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetNode:
    """One node of a fleet run: its name (also its local subdirectory), how to reach it, its own config."""

    name: str
    host: Host
    config: RunConfig


def node_config(profile: RunConfig, *, target_settings: Mapping[str, Any] | None = None,
                bdev_settings: Sequence[Mapping[str, Any]] = (), overrides: Sequence[str] = (),
                source: str = "node") -> RunConfig:
    """The profile, then what the inventory says about the node (its spdk_tgt, cpumask, hugepages, first
    disk), then per-node `FIELD=VALUE` overrides (`target.sim_fault=abort-assert`)."""
    data = profile.model_dump(mode="json")
    data["target"].update(dict(target_settings or {}))
    if bdev_settings:
        data["bdev"].update(dict(bdev_settings[0]))
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "invalid")
        raise ConfigError(f"{source}: per-node config is invalid: {detail}") from None


def parse_node_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """`--node-set NODE:FIELD=VALUE` (NODE: a node name or its 0-based position) into {NODE: [FIELD=VALUE]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        node, sep, assignment = item.partition(":")
        if not sep or not node.strip() or "=" not in assignment:
            raise ConfigError(f"--node-set {item}: expected NODE:FIELD=VALUE, e.g. 1:target.sim_fault=abort-assert "
                              "(NODE is a node name or its position, from 0)")
        out.setdefault(node.strip(), []).append(assignment.strip())
    return out


def overrides_for(overrides: Mapping[str, Sequence[str]], names: Sequence[str]) -> list[list[str]]:
    """Each node's overrides, by name or by position; an override naming no node is a one-line error."""
    known = set(names) | {str(i) for i in range(len(names))}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"--node-set {key}:...: no node {key!r}; nodes are {', '.join(names)} "
                              f"(or positions 0..{len(names) - 1})")
    return [[*overrides.get(str(i), ()), *overrides.get(name, ())] for i, name in enumerate(names)]


def inventory_nodes(path: str | os.PathLike[str], profile: RunConfig,
                    overrides: Mapping[str, Sequence[str]] | None = None) -> list[FleetNode]:
    """The nodes of an inventory file with their configs; nothing is connected yet."""
    from harness.provision.inventory import load_inventory

    if not Path(path).is_file():
        raise ConfigError(f"--inventory: {path} does not exist (an inventory lists the lab nodes: see "
                          "docs/SUITES.md)")
    inventory = load_inventory(path)
    names = [n.name for n in inventory.nodes]
    per_node = overrides_for(overrides or {}, names)
    return [FleetNode(n.name, n.host(), node_config(profile, target_settings=n.target_settings(),
                                                    bdev_settings=n.bdev_settings(), overrides=extra,
                                                    source=f"{path}: {n.name}"))
            for n, extra in zip(inventory.nodes, per_node, strict=True)]


def hosts_as_nodes(hosts: Sequence[Host], profile: RunConfig,
                   overrides: Mapping[str, Sequence[str]] | None = None) -> list[FleetNode]:
    """Hosts without inventory settings (Terraform's, a fixture's): the profile plus per-node overrides."""
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ConfigError(f"fleet: node names must be unique, got {', '.join(names)}")
    per_node = overrides_for(overrides or {}, names)
    return [FleetNode(h.name, h, node_config(profile, overrides=extra, source=h.name))
            for h, extra in zip(hosts, per_node, strict=True)]


# -- the run ------------------------------------------------------------------------------------------------


@dataclass
class NodeResult:
    """How one node's storm ended: a RunOutcome, or the one-line error that kept it from running."""

    name: str
    run_dir: Path
    where: str
    outcome: Any = None  # harness.run.RunOutcome
    error: str | None = None
    error_kind: str | None = None

    @property
    def verdict(self) -> str:
        if self.outcome is None:
            return "error"
        if self.outcome.crash_titles:
            return "crash"
        return "findings" if self.outcome.findings else "clean"


@dataclass
class FleetOutcome:
    run_dir: Path
    summary: dict[str, Any]
    nodes: list[NodeResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """The CLI's convention over all nodes: a crash anywhere wins, then a node that could not run."""
        from harness.cli import EXIT_CRASH, EXIT_FINDINGS, EXIT_OK, EXIT_TARGET, EXIT_USAGE

        verdicts = {n.verdict for n in self.nodes}
        if "crash" in verdicts:
            return EXIT_CRASH
        if "error" in verdicts:
            return EXIT_USAGE if any(n.error_kind == "ConfigError" for n in self.nodes) else EXIT_TARGET
        return EXIT_FINDINGS if "findings" in verdicts else EXIT_OK


def short_run_id(run_dir: Path) -> str:
    """The run's name on the nodes: its directory's name, cut so every socket path stays short."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_dir.name).strip("-.") or "run"
    if len(name) > 32:
        name = f"{name[:23]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


class FleetRun:
    """Runs every node's storm concurrently (one thread each) under one stop event; `execute()` returns once
    every node has drained, saved its evidence locally and torn down, then writes the merged summary."""

    def __init__(self, config: RunConfig, run_dir: RunDir | str | os.PathLike[str], nodes: Sequence[FleetNode], *,
                 stop_event: threading.Event | None = None, announce: Announce = _stderr,
                 run_id: str | None = None, work_root: str = REMOTE_WORK_ROOT, keep_work_dirs: bool = False) -> None:
        if not nodes:
            raise ConfigError("fleet: no nodes to run on")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ConfigError(f"fleet: node names must be unique, got {', '.join(names)}")
        for name in names:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
                raise ConfigError(f"fleet: node name {name!r} must be letters, digits, '.', '_' or '-' (it names "
                                  "a directory)")
        self.config = config
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.nodes = list(nodes)
        self.stop_event = stop_event or threading.Event()
        self.announce = announce
        self.run_id = run_id or short_run_id(self.run_dir.path)
        self.work_root = work_root.rstrip("/")
        self.keep_work_dirs = keep_work_dirs
        self.results: dict[str, NodeResult] = {}
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._after: dict[str, str] = {}  # node -> the node on its kernel whose target must be up first
        self._up = {n.name: threading.Event() for n in self.nodes}
        self._unreachable: dict[str, str] = {}  # node -> why connecting failed before the storms

    def work_dir(self, node: FleetNode) -> str:
        """Where the node's target runs (socket, log, cores); on a local node, its local run directory."""
        if node.host.is_local:
            return str(self.run_dir.path / node.name)
        return f"{self.work_root}/{self.run_id}/{node.name}"

    def _node_announce(self, name: str) -> Announce:
        def announce(msg: str) -> None:
            lines = msg.splitlines() or [""]
            self.announce("\n".join(f"[{name}] {line}" for line in lines))
        return announce

    # -- before the storms ------------------------------------------------------------------------------------

    def _check_reference_target(self, node: FleetNode) -> None:
        """The reference target runs as `python -m harness.sim` on the node: say plainly when it cannot."""
        if node.host.is_local or resolve_kind(node.host, node.config.target) == "spdk":
            return
        probe = node.host.run([sys.executable, "-c", "import harness.sim"], timeout=60)
        if not probe.ok:
            why = (probe.stderr.strip().splitlines() or [f"exit {probe.rc}"])[-1]
            raise TargetError(
                f"{node.name}: the reference target runs there as `{sys.executable} -m harness.sim`, which the "
                f"node cannot start ({why}): install lvol-storm on the node (it provides spdk-sim at that path), "
                "or give the node a real spdk_tgt (spdk_tgt: in the inventory, or --target spdk)")

    def _share_cores_per_kernel(self) -> None:
        """Nodes on one kernel: point each node's `cores` at one shared directory (see the module doc), and
        start them one after another: each run sets and reads back the machine-wide core_pattern, and two
        doing that at the same moment each see the other's value and give up on cores."""
        def boot_id(node: FleetNode) -> str:
            if node.host.is_local:
                return Path(BOOT_ID).read_text().strip() if Path(BOOT_ID).exists() else ""
            try:
                res = node.host.run(["cat", BOOT_ID], timeout=30)
            except (HarnessError, OSError) as exc:  # its thread reports it, without connecting again
                self._unreachable[node.name] = str(exc)
                return ""
            return res.stdout.strip() if res.ok else ""

        with ThreadPoolExecutor(max_workers=min(16, len(self.nodes))) as pool:  # one connect timeout, not N
            boots = list(pool.map(boot_id, self.nodes))
        by_boot: dict[str, list[FleetNode]] = {}
        for node, boot in zip(self.nodes, boots, strict=True):
            if boot:
                by_boot.setdefault(boot, []).append(node)
        for group in by_boot.values():
            for before, after in itertools.pairwise(group):
                self._after[after.name] = before.name
            group = [n for n in group if not n.host.is_local]
            if len(group) < 2:
                continue
            shared = f"{self.work_root}/{self.run_id}/cores"
            for node in group:
                work = self.work_dir(node)
                try:
                    res = node.host.run(["sh", "-c", f"mkdir -p {shlex.quote(shared)} {shlex.quote(work)} && "
                                         f"rm -rf {shlex.quote(work + '/cores')} && "
                                         f"ln -s {shlex.quote(shared)} {shlex.quote(work + '/cores')}"], timeout=30)
                    failed = None if res.ok else (res.stderr.strip() or f"exit {res.rc}")
                except (HarnessError, OSError) as exc:
                    failed = str(exc)
                if failed is not None:
                    self.notes.append(f"{node.name}: could not link {work}/cores to {shared} ({failed}); "
                                      "its core may land in another node's cores directory")
            self.notes.append(f"{', '.join(n.name for n in group)} share one kernel: their cores go to {shared}")

    # -- the storms -------------------------------------------------------------------------------------------

    def _run_node(self, node: FleetNode) -> None:
        from harness.run import StormRun

        result = NodeResult(node.name, self.run_dir.path / node.name, getattr(node.host, "where", node.host.name))
        up = self._up[node.name]
        try:
            rd = RunDir(result.run_dir)
            if node.name in self._unreachable:
                raise HostError(self._unreachable[node.name])
            self._check_reference_target(node)
            self._wait_turn(node)
            run = StormRun(node.config, rd, node.host, stop_event=self.stop_event,
                           announce=self._node_announce(node.name), progress=False, work_dir=self.work_dir(node))
            threading.Thread(target=self._signal_up, args=(run, up), daemon=True,
                             name=f"lvol-storm-up-{node.name}").start()
            result.outcome = run.execute()
        except HarnessError as exc:
            result.error, result.error_kind = str(exc), type(exc).__name__
        except Exception as exc:  # one node's bug must not cost the other nodes their evidence
            result.error, result.error_kind = f"{type(exc).__name__}: {exc}", type(exc).__name__
            with contextlib.suppress(OSError):
                (result.run_dir / "error.txt").write_text(traceback.format_exc())
        finally:
            up.set()
        if result.error is not None:
            self._node_announce(node.name)(f"ERROR: {result.error}")
        with self._lock:
            self.results[node.name] = result

    def _wait_turn(self, node: FleetNode, timeout: float = 180.0) -> None:
        """Wait (bounded) until the node before this one on the same kernel has its target up, or ended."""
        before = self._after.get(node.name)
        if before is None:
            return
        deadline = time.monotonic() + timeout
        while not self._up[before].wait(0.2):
            if self.stop_event.is_set() or time.monotonic() > deadline:
                return

    def _signal_up(self, run: Any, up: threading.Event, timeout: float = 600.0) -> None:
        """`up` once the run's watchdog is on (its target started, core_pattern already set), bounded."""
        deadline = time.monotonic() + timeout
        while not up.is_set() and time.monotonic() < deadline:
            if run.watchdog is not None:
                up.set()
                return
            time.sleep(0.1)

    def _clean_work_dirs(self) -> None:
        """Evidence is local by now (target log, crash bundles, compressed cores): remove the node's copies."""
        if self.keep_work_dirs:
            return
        for node in self.nodes:
            if node.host.is_local or node.name in self._unreachable:
                continue
            with contextlib.suppress(Exception):
                node.host.run(["rm", "-rf", f"{self.work_root}/{self.run_id}"], timeout=60)

    def execute(self) -> FleetOutcome:
        t0 = time.time()
        self.run_dir.config.write_text(self.config.dump_yaml())
        self._share_cores_per_kernel()
        threads = [threading.Thread(target=self._run_node, args=(node,), name=f"lvol-storm-node-{node.name}",
                                    daemon=True) for node in self.nodes]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)  # short waits: the main thread stays responsive to Ctrl-C
        except KeyboardInterrupt:
            self.stop_event.set()
            self.announce("fleet: waiting up to 30 s for the nodes to stop their targets (Ctrl-C again to leave "
                          "them running)")
            deadline = time.monotonic() + 30.0
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            raise
        self._clean_work_dirs()
        results = [self.results.get(n.name) or NodeResult(n.name, self.run_dir.path / n.name, n.host.name,
                                                          error="the node's thread ended without a result",
                                                          error_kind="HarnessError") for n in self.nodes]
        summary = merged_summary(self.config, results, wall_s=time.time() - t0, run_id=self.run_id,
                                 interrupted=self.stop_event.is_set(), notes=self.notes)
        self.run_dir.write_json("summary.json", summary)
        try:
            from harness.report.html import write_report_html

            write_report_html(self.run_dir.path)
        except Exception as exc:  # the verdict and the files stand without the page
            self.announce(f"report.html not written: {type(exc).__name__}: {exc}")
        return FleetOutcome(self.run_dir.path, summary, results)


def merged_summary(config: RunConfig, results: Sequence[NodeResult], *, wall_s: float, run_id: str,
                   interrupted: bool, notes: Sequence[str] = ()) -> dict[str, Any]:
    """One summary.json over every node: totals, and per node its ops, ops/s, errors, findings, crashes."""
    ops_by_method: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    crash_total: Counter[str] = Counter()
    crash_nodes: dict[str, dict[str, int]] = {}
    findings: list[dict[str, Any]] = []
    nodes: dict[str, dict[str, Any]] = {}
    breakdown: list[dict[str, Any]] = []
    target: dict[str, Any] = {}
    for res in results:
        sub = res.outcome.summary if res.outcome is not None else {}
        storm = sub.get("storm") or {}
        node_ops = Counter(sub.get("ops_by_method") or {})
        node_errors = Counter(sub.get("errors_by_errno") or {})
        node_crashes = [{"title": c["title"], "count": int(c.get("count", 1))} for c in sub.get("crashes") or []]
        node_findings = [{**f, "node": res.name} for f in sub.get("findings") or [] if isinstance(f, dict)]
        ops_by_method.update(node_ops)
        errors.update(node_errors)
        findings += node_findings
        for c in node_crashes:
            crash_total[c["title"]] += c["count"]
            crash_nodes.setdefault(c["title"], {})[res.name] = c["count"]
        target = sub.get("target") or target
        ops = int(storm.get("ops") or sum(node_ops.values()))
        nodes[res.name] = {
            "host": res.where,
            "outcome": res.verdict,
            "run_dir": str(res.run_dir),
            "ops": ops,
            "ops_per_s": storm.get("ops_per_s", 0),
            "stop_reason": storm.get("stop_reason"),
            "errors_by_errno": dict(node_errors),
            "findings": len(node_findings),
            "crashes": sum(c["count"] for c in node_crashes),
            "crash_titles": node_crashes,
            "crash_dirs": list(sub.get("crash_dirs") or []),
            "target": {k: (sub.get("target") or {}).get(k) for k in ("kind", "version", "exit", "host")},
            "error": res.error,
            # the report page's node table reads these two
            "tests": 1,
            "failed": int(res.verdict != "clean"),
        }
        breakdown.append({"name": res.name, "node": res.name, "outcome": res.verdict, "ops": ops,
                          "findings": node_findings, "crashes": node_crashes, "run_dir": str(res.run_dir),
                          "message": res.error})
    return {
        "harness_version": harness.__version__,
        "fleet": True,
        "run_id": run_id,
        "profile": config.profile,
        "seed": config.storm.seed,
        "wall_s": round(wall_s, 3),
        "interrupted": interrupted,
        "target": target,
        "ops": sum(n["ops"] for n in nodes.values()),
        "ops_per_s": round(sum(float(n["ops_per_s"] or 0) for n in nodes.values()), 1),
        "ops_by_method": dict(ops_by_method),
        "errors_by_errno": dict(errors),
        "findings": findings,
        "crashes": [{"title": t, "count": n, "nodes": crash_nodes[t]}
                    for t, n in sorted(crash_total.items(), key=lambda kv: -kv[1])],
        "errors": {r.name: r.error for r in results if r.error is not None},
        "nodes": nodes,
        "breakdown": breakdown,
        "notes": list(notes),
        "config": config.model_dump(mode="json"),
    }


# -- the CLI's `run --inventory / --terraform` --------------------------------------------------------------


def check_terraform_module(module: str, variables: Mapping[str, Any],
                           environ: Mapping[str, str] | None = None) -> Path:
    """Everything that can be known before provisioning: the module, root for `local`, AWS credentials and
    `runner_cidr` for `aws-sles`. One line each, naming the fix."""
    from harness.provision.terraform import MODULES_DIR
    from harness.suite import aws_credentials_present

    path = Path(module) if os.sep in module else MODULES_DIR / module
    if not path.is_dir() or not any(path.glob("*.tf")):
        raise ConfigError(f"--terraform {module}: no Terraform module at {path}; known: "
                          f"{', '.join(TERRAFORM_MODULES)} (or a directory with *.tf files)")
    if path.name == "local" and os.geteuid() != 0:
        raise ConfigError("--terraform local: makes network namespaces on this machine and needs root: run as "
                          "root, or use --inventory FILE")
    if "aws" in path.name:
        if not aws_credentials_present(environ):
            raise ConfigError(f"--terraform {module}: needs AWS credentials: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or use --inventory FILE")
        if not variables.get("runner_cidr"):
            raise ConfigError(f"--terraform {module}: SSH is opened only to your address: pass "
                              "--tf-var runner_cidr=<your public IP>/32")
    return path


def parse_tf_vars(items: Sequence[str]) -> dict[str, Any]:
    """`--tf-var NAME=VALUE` (YAML values, so numbers stay numbers), as the suites take them."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--tf-var {item}: expected NAME=VALUE, e.g. subnet_octet=201")
        out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def terraform_run_id(run_dir: Path) -> str:
    """terraform/local names namespaces after the run id: 8 lowercase hex characters from the run dir."""
    return hashlib.sha1(str(run_dir.absolute()).encode()).hexdigest()[:8]


@contextlib.contextmanager
def terraform_hosts(module: str, run_dir: Path, *, nodes: int, keep: bool,
                    tf_vars: Mapping[str, Any] | None = None) -> Iterator[list[Host]]:
    """provisioned_hosts with the state under `<run_dir>/terraform` (destroyed on the way out unless keep)."""
    from harness.provision.terraform import provisioned_hosts

    variables = {"run_id": terraform_run_id(run_dir), "node_count": nodes, **(tf_vars or {})}
    with provisioned_hosts(module, run_dir / "terraform", variables, keep,
                           log=run_dir / "terraform.log") as hosts:
        yield hosts


def main_fleet_run(args: Any) -> int:
    """`lvol-storm run --inventory FILE` / `--terraform MODULE [--nodes N] [--keep-nodes]`."""
    try:
        return _fleet_run(args)
    except KeyboardInterrupt:  # Ctrl-C during apply (destroyed already) or a second one during the storms
        _stderr("lvol-storm: interrupted; Terraform nodes (if any) were destroyed unless --keep-nodes; "
                "what was saved is in the run directory")
        return 130


def _fleet_run(args: Any) -> int:
    from harness.run import config_from_args, interrupt_sets
    from harness.rundir import default_run_dir

    inventory, module = getattr(args, "inventory", None), getattr(args, "terraform", None)
    if inventory and module:
        raise ConfigError("--inventory and --terraform exclude each other: pick one")
    if not inventory and not module:
        raise ConfigError("--node-set, --nodes, --keep-nodes and --tf-var need --inventory FILE or --terraform MODULE")
    if not module and (getattr(args, "nodes", None) is not None or getattr(args, "keep_nodes", False)):
        raise ConfigError("--nodes and --keep-nodes only apply with --terraform MODULE")
    if not module and getattr(args, "tf_var", None):
        raise ConfigError("--tf-var only applies with --terraform MODULE")
    config = config_from_args(args)
    if getattr(args, "no_minimize", False):
        config = config.model_copy(update={"minimize": config.minimize.model_copy(update={"enabled": False})})
    overrides = parse_node_overrides(getattr(args, "node_set", None) or [])
    stop = threading.Event()
    if inventory:
        nodes = inventory_nodes(inventory, config, overrides)  # a bad inventory: one line, nothing started
        run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
        with interrupt_sets(stop):
            outcome = FleetRun(config, run_dir, nodes, stop_event=stop).execute()
        print_fleet_summary(outcome)
        return outcome.exit_code
    count = args.nodes if args.nodes is not None else 1
    if count < 1:
        raise ConfigError(f"--nodes: must be >= 1, got {count}")
    tf_vars = parse_tf_vars(getattr(args, "tf_var", None) or [])
    check_terraform_module(module, tf_vars)
    for key in overrides:  # names are known only after apply; positions can be checked now
        if key.isdigit() and int(key) >= count:
            raise ConfigError(f"--node-set {key}:...: there are {count} node(s) (positions 0..{count - 1})")
    run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
    with terraform_hosts(module, run_dir.path, nodes=count, keep=args.keep_nodes, tf_vars=tf_vars) as hosts:
        nodes = hosts_as_nodes(hosts, config, overrides)
        with interrupt_sets(stop):  # inside the session: Ctrl-C now drains the storms; destroy still follows
            outcome = FleetRun(config, run_dir, nodes, stop_event=stop).execute()
    print_fleet_summary(outcome)
    return outcome.exit_code


def print_fleet_summary(outcome: FleetOutcome) -> None:
    """One line per node and the merged crash titles: the numbers of summary.json."""
    from rich.console import Console
    from rich.table import Table

    s = outcome.summary
    console = Console(stderr=False)
    table = Table(title=f"fleet run {s['run_id']} ({outcome.run_dir})", show_edge=False)
    for col in ("node", "outcome", "ops", "ops/s", "errors", "findings", "crashes"):
        table.add_column(col, justify="right" if col in ("ops", "ops/s", "findings", "crashes") else "left")
    for name, n in s["nodes"].items():
        errs = ", ".join(f"{k} {v}" for k, v in sorted(n["errors_by_errno"].items(), key=lambda kv: -kv[1])[:3])
        table.add_row(name, n["outcome"], str(n["ops"]), str(n["ops_per_s"]), errs, str(n["findings"]),
                      str(n["crashes"]))
    console.print(table)
    for name, err in s["errors"].items():
        console.print(f"[bold red]ERROR[/] {name}: {err}")
    for c in s["crashes"]:
        where = ", ".join(f"{k} x{v}" for k, v in c["nodes"].items())
        console.print(f"[bold red]CRASH[/] {c['title']} x{c['count']} ({where})")
    verdict = {0: "[green]clean[/]", 1: "[red]findings[/]", 2: "[red]error[/]", 3: "[bold red]crash[/]",
               4: "[red]error[/]"}[outcome.exit_code]
    console.print(f"verdict: {verdict}; summary: {outcome.run_dir / 'summary.json'}")
