"""The suites users run (smoke, regression, nightly, soak): what each needs, and how a long one keeps going.

A suite is a profile plus rules about where it may run: regression, nightly and soak refuse the reference
target unless asked for it by name, nightly provisions Terraform nodes unless given machines, soak needs an
inventory. Those checks run before anything starts, so a mistake costs one line, not a provisioned cluster.
Nightly and soak outlive crashes: `LongRun` restarts the target on a fresh lvstore after each one (a new
`inc-NNN` directory per incarnation), counts crashes by title, applies known-issue policies, prints a health
line every minute, and keeps summary.json and report.html valid at any moment.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

import harness
from harness.config import RunConfig
from harness.errors import ConfigError, HarnessError, TargetError
from harness.hosts.base import Host
from harness.known_issues import KnownIssues
from harness.report.html import history_sources, write_report_html
from harness.report.timeline import Timeline
from harness.report.title import title_slug
from harness.rundir import RunDir

Announce = Callable[[str], None]
Where = Literal["local", "terraform", "inventory"]
TERRAFORM_MODULE = "aws-sles"
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class SuiteSpec:
    """What a suite runs (its profile) and what it needs before it may start."""

    name: str
    profile: str
    refuses_sim: bool
    where: Where
    long_run: bool
    needs: str

    @property
    def suppresses(self) -> bool:
        """Only long runs consult known issues; the regression suite never suppresses anything."""
        return self.long_run


SUITES: dict[str, SuiteSpec] = {
    "smoke": SuiteSpec("smoke", "smoke", False, "local", False,
                       "nothing: runs against spdk_tgt if found, else the reference target"),
    "regression": SuiteSpec("regression", "regression", True, "local", False,
                            "a real spdk_tgt (SPDK_TGT or --spdk-tgt), or --target sim"),
    "nightly": SuiteSpec("nightly", "nightly", True, "terraform", True,
                         "AWS credentials for terraform/aws-sles, or --inventory FILE, or --target spdk|sim"),
    "soak": SuiteSpec("soak", "soak", True, "inventory", True,
                      "an inventory (--inventory FILE / make soak INVENTORY=FILE), or --target spdk|sim"),
}


def suite_named(name: str) -> SuiteSpec:
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(f"unknown suite {name!r}; known: {', '.join(SUITES)}") from None


def suite_of_paths(args: Sequence[str], suites_dir: Path) -> SuiteSpec | None:
    """The suite the command line points into (`suites/regression`, `suites/soak/test_soak.py::x`)."""
    found: set[str] = set()
    root = suites_dir.resolve()
    for arg in args:
        if arg.startswith("-"):
            continue
        path = Path(arg.split("::", 1)[0]).resolve()
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        if not rel.parts:
            raise ConfigError(f"{arg}: run one suite at a time: {', '.join(f'suites/{s}' for s in SUITES)}")
        found.add(rel.parts[0])
    if len(found) > 1:
        raise ConfigError(f"run one suite at a time, got {', '.join(sorted(found))}")
    return suite_named(found.pop()) if found else None


# -- checks before anything starts ----------------------------------------------------------------------


def check_target_choice(spec: SuiteSpec, target_flag: str | None, config: RunConfig, *,
                        remote: bool, spdk_tgt_found: bool) -> None:
    """Refuse the reference target where the suite needs a real one, unless `--target sim` says so."""
    if config.target.sim_fault and config.target.kind != "sim" and target_flag != "sim":
        raise ConfigError(f"{spec.name}: --sim-fault only applies to the reference target: add --target sim")
    if not spec.refuses_sim or target_flag == "sim":
        return
    if config.target.kind == "sim":
        raise ConfigError(f"{spec.name}: refuses the reference target (target.kind: sim from the profile or "
                          "--set); pass --target sim to run it against spdk-sim on purpose")
    if not remote and not spdk_tgt_found:
        raise ConfigError(f"{spec.name}: needs a real spdk_tgt and none was found (set SPDK_TGT or "
                          "--spdk-tgt); pass --target sim to run it against the reference target on purpose")


def aws_credentials_present(environ: Mapping[str, str] | None = None, home: Path | None = None) -> bool:
    env = os.environ if environ is None else environ
    if all(env.get(v) for v in AWS_CREDENTIAL_VARS):
        return True
    if env.get("AWS_PROFILE") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    base = home if home is not None else Path(env.get("HOME", str(Path.home())))
    creds = Path(env.get("AWS_SHARED_CREDENTIALS_FILE", str(base / ".aws" / "credentials")))
    return creds.is_file() and "aws_access_key_id" in creds.read_text(errors="replace")


def terraform_module_dir(name: str) -> Path:
    from harness.provision.terraform import MODULES_DIR

    path = Path(name) if os.sep in name else MODULES_DIR / name
    return path


def resolve_where(spec: SuiteSpec, *, inventory: str | None, target_flag: str | None,
                  terraform_module: str | None = None) -> Where:
    """Where the suite's targets run: `--inventory` wins, then an explicit `--terraform-module`; an explicit
    `--target` alone means this machine."""
    if spec.where == "local" and (inventory or terraform_module):
        raise ConfigError(f"{spec.name}: runs on this machine; --inventory and --terraform-module are for "
                          "nightly and soak")
    if inventory:
        if terraform_module:
            raise ConfigError(f"{spec.name}: --inventory and --terraform-module exclude each other: pick one")
        return "inventory"
    if terraform_module:
        return "terraform"
    if target_flag is not None:
        return "local"
    if spec.where == "inventory":
        raise ConfigError(f"{spec.name}: needs an inventory of lab machines: --inventory FILE "
                          f"(make {spec.name} INVENTORY=FILE), or --target spdk|sim to run on this machine")
    return spec.where


def check_terraform_ready(spec: SuiteSpec, module: str, variables: Mapping[str, Any] | None = None,
                          environ: Mapping[str, str] | None = None) -> Path:
    """Before provisioning anything: the module exists, AWS credentials are there, required variables set."""
    path = terraform_module_dir(module)
    if not (path / "main.tf").exists() and not any(path.glob("*.tf")):
        raise ConfigError(f"{spec.name}: Terraform module {path} not found; pass --inventory FILE or "
                          "--target spdk|sim to run without provisioning")
    if module.endswith("aws-sles") or "aws" in path.name:
        if not aws_credentials_present(environ):
            raise ConfigError(f"{spec.name}: provisioning {path.name} needs AWS credentials: set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run on your own "
                              "machines with --inventory FILE, or on this one with --target spdk|sim")
        if not (variables or {}).get("runner_cidr"):
            raise ConfigError(f"{spec.name}: terraform/{path.name} opens SSH only to your address: pass "
                              "--tf-var runner_cidr=<your public IP>/32")
    return path


# -- nodes ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One machine a suite runs its target on: this one (`local`), or a node of an inventory (lab or Terraform)."""

    name: str
    spec: Any = None  # harness.provision.inventory.InventoryNode

    @property
    def is_local(self) -> bool:
        return self.spec is None

    def host(self) -> Host:
        from harness.hosts.local import LocalHost

        return LocalHost() if self.spec is None else self.spec.host()

    def apply(self, config: RunConfig) -> RunConfig:
        """The run config with what the node decides: its spdk_tgt, cpumask, hugepages and first disk."""
        if self.spec is None:
            return config
        data = config.model_dump(mode="json")
        data["target"].update(self.spec.target_settings())
        disks = self.spec.bdev_settings()
        if disks:
            data["bdev"].update(disks[0])
        return RunConfig.model_validate(data)


LOCAL_NODE = Node("local")


def load_nodes(path: str | Path) -> list[Node]:
    """The nodes of an inventory file (harness.provision.inventory's format; see docs/SUITES.md)."""
    from harness.provision.inventory import load_inventory

    if not Path(path).is_file():
        raise ConfigError(f"--inventory: {path} does not exist (an inventory lists the lab nodes: see docs/SUITES.md)")
    return [Node(n.name, n) for n in load_inventory(path).nodes]


def inventory_from_terraform(outputs: Mapping[str, Any], dest_dir: Path) -> Path:
    """Terraform's output contract (nodes, private_key_path, known_hosts) as an inventory file, so xdist
    workers and a later `--inventory` rerun read the nodes the same way."""
    from harness.provision.terraform import nodes_from_outputs

    specs = nodes_from_outputs(outputs)
    known = dest_dir / "known_hosts"
    known.write_text(specs[0].known_hosts if specs[0].known_hosts.endswith("\n") else specs[0].known_hosts + "\n")
    data = {"nodes": [{"name": s.name, "address": s.address, "user": s.user, "port": s.port,
                       "key": s.private_key_path, "known_hosts": str(known)} for s in specs]}
    path = dest_dir / "nodes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- long runs: incarnations ----------------------------------------------------------------------------


def without_avoided(config: RunConfig, strategies: set[str], methods: set[str]) -> RunConfig:
    """The config minus the strategies and mix methods that known issues say to stop issuing."""
    if not strategies and not methods:
        return config
    data = config.model_dump(mode="json")
    storm = data["storm"]
    storm["strategies"] = {k: v for k, v in storm["strategies"].items() if k not in strategies}
    storm["mix"] = {k: v for k, v in storm["mix"].items() if k not in methods}
    if not storm["mix"] and not storm["strategies"]:
        raise ConfigError("known issues: the avoid entries remove every method and strategy; nothing left to run")
    return RunConfig.model_validate(data)


def with_storm(config: RunConfig, **storm: Any) -> RunConfig:
    data = config.model_dump(mode="json")
    data["storm"].update(storm)
    return RunConfig.model_validate(data)


@dataclass
class Incarnation:
    """One target's life inside a long run."""

    name: str
    path: Path
    started: float
    ended: float | None = None
    outcome: str = "running"
    ops: int = 0
    crashes: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class LongRunOutcome:
    run_dir: Path
    summary: dict[str, Any]
    failing: list[str]
    crash_counts: dict[str, int]
    incarnations: list[Incarnation]

    @property
    def passed(self) -> bool:
        return not self.failing


class LongRun:
    """Nightly and soak: storm, and after a crash start a fresh target on a fresh lvstore, until the duration
    ends or `stop_event` is set. Known issues decide what fails the run; regression does not use this."""

    MAX_INCARNATIONS = 10_000
    MIN_USEFUL_S = 2.0

    def __init__(self, suite: str, config: RunConfig, run_dir: str | Path, host: Host, *,
                 known: KnownIssues | None = None, stop_event: threading.Event | None = None,
                 announce: Announce | None = None, health_every_s: float = 60.0, report_every_s: float = 60.0,
                 node: str = "local", work_dir: str | None = None) -> None:
        self.suite = suite
        self.config = config
        self.run_dir = RunDir(run_dir)
        self.host = host
        self.known = known or KnownIssues()
        self.stop_event = stop_event or threading.Event()
        self.announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.health_every_s = health_every_s
        self.report_every_s = report_every_s
        self.node = node
        self.work_dir = work_dir
        self.timeline = Timeline()
        self.incarnations: list[Incarnation] = []
        self.crash_counts: Counter[str] = Counter()
        self.failing: list[str] = []
        self.known_hits: Counter[str] = Counter()
        self.minimized_titles: set[str] = set()  # each crash title is minimized once per long run
        self.avoid_strategies, self.avoid_methods = self.known.avoided()
        self.started = time.time()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._last_health = self.started

    # -- the loop ---------------------------------------------------------------------------------------

    def execute(self) -> LongRunOutcome:
        from harness.run import StormRun

        duration = self.config.storm.duration
        deadline = self.started + duration if duration > 0 else None
        base_seed = self.config.storm.seed
        self.run_dir.config.write_text(self.config.dump_yaml())
        reporter = threading.Thread(target=self._report_loop, name="lvol-storm-rolling-report", daemon=True)
        reporter.start()
        try:
            while not self.stop_event.is_set() and len(self.incarnations) < self.MAX_INCARNATIONS:
                remaining = deadline - time.time() if deadline is not None else 0.0
                if deadline is not None and remaining < 1.0:
                    break
                n = len(self.incarnations) + 1
                inc_dir = RunDir(self.run_dir.path / f"inc-{n:03d}")
                inc = Incarnation(inc_dir.path.name, inc_dir.path, time.time())
                with self._lock:
                    self.incarnations.append(inc)
                cfg = with_storm(without_avoided(self.config, self.avoid_strategies, self.avoid_methods),
                                 duration=round(remaining, 3), seed=base_seed + n - 1)
                work = f"{self.work_dir}/{inc.name}" if self.work_dir else None
                try:
                    outcome = StormRun(cfg, inc_dir, self.host, stop_event=self.stop_event,
                                       announce=self.announce, progress=False, work_dir=work,
                                       minimized_titles=self.minimized_titles).execute()
                except TargetError as exc:
                    self._end(inc, "target did not start", {})
                    self.failing.append(f"{inc.name}: {exc}")
                    break
                self._end(inc, "crash" if outcome.crash_titles else ("findings" if outcome.findings else "clean"),
                          outcome.summary)
                self._judge(inc)
                storm = outcome.summary.get("storm") or {}
                if not outcome.crash_titles:
                    if storm.get("stop_reason") in ("duration", "interrupted", "max_ops") or self.stop_event.is_set():
                        break
                    if deadline is not None and time.time() >= deadline - 1.0:
                        break
                if time.time() - inc.started < self.MIN_USEFUL_S and not inc.ops:
                    self.failing.append(f"{inc.name}: the target ended within {self.MIN_USEFUL_S:.0f} s without "
                                        "an operation; not restarting it in a loop")
                    break
                if outcome.crash_titles:
                    self.announce(f"{self.suite}: {inc.name} crashed ({', '.join(outcome.crash_titles)}); "
                                  "restarting the target on a fresh lvstore")
        finally:
            self._done.set()
            reporter.join(timeout=5.0)
            summary = self.write_rolling(final=True)
        return LongRunOutcome(self.run_dir.path, summary, list(self.failing), dict(self.crash_counts),
                              list(self.incarnations))

    def _end(self, inc: Incarnation, outcome: str, summary: dict[str, Any]) -> None:
        with self._lock:
            inc.ended = time.time()
            inc.outcome = outcome
            inc.summary = summary
            inc.ops = int(((summary.get("storm") or {}).get("ops")) or sum((summary.get("ops_by_method") or {})
                                                                             .values()))
            inc.crashes = {c["title"]: c["count"] for c in summary.get("crashes") or []}
            inc.findings = [f for f in summary.get("findings") or [] if isinstance(f, dict)]

    def _judge(self, inc: Incarnation) -> None:
        """Count crashes by title; each crash or finding fails the run unless a known issue says otherwise."""
        for title, count in inc.crashes.items():
            self.crash_counts[title] += count
            issue = self.known.for_crash(title)
            if issue is None or issue.policy == "fail":
                link = f" (known: {issue.link})" if issue else ""
                self.failing.append(f"{inc.name}: {title}{link}")
                continue
            self.known_hits[issue.id] += count
            if issue.policy == "avoid":
                self._avoid(issue.avoid_strategies, issue.avoid_methods, issue.id)
        for finding in inc.findings:
            issue = self.known.for_finding(finding)
            if issue is None or issue.policy == "fail":
                self.failing.append(f"{inc.name}: finding {finding.get('kind')}: {finding.get('message')}")
                continue
            self.known_hits[issue.id] += 1
            if issue.policy == "avoid":
                self._avoid(issue.avoid_strategies, issue.avoid_methods, issue.id)

    def _avoid(self, strategies: Sequence[str], methods: Sequence[str], ident: str) -> None:
        new_s = set(strategies) - self.avoid_strategies
        new_m = set(methods) - self.avoid_methods
        if new_s or new_m:
            self.avoid_strategies |= new_s
            self.avoid_methods |= new_m
            self.announce(f"{self.suite}: known issue {ident}: no longer issuing "
                          f"{', '.join(sorted(new_s | new_m))}")

    # -- rolling report and health --------------------------------------------------------------------------

    def _report_loop(self) -> None:
        next_report = time.time() + self.report_every_s
        next_health = time.time() + self.health_every_s
        while not self._done.wait(min(1.0, self.report_every_s, self.health_every_s)):
            now = time.time()
            if now >= next_report:
                next_report = now + self.report_every_s
                with contextlib.suppress(Exception):
                    self.write_rolling(final=False)
            if now >= next_health:
                next_health = now + self.health_every_s
                with contextlib.suppress(Exception):
                    self.announce(self.health_line())

    def health_line(self) -> str:
        """One line a person watching a soak reads: elapsed, incarnation, ops, rates, tree size, crashes."""
        for rel, path in history_sources(self.run_dir.path):
            self.timeline.feed_file(path, source=rel)
        pts = self.timeline.points()
        recent = [p for p in pts if pts and p["t"] >= pts[-1]["t"] - 60.0] or pts[-1:]
        span_s = max(self.timeline.width, len(recent) * self.timeline.width)
        rate = sum(p["ops"] for p in recent) / span_s if recent else 0.0
        p99 = max((p["p99_ms"] for p in recent if p["p99_ms"] is not None), default=None)
        last = pts[-1] if pts else {}
        elapsed = int(time.time() - self.started)
        with self._lock:
            inc = self.incarnations[-1].name if self.incarnations else "-"
            crashes = sum(self.crash_counts.values())
            findings = sum(len(i.findings) for i in self.incarnations)
        return (f"{self.suite} [{self.node}] {elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d} "
                f"{inc} ops {self.timeline.records} ({rate:.0f}/s) p99 "
                f"{'-' if p99 is None else f'{p99:.1f} ms'} live lvols {last.get('live_lvols', '-')} "
                f"free clusters {last.get('free_clusters', '-')} crashes {crashes} findings {findings}")

    def summary(self, final: bool) -> dict[str, Any]:
        with self._lock:
            incs = list(self.incarnations)
            counts = dict(self.crash_counts)
            failing = list(self.failing)
        ops_by_method: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        findings: list[dict[str, Any]] = []
        target: dict[str, Any] = {}
        for inc in incs:
            ops_by_method.update(inc.summary.get("ops_by_method") or {})
            errors.update(inc.summary.get("errors_by_errno") or {})
            findings += [{**f, "run": inc.name} for f in inc.findings]
            target = inc.summary.get("target") or target
        if not final and sum(self.timeline.methods.values()) > sum(ops_by_method.values()):
            ops_by_method = Counter(self.timeline.methods)  # includes the incarnation still running
        crashes = []
        for title, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            issue = self.known.for_crash(title) if self.suite in ("nightly", "soak") else None
            crashes.append({"title": title, "count": n, "known": issue.id if issue else None,
                            "policy": issue.policy if issue else "fail", "link": issue.link if issue else None})
        for f in findings:
            issue = self.known.for_finding(f)
            if issue is not None:
                f["known"], f["policy"] = issue.id, issue.policy
        return {
            "suite": self.suite,
            "node": self.node,
            "harness_version": harness.__version__,
            "profile": self.config.profile,
            "seed": self.config.storm.seed,
            "running": not final,
            "started": self.started,
            "updated": time.time(),
            "wall_s": round(time.time() - self.started, 3),
            "duration_s": self.config.storm.duration,
            "incarnations": len(incs),
            "target": target,
            "ops_by_method": dict(ops_by_method),
            "errors_by_errno": dict(errors),
            "crashes": crashes,
            "crash_counts": counts,
            "findings": findings,
            "known_issues": {"source": self.known.source, "hits": dict(self.known_hits),
                             "avoided": {"strategies": sorted(self.avoid_strategies),
                                         "methods": sorted(self.avoid_methods)}},
            "failing": failing,
            "verdict": "running" if not final else ("fail" if failing else "pass"),
            "breakdown": [{"name": i.name, "node": self.node, "outcome": i.outcome, "ops": i.ops,
                           "findings": i.findings,
                           "crashes": [{"title": t, "count": c} for t, c in i.crashes.items()],
                           "started": i.started, "ended": i.ended} for i in incs],
            "config": self.config.model_dump(mode="json"),
        }

    def write_rolling(self, final: bool) -> dict[str, Any]:
        """summary.json and report.html, each replaced atomically, so both are valid whenever someone looks."""
        for rel, path in history_sources(self.run_dir.path):
            self.timeline.feed_file(path, source=rel)
        summary = self.summary(final)
        self.run_dir.write_json("summary.json", summary)
        try:
            write_report_html(self.run_dir.path, self.timeline, live=not final)
        except HarnessError as exc:
            self.announce(f"report.html not written: {exc}")
        return summary


def storm_failure_message(summary: dict[str, Any]) -> str | None:
    """The JUnit failure line: crash titles first (with counts and bundles), then the first findings."""
    parts = []
    dirs = [Path(d) for d in summary.get("crash_dirs") or []]
    for c in summary.get("crashes") or []:
        bundle = next((d for d in dirs if d.name.endswith(title_slug(c["title"]))), dirs[0] if dirs else None)
        where = f" (crash bundle: {bundle / 'crash.json'})" if bundle else ""
        parts.append(f"{c['title']} x{c['count']}{where}")
    findings = summary.get("findings") or []
    for f in findings[:3]:
        parts.append(f"finding {f.get('kind')}: {f.get('message')}")
    if len(findings) > 3:
        parts.append(f"... {len(findings) - 3} more findings in summary.json")
    return "; ".join(parts) if parts else None


def long_run_failure(outcome: LongRunOutcome) -> str | None:
    """The JUnit failure line of a long run: crash titles with counts first, then the other reasons."""
    if outcome.passed:
        return None
    counts = "; ".join(f"{t} x{n}" for t, n in sorted(outcome.crash_counts.items(), key=lambda kv: -kv[1]))
    where: dict[str, list[str]] = {}
    for reason in outcome.failing:
        inc, sep, what = reason.partition(": ")
        where.setdefault(what if sep else reason, []).append(inc if sep else "")
    unique = [f"{what} ({', '.join(i for i in incs if i)})" if any(incs) else what for what, incs in where.items()]
    reasons = unique[:5] + ([f"... {len(unique) - 5} more in summary.json"] if len(unique) > 5 else [])
    head = f"crashes by title: {counts}; " if counts else ""
    return f"{head}{len(outcome.incarnations)} incarnation(s): " + "; ".join(reasons)


def known_issue_notice(outcome: LongRunOutcome) -> str | None:
    """A one-line note of the known issues a passing long run met (xfail/avoid), for the test's warnings."""
    hits = (outcome.summary.get("known_issues") or {}).get("hits") or {}
    if not hits:
        return None
    return "known issues met (not failing this run): " + ", ".join(f"{k} x{n}" for k, n in sorted(hits.items()))
