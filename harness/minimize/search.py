"""The search for a minimal reproducer: phases from cheap and coarse to fine, every candidate on fresh targets.

1. Reproduce at all: the last 16, 64, 256, ... operations before the crash (with what they depend on), each
   tried serially first and then with the recorded in-flight groups; the smallest window that reproduces
   wins, the whole history last. None reproduces: the crash may need timing a replay cannot give.
2. Drop whole workers, then every read-only call at once.
3. ddmin over what is left, closed under dependencies.
4. Concurrency only where it matters: a grouped result is tried serially, then each group dissolved in turn.
5. The result runs `rate_runs` more times: its reproduction rate.

A candidate reproduces when `k` of `tries` fresh targets die with the original title (`Oracle`); other titles
are counted and reported, and the search keeps looking for the original one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.minimize.config import MinimizeConfig
from harness.minimize.ddmin import Budget, BudgetExhausted, ddmin
from harness.minimize.deps import Dependencies
from harness.minimize.operations import Operation, workers_of
from harness.minimize.plan import Mode, ReplayPlan, plan_for
from harness.rpc.sync import READ_METHODS

Progress = Callable[[str], None]


@dataclass
class TrialResult:
    """One replay against one fresh target: the crash title it died with, or None if it survived."""

    title: str | None
    elapsed_s: float = 0.0
    answered: int = 0
    detail: str = ""


class TrialRunner(Protocol):
    """Runs a plan against a fresh target and says how it died (the real one is `harness.minimize.trial`)."""

    def run(self, plan: ReplayPlan) -> TrialResult: ...


class Oracle:
    """k-of-n reproduction of one title, cached per candidate, spending the shared budget per target start."""

    def __init__(self, runner: TrialRunner, title: str, config: MinimizeConfig, budget: Budget,
                 progress: Progress) -> None:
        self.runner = runner
        self.title = title
        self.config = config
        self.budget = budget
        self.say = progress
        self.cache: dict[tuple[frozenset[int], str, frozenset[int]], bool] = {}
        self.other_titles: Counter[str] = Counter()
        self.survived = 0
        self.candidates = 0

    def reproduces(self, plan: ReplayPlan, key: tuple[frozenset[int], str, frozenset[int]] | None = None) -> bool:
        if key is not None and key in self.cache:
            return self.cache[key]
        cfg = self.config
        hits = misses = 0
        self.candidates += 1
        while hits < cfg.k and misses <= cfg.tries - cfg.k:
            self.budget.spend()
            result = self.runner.run(plan)
            if result.title == self.title:
                hits += 1
            else:
                misses += 1
                if result.title is None:
                    self.survived += 1
                else:
                    if result.title not in self.other_titles:
                        self.say(f"minimize: a candidate crashed with another title: {result.title!r} "
                                 f"(still looking for {self.title!r})")
                    self.other_titles[result.title] += 1
        ok = hits >= cfg.k
        if key is not None:
            self.cache[key] = ok
        return ok

    def rate(self, plan: ReplayPlan, runs: int) -> tuple[int, int]:
        """(same-title crashes, runs) over `runs` fresh targets; not bounded by the search budget."""
        hits = 0
        for _ in range(runs):
            result = self.runner.run(plan)
            if result.title == self.title:
                hits += 1
            elif result.title is not None:
                self.other_titles[result.title] += 1
        return hits, runs


@dataclass
class Phase:
    name: str
    ops_before: int
    ops_after: int
    tries: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ops_before": self.ops_before, "ops_after": self.ops_after,
                "tries": self.tries, "seconds": round(self.seconds, 3)}


@dataclass
class SearchOutcome:
    """What the search found; `plan` is the minimal reproducer (or the full one when nothing reproduced)."""

    reproduced: bool
    plan: ReplayPlan
    ops_before: int
    phases: list[Phase] = field(default_factory=list)
    rate: tuple[int, int] = (0, 0)
    other_titles: dict[str, int] = field(default_factory=dict)
    tries: int = 0
    seconds: float = 0.0
    stop_reason: str = "done"

    @property
    def ops_after(self) -> int:
        return len(self.plan)


def windows(total: int, first: int = 16, factor: int = 4) -> list[int]:
    """Tail window sizes to try: 16, 64, 256, ... and finally everything."""
    out: list[int] = []
    w = first
    while w < total:
        out.append(w)
        w *= factor
    out.append(total)
    return out


def search(ops: Sequence[Operation], title: str, runner: TrialRunner, config: MinimizeConfig, *,
           budget: Budget | None = None, progress: Progress | None = None) -> SearchOutcome:
    """Minimize `ops` (issue order, in-flight groups assigned, nothing after the crash) for `title`."""
    say = progress or (lambda _msg: None)
    budget = budget or Budget(config.max_tries, config.budget_s)
    oracle = Oracle(runner, title, config, budget, say)
    deps = Dependencies(ops)
    by_index = {op.index: op for op in ops}
    order = [op.index for op in ops]
    t0 = time.monotonic()
    phases: list[Phase] = []

    def plan(indices: Sequence[int], mode: Mode, dissolved: frozenset[int] = frozenset()) -> ReplayPlan:
        return plan_for([by_index[i] for i in indices], mode, dissolved)

    def test(indices: Sequence[int], mode: Mode, dissolved: frozenset[int] = frozenset()) -> bool:
        key = (frozenset(indices), mode, dissolved if mode == "grouped" else frozenset())
        return oracle.reproduces(plan(indices, key[1], key[2]), key)

    def phase(name: str, before: int, after: int, tries0: int, t_start: float) -> None:
        phases.append(Phase(name, before, after, budget.tries - tries0, time.monotonic() - t_start))
        say(f"minimize: {name}: {before} -> {after} operations ({budget.tries} tries, "
            f"{time.monotonic() - t0:.0f} s)")

    # 1. Reproduce at all, from the smallest tail window up.
    found: tuple[list[int], Mode] | None = None
    stop_reason = "done"
    tries0, ts = budget.tries, time.monotonic()
    seen: set[frozenset[int]] = set()
    try:
        for w in windows(len(order)):
            candidate = deps.closure(order[-w:])
            if frozenset(candidate) in seen:
                continue
            seen.add(frozenset(candidate))
            say(f"minimize: trying the last {w} operations ({len(candidate)} with dependencies)")
            for mode in ("serial", "grouped"):
                if test(candidate, mode):  # type: ignore[arg-type]
                    found = (candidate, mode)  # type: ignore[assignment]
                    break
            if found is not None:
                break
    except BudgetExhausted as exc:
        stop_reason = str(exc)
    if found is None:
        full = plan(order, "grouped")
        if stop_reason == "done":
            stop_reason = ("the crash did not reproduce on replay, serially or with the recorded in-flight groups: "
                           "it may need timing a replay cannot give; the full reproducer is kept")
        say(f"minimize: {stop_reason}")
        return SearchOutcome(False, full, len(order), phases, (0, 0), dict(oracle.other_titles), budget.tries,
                             time.monotonic() - t0, stop_reason)
    current, mode = found
    phase("reproduce", len(order), len(current), tries0, ts)
    dissolved: frozenset[int] = frozenset()

    try:
        # 2. Whole workers, then all reads.
        tries0, ts, before = budget.tries, time.monotonic(), len(current)
        for worker in workers_of(by_index[i] for i in current):
            candidate = deps.closure([i for i in current if by_index[i].worker != worker])
            if len(candidate) < len(current) and test(candidate, mode):
                current = candidate
        candidate = deps.closure([i for i in current if by_index[i].method not in READ_METHODS])
        if len(candidate) < len(current) and test(candidate, mode):
            current = candidate
        phase("drop workers and reads", before, len(current), tries0, ts)

        # 3. ddmin.
        tries0, ts, before = budget.tries, time.monotonic(), len(current)
        current = ddmin(current, lambda c: test(c, mode), closure=deps.closure, progress=say)
        phase("ddmin", before, len(current), tries0, ts)
        if budget.exhausted:
            stop_reason = budget.why_exhausted()

        # 4. Concurrency only where the crash needs it.
        if mode == "grouped":
            tries0, ts = budget.tries, time.monotonic()
            if test(current, "serial"):
                mode = "serial"
            else:
                for step in plan(current, "grouped").steps:
                    if len(step) > 1 and test(current, "grouped", dissolved | {step[0].group}):
                        dissolved = dissolved | {step[0].group}
            phase(f"concurrency ({plan(current, mode, dissolved).describe()})", len(current), len(current),
                  tries0, ts)
    except BudgetExhausted as exc:
        stop_reason = str(exc)
        say(f"minimize: stopped: {exc}")

    final = plan(current, mode, dissolved)
    say(f"minimize: running the {len(final)}-operation reproducer {config.rate_runs} more times")
    rate = oracle.rate(final, config.rate_runs)
    say(f"minimize: reproduction rate {rate[0]}/{rate[1]}")
    return SearchOutcome(True, final, len(order), phases, rate, dict(oracle.other_titles), budget.tries,
                         time.monotonic() - t0, stop_reason)
