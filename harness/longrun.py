"""`LongRun`: nightly and soak on one node: storm, and after each crash a fresh target on a fresh lvstore, until
the run's own clock says stop, someone says stop, or the target cannot be started.

Every incarnation is a `StormRun` in its own `inc-NNN/` directory; crashes are counted by key (one bug under two
line numbers is one bug), known issues decide what fails the run, a health line goes out every minute, and
`summary.json` and `report.html` are rewritten atomically every `report_every_s` and once more however the run
ends (its clock, Ctrl-C, SIGTERM, a test time limit raising through it), so the crashes found so far are on
disk whatever stopped it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.crash_budget import CrashBudget
from harness.errors import HarnessError, TargetError
from harness.hosts.base import Host
from harness.known_issues import KnownIssues
from harness.outcome import Verdict
from harness.report.html import history_sources, write_report_html
from harness.report.timeline import Timeline
from harness.run import RunOutcome, StormRun
from harness.rundir import RunDir
from harness.steering import Steering
from harness.summary import CrashTally, Part, Summary

Announce = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def without_avoided(config: RunConfig, strategies: set[str], methods: set[str]) -> RunConfig:
    """The config minus the strategies and mix methods that known issues say to stop issuing; never empty:
    when nothing would be left, the config as it was (and `LongRun` says so)."""
    if not strategies and not methods:
        return config
    data = config.model_dump(mode="json")
    storm = data["storm"]
    strategies_left = {k: v for k, v in storm["strategies"].items() if k not in strategies}
    mix_left = {k: v for k, v in storm["mix"].items() if k not in methods}
    if not any(v > 0 for v in strategies_left.values()) and not any(v > 0 for v in mix_left.values()):
        return config
    storm["strategies"], storm["mix"] = strategies_left, mix_left
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
    outcome: str = Verdict.RUNNING.value
    summary: Summary | None = None

    @property
    def ops(self) -> int:
        return self.summary.ops if self.summary is not None else 0

    @property
    def crashes(self) -> dict[str, int]:
        return self.summary.crash_titles() if self.summary is not None else {}

    @property
    def findings(self) -> list[dict[str, Any]]:
        return list(self.summary.findings) if self.summary is not None else []

    def part(self, node: str) -> Part:
        return Part(name=self.name, node=node, outcome=self.outcome, run_dir=str(self.path),
                    started=self.started, ended=self.ended)


@dataclass
class LongRunOutcome:
    run_dir: Path
    summary: Summary
    failing: list[str]
    crash_counts: dict[str, int]
    incarnations: list[Incarnation] = field(default_factory=list)

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
        self.announce = announce or _stderr
        self.health_every_s = health_every_s
        self.report_every_s = report_every_s
        self.node = node
        self.work_dir = work_dir
        self.timeline = Timeline()
        self.incarnations: list[Incarnation] = []
        self.tally = CrashTally()
        self.failing: list[str] = []
        self.notes: list[str] = []
        self.known_hits: Counter[str] = Counter()
        self.minimized_keys: set[str] = set()  # each crash key is minimized once per long run
        self.budget = CrashBudget(config.evidence, self.run_dir.path)
        self.steering = Steering(config.steer)
        self.to_minimize: list[StormRun] = []
        """Incarnations whose crashes wait for the minimizer, which runs once the clock is done: the run's
        hour goes to storms, not to searches (`_minimize_at_end`)."""
        self.avoid_strategies, self.avoid_methods = self.known.avoided()
        self.steered_out: list[tuple[str, str]] = []
        """What steering (not a known issue) left out, oldest first: ("strategy"|"method", name)."""
        self.given_back: list[str] = []
        """What quiet incarnations gave back, in order (a name again each time it was given back again)."""
        self.started = time.time()
        self.stopped_by: str | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    @property
    def crash_counts(self) -> dict[str, int]:
        """Crashes by title (the first title of each key)."""
        return {c.title: c.count for c in self.tally.counts()}

    # -- the loop ---------------------------------------------------------------------------------------

    def execute(self) -> LongRunOutcome:
        duration = self.config.storm.duration
        deadline = self.started + duration if duration > 0 else None
        self.run_dir.config.write_text(self.config.dump_yaml())
        self.write_rolling(final=False)  # valid from the first second
        reporter = threading.Thread(target=self._report_loop, name="lvol-storm-rolling-report", daemon=True)
        reporter.start()
        try:
            self._loop(deadline)
            self._minimize_at_end()
        except BaseException as exc:  # a time limit or a second Ctrl-C raising through the storm
            self.stopped_by = self.stopped_by or f"interrupted ({type(exc).__name__})"
            for inc in self.incarnations:
                if inc.ended is None:
                    self._end(inc, Verdict.INTERRUPTED.value, Summary.read(inc.path / "summary.json"))
            raise
        finally:
            self._done.set()
            reporter.join(timeout=5.0)
            summary = self.write_rolling(final=True)
        return LongRunOutcome(self.run_dir.path, summary, list(self.failing), self.crash_counts,
                              list(self.incarnations))

    def _loop(self, deadline: float | None) -> None:
        base_seed = self.config.storm.seed
        while len(self.incarnations) < self.MAX_INCARNATIONS:
            if self.stop_event.is_set():
                self.stopped_by = self.stopped_by or "interrupted"
                return
            remaining = deadline - time.time() if deadline is not None else 0.0
            if deadline is not None and remaining < 1.0:
                self.stopped_by = "duration"
                return
            n = len(self.incarnations) + 1
            inc_dir = RunDir(self.run_dir.path / f"inc-{n:03d}")
            inc = Incarnation(inc_dir.path.name, inc_dir.path, time.time())
            with self._lock:
                self.incarnations.append(inc)
            # While steering leaves something out, an incarnation gets at most steer.quiet_s (0 = no limit).
            quiet_s = self.config.steer.quiet_s if self.steered_out else 0.0
            sliced = quiet_s > 0 and (deadline is None or quiet_s < remaining - 1.0)
            slice_s = quiet_s if sliced else remaining
            cfg = with_storm(self._config_now(), duration=round(slice_s, 3), seed=base_seed + n - 1)
            work = f"{self.work_dir}/{inc.name}" if self.work_dir else None
            run = StormRun(cfg, inc_dir, self.host, stop_event=self.stop_event, announce=self.announce,
                           progress=False, work_dir=work, minimized_keys=self.minimized_keys, defer_minimize=True,
                           budget=self.budget)
            try:
                outcome = run.execute()
            except TargetError as exc:
                self._end(inc, Verdict.ERROR.value, None)
                self.failing.append(f"{inc.name}: {exc}")
                self.stopped_by = "target did not start"
                return
            self._end(inc, outcome.summary.verdict, outcome.summary)
            self._judge(inc)
            if outcome.crash_dirs:
                self.to_minimize.append(run)
                self._steer(outcome)
            stop_reason = (outcome.summary.storm or {}).get("stop_reason")
            if sliced and not outcome.crash_titles and stop_reason == "duration" and not self.stop_event.is_set():
                self._give_back(inc, slice_s)
                continue
            if not outcome.crash_titles:
                if stop_reason in ("duration", "interrupted", "max_ops") or self.stop_event.is_set():
                    self.stopped_by = "interrupted" if self.stop_event.is_set() else str(stop_reason)
                    return
                if deadline is not None and time.time() >= deadline - 1.0:
                    self.stopped_by = "duration"
                    return
            if time.time() - inc.started < self.MIN_USEFUL_S and not inc.ops:
                self.failing.append(f"{inc.name}: the target ended within {self.MIN_USEFUL_S:.0f} s without "
                                    "an operation; not restarting it in a loop")
                self.stopped_by = "no progress"
                return
            if outcome.crash_titles:
                self.announce(f"{self.suite}: {inc.name} crashed ({', '.join(outcome.crash_titles)}); "
                              "restarting the target on a fresh lvstore")

    def _minimize_at_end(self) -> None:
        """Each new crash key's first crash, minimized once the storms are over, within the run's minimize
        budget in all (`minimize.budget_s`, shared: the keys seen first go first); what it could not reach is
        said in the notes. A stop (Ctrl-C) skips it."""
        cfg = self.config.minimize
        if not cfg.enabled or not self.to_minimize:
            return
        deadline = time.monotonic() + cfg.budget_s
        left_out: set[str] = set()
        for run in self.to_minimize:
            keys = {c.key for c in run.outcome.summary.crashes} if run.outcome is not None else set()
            if not keys - self.minimized_keys:
                continue  # its bug was minimized from an earlier crash
            if self.stop_event.is_set() or time.monotonic() >= deadline - 1.0:
                left_out |= keys - self.minimized_keys
                continue
            run.config = run.config.model_copy(update={"minimize": cfg.model_copy(
                update={"budget_s": max(1.0, deadline - time.monotonic())})})
            run.minimize_new_crashes()
            with self._lock:
                inc = next((i for i in self.incarnations if i.path == run.run_dir.path), None)
                if inc is not None and run.outcome is not None:
                    inc.summary = run.outcome.summary
        if left_out:
            self.notes.append(f"minimize: {len(left_out)} crash key(s) not minimized: "
                              + ("stopped" if self.stop_event.is_set() else
                                 f"the run's minimize budget ({cfg.budget_s:g} s) was spent"))

    def _config_now(self) -> RunConfig:
        """The next incarnation's config: what known issues (and crash-aware steering) leave of the mix."""
        cfg = without_avoided(self.config, self.avoid_strategies, self.avoid_methods)
        if cfg is self.config and (self.avoid_strategies or self.avoid_methods):
            note = "known issues would leave nothing to run; the mix stays as it is"
            if note not in self.notes:
                self.notes.append(note)
                self.announce(f"{self.suite}: {note}")
        return cfg

    def _end(self, inc: Incarnation, outcome: str, summary: Summary | None) -> None:
        with self._lock:
            inc.ended = time.time()
            inc.outcome = outcome
            inc.summary = summary

    def _judge(self, inc: Incarnation) -> None:
        """Count crashes by key; each crash or finding fails the run unless a known issue says otherwise."""
        for title, count in inc.crashes.items():
            self.tally.add(title, count, where=inc.name)
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

    def _steer(self, outcome: RunOutcome) -> None:
        """Count the incarnation's crash with what preceded it; leave that out once its key is common."""
        for crash in outcome.summary.crashes:
            crash_dir = next((d for d in outcome.crash_dirs), None)
            decision = self.steering.observe(crash.key, crash.title, crash_dir,
                                             out=(self.avoid_strategies, self.avoid_methods))
            if decision is not None:
                self._avoid(decision.strategies, decision.methods, f"{decision.title!r} ({decision.why})",
                            source="steering away from what keeps crashing")

    def _give_back(self, inc: Incarnation, quiet_s: float) -> None:
        """A quiet incarnation under steering: one thing steering left out is issued again, on trial.

        The one given back least often, newest first among those: if its crashes come back steering leaves it
        out again, and the next quiet slice tries another, so the hour rotates through mixes instead of
        re-finding one key (a 15-minute nightly that gave back for good spent its last 10 minutes on 177
        repeats of one assertion)."""
        tries = Counter(self.given_back)
        pick = min(range(len(self.steered_out)), key=lambda i: (tries[self.steered_out[i][1]], -i))
        kind, name = self.steered_out.pop(pick)
        (self.avoid_strategies if kind == "strategy" else self.avoid_methods).discard(name)
        self.given_back.append(name)
        again = f" (given back {tries[name] + 1} times)" if tries[name] else ""
        note = (f"{inc.name} ran {quiet_s:g} s without a crash with {name} left out: issuing {name} again{again} "
                "(steer.quiet_s; if its crashes come back, steering leaves it out again)")
        self.notes.append(note)
        self.announce(f"{self.suite}: {note}")

    def _avoid(self, strategies: Sequence[str], methods: Sequence[str], ident: str, *,
               source: str = "known issue") -> None:
        steering = source != "known issue"
        new_s = set(strategies) - self.avoid_strategies
        new_m = set(methods) - self.avoid_methods
        if steering:
            self.steered_out += [("strategy", s) for s in sorted(new_s)] + [("method", m) for m in sorted(new_m)]
        if new_s or new_m:
            self.avoid_strategies |= new_s
            self.avoid_methods |= new_m
            self.announce(f"{self.suite}: {source} {ident}: no longer issuing "
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
            crashes = sum(c.count for c in self.tally.counts())
            keys = len(self.tally)
            findings = sum(len(i.findings) for i in self.incarnations)
        steered = sorted({*self.avoid_strategies, *self.avoid_methods})
        return (f"{self.suite} [{self.node}] {elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d} "
                f"{inc} ops {self.timeline.records} ({rate:.0f}/s) p99 "
                f"{'-' if p99 is None else f'{p99:.1f} ms'} live lvols {last.get('live_lvols', '-')} "
                f"free clusters {last.get('free_clusters', '-')} crashes {crashes} ({keys} keys) "
                f"findings {findings}" + (f" steered away from {', '.join(steered)}" if steered else ""))

    def summary(self, final: bool) -> Summary:
        with self._lock:
            incs = list(self.incarnations)
            failing = list(self.failing)
        parts = [(inc.part(self.node), inc.summary) for inc in incs]
        running = not final
        merged = Summary.merge("long-run", parts)
        crashes = self.tally.counts()
        for crash in crashes:
            issue = self.known.for_crash(crash.title)
            if issue is not None:
                crash.known, crash.policy, crash.link = issue.id, issue.policy, issue.link
        findings = merged.findings
        for f in findings:
            issue = self.known.for_finding(f)
            if issue is not None:
                f["known"], f["policy"] = issue.id, issue.policy
        ops_by_method = merged.ops_by_method
        if running and sum(self.timeline.methods.values()) > sum(ops_by_method.values()):
            ops_by_method = dict(self.timeline.methods)  # includes the incarnation still running
        if running:
            verdict = Verdict.RUNNING.value
        elif not incs:
            verdict = Verdict.NOTHING_RAN.value
        else:
            verdict = merged.verdict
        stopped = self.stopped_by or ("running" if running else None)
        return merged.model_copy(update={
            "crashes": crashes, "findings": findings, "ops_by_method": ops_by_method,
            "ops": max(merged.ops, sum(ops_by_method.values())),
            "verdict": verdict, "passed": final and bool(incs) and not failing
            and not (stopped or "").startswith("interrupted ("),
            "running": running, "profile": self.config.profile, "seed": self.config.storm.seed,
            "started": self.started, "updated": time.time(), "wall_s": round(time.time() - self.started, 3),
            "notes": list(self.notes), "config": self.config.model_dump(mode="json"),
            "suite": self.suite, "node": self.node, "duration_s": self.config.storm.duration,
            "incarnations": len(incs), "stopped_by": stopped, "crash_counts": self.crash_counts,
            "known_issues": {"source": self.known.source, "hits": dict(self.known_hits),
                             "avoided": {"strategies": sorted(self.avoid_strategies),
                                         "methods": sorted(self.avoid_methods)}},
            "steered": [d.to_dict() for d in self.steering.all_decisions()],
            "given_back": list(self.given_back),
            "evidence": {"kept_whole": sum(min(n, self.config.evidence.cores_per_key or n)
                                           for n in self.budget.seen.values()),
                         "capped": self.budget.capped},
            "failing": failing})

    def write_rolling(self, final: bool) -> Summary:
        """summary.json and report.html, each replaced atomically, so both are valid whenever someone looks."""
        for rel, path in history_sources(self.run_dir.path):
            self.timeline.feed_file(path, source=rel)
        summary = self.summary(final)
        self.run_dir.write_json("summary.json", summary.to_json())
        try:
            write_report_html(self.run_dir.path, self.timeline, live=not final)
        except HarnessError as exc:
            self.announce(f"report.html not written: {exc}")
        return summary
