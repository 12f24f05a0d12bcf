"""A fleet run: one `StormRun` per node, all at once, evidence brought home, one merged summary on top.

Each node gets its own local directory (`<run_dir>/<node>/`, a complete run directory of its own) and its
own work directory on the node (`Host.private_dir`: `mktemp -d` under /tmp as the login user, 0700, a name
nobody can guess and make first, short enough for the AF_UNIX socket).
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.errors import ConfigError, HarnessError, HostError, TargetError
from harness.hosts.base import Host
from harness.nodes import Node
from harness.outcome import ExitCode, Verdict, exit_code_of, worst
from harness.report.html import write_report_html
from harness.run import RunOutcome, StormRun
from harness.rundir import RunDir
from harness.summary import Part, Summary
from harness.target import resolve_kind, sim_python

Announce = Callable[[str], None]
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FleetNode:
    """A node as the fleet runs it: its Host and its own config, both resolved before any storm starts."""

    name: str
    host: Host
    config: RunConfig


@dataclass
class NodeResult:
    """How one node's storm ended: a RunOutcome, or the one-line error that kept it from running."""

    name: str
    run_dir: Path
    where: str
    outcome: RunOutcome | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.outcome is None:
            return Verdict.ERROR
        return self.outcome.verdict


@dataclass
class FleetOutcome:
    run_dir: Path
    summary: Summary
    nodes: list[NodeResult] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        """The CLI's convention over all nodes: a crash anywhere wins, then a node that could not run."""
        verdict = worst(n.verdict for n in self.nodes)
        return exit_code_of(verdict, usage_error=any(n.error_kind == "ConfigError" for n in self.nodes))


def short_run_id(run_dir: Path) -> str:
    """The run's name on the nodes: its directory's name, cut so every socket path stays short."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_dir.name).strip("-.") or "run"
    if len(name) > 32:
        name = f"{name[:23]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


class FleetRun:
    """Runs every node's storm concurrently (one thread each) under one stop event; `execute()` returns once
    every node has drained, saved its evidence locally and torn down, then writes the merged summary."""

    def __init__(self, config: RunConfig, run_dir: RunDir | str | os.PathLike[str], nodes: Sequence[Node], *,
                 stop_event: threading.Event | None = None, announce: Announce = _stderr,
                 run_id: str | None = None, keep_work_dirs: bool = False) -> None:
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
        self.nodes = [FleetNode(n.name, n.host(), n.config(config)) for n in nodes]  # one-line errors first
        self.stop_event = stop_event or threading.Event()
        self.announce = announce
        self.run_id = run_id or short_run_id(self.run_dir.path)
        self.keep_work_dirs = keep_work_dirs
        self._work_dirs: dict[str, str] = {}  # remote node -> its private work dir on the node
        self._made: list[tuple[Host, str]] = []  # every directory this fleet made on a node, to remove
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
        return self._work_dirs[node.name]

    def _private_dir(self, host: Host, prefix: str = "lvol-storm") -> str:
        path = host.private_dir(prefix)
        with self._lock:
            self._made.append((host, path))
        return path

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
        python = sim_python(node.host)
        probe = node.host.run([python, "-c", "import harness.sim"], timeout=60)
        if not probe.ok:
            why = (probe.stderr.strip().splitlines() or [f"exit {probe.rc}"])[-1]
            mine = "" if python == sys.executable else f" (this harness runs {sys.executable}, absent there)"
            raise TargetError(
                f"{node.name}: the reference target runs there as `{python} -m harness.sim`{mine}, which the "
                f"node cannot start ({why}): install lvol-storm on the node (it provides spdk-sim at that path), "
                "or give the node a real spdk_tgt (spdk_tgt: in the inventory, or --target spdk)")

    def _share_cores_per_kernel(self) -> None:
        """Nodes on one kernel: point each node's `cores` at one shared directory (see the module doc), and
        start them one after another: each run sets and reads back the machine-wide core_pattern, and two
        doing that at the same moment each see the other's value and give up on cores."""
        def first_contact(node: FleetNode) -> str:
            """The node's kernel (boot id); a remote node's private work dir is made on the same connection."""
            if node.host.is_local:
                return Path(BOOT_ID).read_text().strip() if Path(BOOT_ID).exists() else ""
            try:
                res = node.host.run(["cat", BOOT_ID], timeout=30)
                self._work_dirs[node.name] = self._private_dir(node.host)
            except (HarnessError, OSError) as exc:  # its thread reports it, without connecting again
                self._unreachable[node.name] = str(exc)
                return ""
            return res.stdout.strip() if res.ok else ""

        with ThreadPoolExecutor(max_workers=min(16, len(self.nodes))) as pool:  # one connect timeout, not N
            boots = list(pool.map(first_contact, self.nodes))
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
            try:
                shared = self._private_dir(group[0].host, "lvol-storm-cores")
            except (HarnessError, OSError) as exc:
                self.notes.append(f"{', '.join(n.name for n in group)} share one kernel, but no cores directory "
                                  f"could be made for them ({exc}); a core may land in another node's directory")
                continue
            for node in group:
                work = self.work_dir(node)
                try:
                    res = node.host.run(["sh", "-c", f"rm -rf {shlex.quote(work + '/cores')} && "
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
        for host, path in self._made:
            with contextlib.suppress(Exception):
                host.run(["rm", "-rf", path], timeout=60)

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
        self.run_dir.write_json("summary.json", summary.to_json())
        try:
            write_report_html(self.run_dir.path)
        except Exception as exc:  # the verdict and the files stand without the page
            self.announce(f"report.html not written: {type(exc).__name__}: {exc}")
        return FleetOutcome(self.run_dir.path, summary, results)


def merged_summary(config: RunConfig, results: Sequence[NodeResult], *, wall_s: float, run_id: str,
                   interrupted: bool, notes: Sequence[str] = ()) -> Summary:
    """One summary.json over every node: totals, and per node its ops, ops/s, errors, findings, crashes."""
    parts: list[tuple[Part, Summary | None]] = []
    nodes: dict[str, dict[str, Any]] = {}
    for res in results:
        sub = res.outcome.summary if res.outcome is not None else None
        storm = (sub.storm if sub is not None else None) or {}
        parts.append((Part(name=res.name, node=res.name, outcome=res.verdict.value, run_dir=str(res.run_dir),
                           message=res.error), sub))
        nodes[res.name] = {
            "host": res.where,
            "outcome": res.verdict.value,
            "run_dir": str(res.run_dir),
            "ops": sub.ops if sub is not None else 0,
            "ops_per_s": sub.ops_per_s if sub is not None else 0,
            "stop_reason": storm.get("stop_reason"),
            "errors_by_errno": dict(sub.errors_by_errno) if sub is not None else {},
            "findings": len(sub.findings) if sub is not None else 0,
            "crashes": sub.crash_count if sub is not None else 0,
            "crash_titles": [{"title": c.title, "count": c.count} for c in sub.crashes] if sub is not None else [],
            "crash_dirs": list(sub.crash_dirs) if sub is not None else [],
            "target": {k: (sub.target if sub is not None else {}).get(k) for k in ("kind", "version", "exit", "host")},
            "error": res.error,
            # the report page's node table reads these two
            "tests": 1,
            "failed": int(res.verdict is not Verdict.CLEAN),
        }
    return Summary.merge(
        "fleet", parts, profile=config.profile, seed=config.storm.seed, wall_s=round(wall_s, 3),
        notes=list(notes), config=config.model_dump(mode="json"), fleet=True, run_id=run_id,
        interrupted=interrupted, nodes=nodes, errors={r.name: r.error for r in results if r.error is not None})
