"""`Summary`: what `summary.json` holds, for a storm run and for everything made of runs (a fleet, a long run, a
suite session), built one way.

A run is counted once and merged upwards: a fleet is the merge of its nodes, a long run of its incarnations, a
suite session of its tests. Totals (operations by method, errors by errno, crashes by key, findings) are summed
by one function, so the top page's numbers add up to its parts' and a crash is never dropped on the way up;
the verdict is the worst of the parts' (harness.outcome), so report.html's badge, the summary and the exit
status say the same thing.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import harness
from harness.outcome import Verdict, worst
from harness.report.title import crash_key

Kind = Literal["run", "fleet", "long-run", "suite"]


class CrashCount(BaseModel):
    """One bug in a summary: its key (harness.report.title.crash_key), the title people read (the first seen),
    how often it crashed the target, where, and what the known issues say of it."""

    model_config = ConfigDict(extra="allow")

    title: str
    key: str = ""
    count: int = 1
    titles: list[str] = Field(default_factory=list)
    """Every title seen under this key, the first one included (one bug on two builds: two line numbers)."""
    nodes: dict[str, int] = Field(default_factory=dict)
    """By part (node, incarnation or test) where it happened, when merged."""
    known: str | None = None
    policy: str = "fail"
    link: str | None = None


class Part(BaseModel):
    """One row of a merged summary's breakdown: a node, an incarnation or a test."""

    model_config = ConfigDict(extra="allow")

    name: str
    node: str = "local"
    outcome: str = Verdict.NOTHING_RAN.value
    ops: int = 0
    findings: list[dict[str, Any]] = Field(default_factory=list)
    crashes: list[CrashCount] = Field(default_factory=list)
    run_dir: str | None = None
    message: str | None = None
    worker: str | None = None
    """The pytest-xdist worker that ran it (a suite's test)."""
    test_outcome: str | None = None
    """What pytest said of the test (passed, failed, skipped, running)."""
    started: float | None = None
    ended: float | None = None


class Summary(BaseModel):
    """summary.json. Fields every kind has are declared; what one kind adds (a run's `storm`, a fleet's
    `run_id`, a long run's `failing`, a session's `junit`) rides along as extra fields."""

    model_config = ConfigDict(extra="allow")

    kind: Kind = "run"
    harness_version: str = harness.__version__
    verdict: str = Verdict.NOTHING_RAN.value
    passed: bool = False
    """The verdict after the suite's rules (a known issue with policy xfail does not fail a long run)."""
    running: bool = False
    profile: str | None = None
    seed: int | None = None
    target: dict[str, Any] = Field(default_factory=dict)
    kernel_log: str | None = None
    started: float | None = None
    updated: float = Field(default_factory=time.time)
    wall_s: float = 0.0
    ops: int = 0
    ops_per_s: float = 0.0
    ops_by_method: dict[str, int] = Field(default_factory=dict)
    errors_by_errno: dict[str, int] = Field(default_factory=dict)
    findings: list[dict[str, Any]] = Field(default_factory=list)
    crashes: list[CrashCount] = Field(default_factory=list)
    crash_dirs: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    breakdown: list[Part] = Field(default_factory=list)
    config: dict[str, Any] | None = None
    # -- a run's own ---------------------------------------------------------------------------------------
    storm: dict[str, Any] | None = None
    """The storm's result (harness.storm.engine.StormResult.to_dict): its own ops, ops/s, stop reason."""
    interrupted: bool = False
    minimized: list[dict[str, Any]] | None = None
    io: dict[str, Any] | None = None
    """The storm's I/O (harness.io.lanes): reads, writes, verified_blocks, mismatches, errors, iops, ..."""
    # -- a fleet's -----------------------------------------------------------------------------------------
    fleet: bool = False
    run_id: str | None = None
    nodes: dict[str, dict[str, Any]] | None = None
    errors: dict[str, str] | None = None
    # -- a long run's --------------------------------------------------------------------------------------
    suite: str | None = None
    node: str | None = None
    duration_s: float | None = None
    incarnations: int | None = None
    stopped_by: str | None = None
    """What ended a long run: duration, interrupted (a Ctrl-C), interrupted (Failed) (a time limit), ..."""
    crash_counts: dict[str, int] | None = None
    known_issues: dict[str, Any] | None = None
    steered: list[dict[str, Any]] | None = None
    """What crash-aware steering left out, per crash key, and why (harness.steering)."""
    given_back: list[str] | None = None
    """What a quiet incarnation gave back to a steered mix (harness.steering, steer.quiet_s)."""
    evidence: dict[str, Any] | None = None
    """How much evidence the crash budget kept (harness.crash_budget)."""
    failing: list[str] | None = None
    # -- a suite session's ---------------------------------------------------------------------------------
    versions: dict[str, Any] | None = None
    exit_status: int | None = None
    finished: float | None = None
    tests: int | None = None
    failed: int | None = None
    junit: str | None = None
    reproducer: list[str] | None = None

    # -- reading and writing -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def read(cls, path: str | Path) -> Summary | None:
        """A summary.json from disk, or None when it is missing or unreadable (a part that never wrote one)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls.model_validate(data)
        except ValueError:
            return None

    @property
    def crash_count(self) -> int:
        return sum(c.count for c in self.crashes)

    def crash_titles(self) -> dict[str, int]:
        return {c.title: c.count for c in self.crashes}

    # -- building ------------------------------------------------------------------------------------------

    @classmethod
    def merge(cls, kind: Kind, parts: Sequence[tuple[Part, Summary | None]], *, verdict: str | None = None,
              **fields: Any) -> Summary:
        """The summary of `parts` (each a breakdown row and the part's own summary, None if it has none):
        totals summed, crashes tallied by key with where they happened, findings tagged with their part, the
        verdict the worst of the parts' unless given. `fields` set the rest (and may override totals)."""
        ops_by_method: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        findings: list[dict[str, Any]] = []
        crash_dirs: list[str] = []
        tally = CrashTally()
        target: dict[str, Any] = {}
        rows: list[Part] = []
        ops = 0
        ops_per_s = 0.0
        spans: list[tuple[float, float]] = []
        for part, sub in parts:
            if sub is not None:
                if sub.started is not None and sub.wall_s > 0:
                    spans.append((sub.started, sub.started + sub.wall_s))
                ops_by_method.update(sub.ops_by_method)
                errors.update(sub.errors_by_errno)
                findings += [{**f, "run": f.get("run") or part.name} for f in sub.findings]
                crash_dirs += sub.crash_dirs
                for crash in sub.crashes:
                    tally.add(crash.title, crash.count, where=part.name, titles=crash.titles)
                target = sub.target or target
                ops += sub.ops or sum(sub.ops_by_method.values())
                ops_per_s += sub.ops_per_s
                row = part.model_copy(update={
                    "ops": part.ops or sub.ops or sum(sub.ops_by_method.values()),
                    "findings": part.findings or sub.findings,
                    "crashes": part.crashes or [c.model_copy(update={"nodes": {}}) for c in sub.crashes]})
            else:
                row = part
                for crash in part.crashes:
                    tally.add(crash.title, crash.count, where=part.name, titles=crash.titles)
            rows.append(row)
        timing: dict[str, Any] = {}
        if spans and len(spans) == sum(sub is not None for _, sub in parts):
            # Over the parts' own span: incarnations run one after another (their rates are not a sum), nodes
            # side by side (theirs are); summing rates made a 15-minute nightly 264,135 ops/s, 276x the truth.
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
            ops_per_s = ops / (hi - lo) if hi > lo else ops_per_s
            timing = {"started": lo, "wall_s": round(hi - lo, 3)}
        data: dict[str, Any] = {
            **timing,
            "kind": kind, "ops": ops, "ops_per_s": round(ops_per_s, 1), "ops_by_method": dict(ops_by_method),
            "errors_by_errno": dict(errors), "findings": findings, "crashes": tally.counts(),
            "crash_dirs": crash_dirs, "target": target, "breakdown": rows,
            "verdict": verdict if verdict is not None else worst(r.outcome for r in rows).value,
        }
        data.update(fields)
        if "passed" not in fields:
            data["passed"] = data["verdict"] == Verdict.CLEAN.value
        return cls.model_validate(data)


class CrashTally:
    """Crashes counted by key (one bug on two builds, or under two line numbers, is one row)."""

    def __init__(self) -> None:
        self._rows: dict[str, CrashCount] = {}

    def add(self, title: str, count: int = 1, *, where: str | None = None, titles: Iterable[str] = ()) -> None:
        key = crash_key(title)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = CrashCount(title=title, key=key, count=0, titles=[])
        row.count += count
        for t in (title, *titles):
            if t not in row.titles:
                row.titles.append(t)
        if where is not None:
            row.nodes[where] = row.nodes.get(where, 0) + count

    def counts(self) -> list[CrashCount]:
        """Most frequent first."""
        return sorted(self._rows.values(), key=lambda c: -c.count)

    def __len__(self) -> int:
        return len(self._rows)


def crash_counts(titles: Mapping[str, int]) -> list[CrashCount]:
    """Crash rows for one run's titles (title -> times)."""
    tally = CrashTally()
    for title, count in titles.items():
        tally.add(title, count)
    return tally.counts()
