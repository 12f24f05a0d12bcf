"""The suites users run (smoke, regression, nightly, soak): what each needs, where it runs, how long it may
take, and the one line its failure says.

A suite is a profile plus rules about where it may run: regression, nightly and soak refuse the reference
target unless asked for it by name, nightly provisions Terraform nodes unless given machines, soak needs an
inventory. Those checks run before anything starts, so a mistake costs one line, not a provisioned cluster.
A suite's time limit comes from its own duration (`time_limit`), never a blanket default: a nightly hour and
an open-ended soak must be able to run, and a hung test must still end.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.longrun import LongRunOutcome
from harness.outcome import Verdict
from harness.report.title import title_slug
from harness.summary import Part, Summary

Where = Literal["local", "terraform", "inventory"]
TERRAFORM_MODULE = "aws-sles"
START_AND_TEARDOWN_S = 300.0
"""A time limit's allowance beyond the storm and the minimizer: target start (hugepages, DPDK init), final
checks, crash report (gdb on a core), lvstore teardown, and a stuck call's own timeouts."""


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


def resolve_where(spec: SuiteSpec, *, inventory: str | None, target_flag: str | None,
                  terraform: str | None = None) -> Where:
    """Where the suite's targets run: `--inventory` wins, then an explicit `--terraform`; an explicit
    `--target` alone means this machine."""
    if spec.where == "local" and (inventory or terraform):
        raise ConfigError(f"{spec.name}: runs on this machine; --inventory and --terraform are for "
                          "nightly and soak")
    if inventory:
        if terraform:
            raise ConfigError(f"{spec.name}: --inventory and --terraform exclude each other: pick one")
        return "inventory"
    if terraform:
        return "terraform"
    if target_flag is not None:
        return "local"
    if spec.where == "inventory":
        raise ConfigError(f"{spec.name}: needs an inventory of lab machines: --inventory FILE "
                          f"(make {spec.name} INVENTORY=FILE), or --target spdk|sim to run on this machine")
    return spec.where


def time_limit(spec: SuiteSpec, config: RunConfig) -> float:
    """Seconds one test of this suite may take (0: no limit): its storm's duration, the minimizer's budget for
    the crash keys it will meet (once per run for regression and smoke; once more at the very end of a long
    run: the earlier ones come out of the run's own clock), and START_AND_TEARDOWN_S. A soak with no duration
    runs until stopped: no limit."""
    duration = config.storm.duration
    if duration <= 0:
        return 0.0
    minimize = config.minimize.budget_s + START_AND_TEARDOWN_S if config.minimize.enabled else 0.0
    return duration + minimize + START_AND_TEARDOWN_S


def storm_failure_message(summary: Summary) -> str | None:
    """The JUnit failure line: crash titles first (with counts and bundles), then the first findings."""
    parts = []
    dirs = [Path(d) for d in summary.crash_dirs]
    for c in summary.crashes:
        bundle = next((d for d in dirs if d.name.endswith(title_slug(c.title))), dirs[0] if dirs else None)
        where = f" (crash bundle: {bundle / 'crash.json'})" if bundle else ""
        parts.append(f"{c.title} x{c.count}{where}")
    findings = summary.findings
    for f in findings[:3]:
        parts.append(f"finding {f.get('kind')}: {f.get('message')}")
    if len(findings) > 3:
        parts.append(f"... {len(findings) - 3} more findings in summary.json")
    return "; ".join(parts) if parts else None


def long_run_failure(outcome: LongRunOutcome) -> str | None:
    """The JUnit failure line of a long run: crash titles with counts first, then the other reasons."""
    if outcome.passed:
        return None
    return failure_line(outcome.summary)


def failure_line(summary: Summary, *, why: str | None = None) -> str:
    """A long run's failure from its summary alone (so a run cut short by a time limit says the same):
    crashes by title with counts, then the other reasons, then `why` it stopped when that is news."""
    counts = "; ".join(f"{c.title} x{c.count}" for c in summary.crashes)
    failing = list(summary.failing or [])
    where: dict[str, list[str]] = {}
    for reason in failing:
        inc, sep, what = reason.partition(": ")
        where.setdefault(what if sep else reason, []).append(inc if sep else "")
    unique = [f"{what} ({', '.join(i for i in incs if i)})" if any(incs) else what for what, incs in where.items()]
    reasons = unique[:5] + ([f"... {len(unique) - 5} more in summary.json"] if len(unique) > 5 else [])
    incarnations = summary.incarnations if summary.incarnations is not None else len(summary.breakdown)
    head = f"crashes by title: {counts}; " if counts else ""
    tail = f"; {why}" if why else ""
    return f"{head}{incarnations} incarnation(s): " + ("; ".join(reasons) or "no failure recorded") + tail


def known_issue_notice(outcome: LongRunOutcome) -> str | None:
    """A one-line note of the known issues a passing long run met (xfail/avoid), for the test's warnings."""
    hits = (outcome.summary.known_issues or {}).get("hits") or {}
    if not hits:
        return None
    return "known issues met (not failing this run): " + ", ".join(f"{k} x{n}" for k, n in sorted(hits.items()))


# -- a suite session's report ----------------------------------------------------------------------------------


@dataclass
class TestResult:
    """One test of a suite session as the report needs it (pytest's report reduced to data)."""

    nodeid: str
    outcome: str
    duration_s: float = 0.0
    run_dir: str | None = None
    node: str = "local"
    worker: str | None = None
    message: str | None = None

    def part(self, sub: Summary | None) -> Part:
        """Its breakdown row: the verdict of the storm it ran, else what pytest said (a failure of its own,
        such as a time limit or an assertion, counts as a finding: it is never clean)."""
        verdict = {"passed": Verdict.CLEAN.value, "skipped": Verdict.NOTHING_RAN.value,
                   "running": Verdict.RUNNING.value}.get(self.outcome, Verdict.FINDINGS.value)
        if sub is not None and sub.verdict != Verdict.NOTHING_RAN.value:
            verdict = Verdict.RUNNING.value if self.outcome == "running" else (
                sub.verdict if self.outcome != "failed" or sub.verdict != Verdict.CLEAN.value else verdict)
        return Part(name=self.nodeid.split("::")[-1], node=self.node, outcome=verdict, run_dir=self.run_dir,
                    message=self.message, worker=self.worker, test_outcome=self.outcome)


def still_running(run_dir: Path, results: Sequence[TestResult]) -> list[TestResult]:
    """Nodes whose long run has a rolling summary.json but no test result yet."""
    done = {str(Path(r.run_dir)) for r in results if r.run_dir}
    out = []
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        data = Summary.read(sub / "summary.json")
        if data is not None and data.running and str(sub) not in done:
            node = data.node or sub.name
            out.append(TestResult(sub.name, "running", run_dir=str(sub), node=str(node)))
    return out


def session_summary(run_dir: Path, spec: SuiteSpec, results: Sequence[TestResult], cfg: RunConfig | None,
                    exitstatus: int | None, *, versions: dict[str, Any], reproducer: list[str]) -> Summary:
    """One summary.json for a whole suite session: its tests (and nodes) merged, every crash counted.
    `exitstatus` None: the session is still running (a long run's rolling rewrite)."""
    running = exitstatus is None
    if running:
        results = [*results, *still_running(run_dir, results)]
    parts = []
    for res in results:
        sub = Summary.read(Path(res.run_dir) / "summary.json") if res.run_dir else None
        parts.append((res.part(sub), sub))
    tests_failed = sum(r.outcome == "failed" for r in results)
    merged = Summary.merge("suite", parts)
    verdict = Verdict.RUNNING.value if running else (
        merged.verdict if results else Verdict.NOTHING_RAN.value)
    if not running and tests_failed and verdict == Verdict.CLEAN.value:
        verdict = Verdict.FINDINGS.value  # a test failed for a reason of its own (a time limit, an assertion)
    nodes: dict[str, dict[str, Any]] = {}
    for part, sub in parts:
        n = nodes.setdefault(str(part.node), {"tests": 0, "failed": 0, "ops": 0, "crashes": 0})
        n["tests"] += 1
        n["failed"] += part.test_outcome == "failed"
        n["ops"] += sub.ops if sub is not None else 0
        n["crashes"] += sub.crash_count if sub is not None else 0
    return merged.model_copy(update={
        "verdict": verdict, "passed": not running and bool(results) and not tests_failed and exitstatus == 0,
        "running": running, "profile": cfg.profile if cfg else spec.profile, "seed": cfg.storm.seed if cfg else None,
        "config": cfg.model_dump(mode="json") if cfg else None, "updated": time.time(),
        "suite": spec.name, "versions": {**versions, "target": merged.target.get("version")},
        "exit_status": exitstatus, "finished": time.time(), "tests": len(results), "failed": tests_failed,
        "nodes": nodes, "junit": str(run_dir / "junit.xml"), "reproducer": reproducer})


def rerun_commands(argv: Sequence[str], results: Sequence[TestResult]) -> list[str]:
    """The session's own command (same seed), then each failed test alone (`-k`), into a new run directory."""
    base: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("--run-dir", "--junitxml", "-k"):
            skip_next = True
        elif not arg.startswith(("--run-dir=", "--junitxml=", "-k=")):
            base.append(arg)
    head = [".venv/bin/python", "-m", "pytest", *base]
    cmds = [shlex.join([*head, *(["-k", argv[list(argv).index("-k") + 1]] if "-k" in argv[:-1] else [])])]
    for res in results:
        if res.outcome == "failed":
            node = res.nodeid
            ident = node.split("[", 1)[1].rstrip("]") if "[" in node else node.split("::")[-1]
            cmds.append(shlex.join([*head, "-k", ident]))
    return list(dict.fromkeys(cmds))[:6]
