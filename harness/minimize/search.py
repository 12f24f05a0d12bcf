"""The search for a minimal reproducer: phases from cheap and coarse to fine, every candidate on fresh targets.

1. Reproduce at all: the episodes of the workers the death cut off (the lives of the objects they touched),
   then everything before the crash (a huge history: its last 4096, 16384, ... operations first), each also
   without the calls the target refused, serially first and then with the recorded in-flight groups.
   Nothing reproduces: the crash may need timing a replay cannot give, and the full reproducer is kept.
2. Whole workers: each alone (the one cut off by the crash first), then each dropped; then all reads.
3. ddmin over objects (every call on one lvol at once), then over single operations, closed under
   dependencies.
4. Concurrency only where it matters: a grouped result is tried serially, then each group dissolved in turn,
   then each one-write batch (calls the storm wrote to the socket at once) sent as separate calls.
5. The result runs `rate_runs` more times: its reproduction rate.

A candidate reproduces when `k` of `tries` fresh targets die with the original title (`Oracle`); other titles
are counted and reported, and the search keeps looking for the original one.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.minimize.config import MinimizeConfig
from harness.minimize.ddmin import Budget, BudgetExhausted, ddmin
from harness.minimize.deps import Dependencies, ObjectLives, object_units
from harness.minimize.operations import Operation, workers_of
from harness.minimize.plan import Mode, ReplayPlan, Split, plan_for
from harness.report.title import THIN_EVIDENCE, crash_key
from harness.rpc_rules.table import READS

Progress = Callable[[str], None]


@dataclass
class TrialResult:
    """One replay against one fresh target: the crash title it died with, or None if it survived."""

    title: str | None
    elapsed_s: float = 0.0
    answered: int = 0
    detail: str = ""
    reused: bool = False
    """It ran on a target an earlier (survived) try wiped, not a freshly started one."""


class TrialRunner(Protocol):
    """Runs a plan against a fresh target and says how it died (the real one is `harness.minimize.trial`)."""

    def run(self, plan: ReplayPlan) -> TrialResult: ...


def run_many(runner: TrialRunner, plan: ReplayPlan, count: int) -> list[TrialResult]:
    """`count` tries of one plan, at once when the runner can (`run_many`), else one after the other."""
    many = getattr(runner, "run_many", None)
    if count > 1 and callable(many):
        return list(many(plan, count))
    return [runner.run(plan) for _ in range(count)]


RATELIMIT_PAUSE_S = 1.0
"""After a try whose fault line the kernel dropped: printk_ratelimit (5 s, burst 10) recovers in seconds."""
SETUP_REFUSED = "replay not faithful"
"""The start of a try's title when the fresh target refused what the recording did not for reasons of this
machine (`trial.environment_refusal`: ENOMEM from hugepages other jobs hold, a core another SPDK app claims, a
target that did not start): the candidate never ran."""
REFUSALS_BEFORE_STOP = 2
"""Refused tries in a row that stop the search: one may be a passing squeeze (another job took the hugepages a
moment), two say this machine cannot run the replay, and every further try would be refused the same way."""
UNANIMOUS_BEFORE_ONE_TRY = 3
"""Candidates whose every try agreed (all crashed, or none did) before one try decides a candidate: a crash
that reproduces every time needs no k-of-n, and on a real target each try is a target start. The final rate
runs still measure the reproducer's flakiness."""


class EnvironmentRefused(BudgetExhausted):
    """The fresh targets refuse what the recording did (a reason of this machine, not of the candidate): the
    search stops at once and says why, keeping what it has."""
_INDETERMINATE = (*THIN_EVIDENCE, SETUP_REFUSED)


def indeterminate(title: str) -> bool:
    """A title that says the evidence was incomplete (the kernel's show_signal_msg ratelimit dropped the fault
    line, or the replay could not even set up: SETUP_REFUSED), not that the crash differs: it neither confirms
    nor refutes a candidate."""
    return any(text in title for text in _INDETERMINATE)


def title_key(title: str) -> str:
    """What makes two titles the same crash (harness.report.title.crash_key: lines, offsets, libc variants)."""
    return crash_key(title)


def signal_of(title: str) -> str:
    match = re.match(r"(SIG[A-Z]+)", title)
    return match.group(1) if match else title


CandidateKey = tuple[frozenset[int], str, frozenset[int], Split]
"""(operation indices, mode, dissolved groups, split batches): what a candidate's replay is decided by."""


class Oracle:
    """k-of-n reproduction of one title, cached per candidate, spending the shared budget per target start."""

    def __init__(self, runner: TrialRunner, title: str, config: MinimizeConfig, budget: Budget,
                 progress: Progress) -> None:
        self.runner = runner
        self.title = title
        self.config = config
        self.budget = budget
        self.say = progress
        self.cache: dict[CandidateKey, bool] = {}
        self.other_titles: Counter[str] = Counter()
        self.survived = 0
        self.candidates = 0
        self.indeterminate = 0
        self.refused_in_a_row = 0
        self.unanimous = 0
        """Candidates decided so far whose every try agreed; once UNANIMOUS_BEFORE_ONE_TRY, one try decides."""
        self.mixed = False

    def reproduces(self, plan: ReplayPlan, key: CandidateKey | None = None) -> bool:
        if key is not None and key in self.cache:
            return self.cache[key]
        k, tries = self.k_of_n
        hits = misses = unsure = 0
        self.candidates += 1
        while hits < k and misses <= tries - k:
            # As many at once as could still all be needed: k at first, fewer once some are in.
            batch = max(1, min(self.config.parallel, k - hits, tries - hits - misses))
            self.budget.spend(batch)
            for result in run_many(self.runner, plan, batch):
                self._refused(result)
                verdict = self.verdict(result.title)
                if verdict is None and unsure < tries:
                    unsure += 1  # say nothing either way: run it again (bounded), after a pause
                    self.indeterminate += 1
                    time.sleep(RATELIMIT_PAUSE_S)
                elif verdict:
                    hits += 1
                else:
                    misses += 1
                    self._note(result)
        if hits and misses:
            self.mixed = True
        elif not self.mixed:
            self.unanimous += 1
        ok = hits >= k
        if key is not None:
            self.cache[key] = ok
        return ok

    @property
    def k_of_n(self) -> tuple[int, int]:
        """The configured k of n, or 1 of 1 once the crash has shown itself deterministic (see
        UNANIMOUS_BEFORE_ONE_TRY); a candidate with mixed results ends that for the rest of the search."""
        if not self.mixed and self.unanimous >= UNANIMOUS_BEFORE_ONE_TRY:
            return 1, 1
        return self.config.k, self.config.tries

    def _refused(self, result: TrialResult) -> None:
        """Stop the search when fresh targets keep refusing the replay for reasons of this machine."""
        if result.title is None or not result.title.startswith(SETUP_REFUSED):
            self.refused_in_a_row = 0
            return
        self.refused_in_a_row += 1
        if self.refused_in_a_row >= REFUSALS_BEFORE_STOP:
            raise EnvironmentRefused(f"stopped after {self.refused_in_a_row} tries in a row the fresh target could "
                                     f"not run as recorded ({result.title.removeprefix(SETUP_REFUSED + ': ')}): "
                                     "a reason of this machine, not of the candidate")

    def verdict(self, got: str | None) -> bool | None:
        """Same crash? None when the try's evidence was too thin to tell (the kernel dropped its fault line)."""
        if got == self.title or (got is not None and title_key(got) == title_key(self.title)):
            return True
        if got is None:
            return False
        if got.startswith(SETUP_REFUSED):
            return None
        if indeterminate(got):
            return signal_of(got) == signal_of(self.title) if indeterminate(self.title) else None
        return False

    def _note(self, result: TrialResult) -> None:
        if result.title is None:
            self.survived += 1
            return
        if result.title.startswith(SETUP_REFUSED):
            # Still unusable after the reruns: counted as a miss, but it is no crash title.
            self.say(f"minimize: counted as not reproduced after {self.config.tries} unusable tries: "
                     f"{result.title}")
            return
        if result.title not in self.other_titles:
            self.say(f"minimize: a candidate crashed with another title: {result.title!r} "
                     f"(still looking for {self.title!r})")
        self.other_titles[result.title] += 1

    def rate(self, plan: ReplayPlan, runs: int) -> tuple[int, int]:
        """(same-title crashes, runs) over `runs` fresh targets; not bounded by the search budget. A try whose
        evidence was too thin to tell is run again (at most `runs` times in all)."""
        hits = done = unsure = 0
        while done < runs:
            batch = min(self.config.parallel, runs - done)
            for result in run_many(self.runner, plan, batch):
                self._refused(result)
                verdict = self.verdict(result.title)
                if verdict is None and unsure < runs:
                    unsure += 1
                    self.indeterminate += 1
                    time.sleep(RATELIMIT_PAUSE_S)
                    continue
                done += 1
                if verdict:
                    hits += 1
                else:
                    self._note(result)
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


def windows(total: int, first: int = 4096, factor: int = 4) -> list[int]:
    """Tail window sizes to try: everything when short, else the last 4096, 16384, ... and finally everything.

    Small windows rarely help: a storm interleaves one episode's calls with thousands of others, and state
    changes (a decouple, a set_parent) are not pulled in by the name closure. They only keep a huge history
    from costing a full replay per try."""
    out: list[int] = []
    w = first
    while w < total:
        out.append(w)
        w *= factor
    out.append(total)
    return out


LOST_ERRNOS = frozenset({"ECONNRESET", "ETIMEDOUT"})
"""A call cut off by the death (or hung): its worker was in the middle of something when the target died."""
MAX_SLICE_WORKERS = 8

NO_EFFECT_ERRNOS = frozenset({"ENODEV", "ENOENT", "EEXIST", "EPERM", "EINVAL", "ENOSPC"})
"""Refusals that change nothing in SPDK (checked before any change). Not EBUSY: the forced-removal bug answers
EBUSY and removes the lvol anyway; not a lost or timed-out call: its effect is unknown."""


def refused_without_effect(op: Operation) -> bool:
    return op.error is not None and op.error.get("errno") in NO_EFFECT_ERRNOS


def worker_order(ops: Sequence[Operation]) -> list[int]:
    """Workers most likely to hold the crash first: those whose calls the death cut off, oldest cut-off call
    first (a target serves requests in order, so the oldest outstanding one is the one it died in), then the
    others, latest first."""
    last: dict[int, float] = {}
    oldest_lost: dict[int, float] = {}
    for op in ops:
        last[op.worker] = max(last.get(op.worker, 0.0), op.t_start)
        if op.error is not None and op.error.get("errno") in LOST_ERRNOS:
            oldest_lost[op.worker] = min(oldest_lost.get(op.worker, op.t_start), op.t_start)
    return sorted(last, key=lambda w: (w not in oldest_lost, oldest_lost.get(w, 0.0), -last[w]))


def search(ops: Sequence[Operation], title: str, runner: TrialRunner, config: MinimizeConfig, *,
           budget: Budget | None = None, progress: Progress | None = None,
           stack_method: str | None = None) -> SearchOutcome:
    """Minimize `ops` (execution order, in-flight groups assigned, nothing after the crash) for `title`.

    `stack_method` is the RPC whose handler is on the crashing stack (the crash dir's backtrace), if known: the
    episodes whose cut-off calls include it are tried first."""
    say = progress or (lambda _msg: None)
    budget = budget or Budget(config.max_tries, config.budget_s)
    oracle = Oracle(runner, title, config, budget, say)
    deps = Dependencies(ops)
    lives = ObjectLives(ops, deps)
    by_index = {op.index: op for op in ops}
    order = [op.index for op in ops]
    t0 = time.monotonic()
    phases: list[Phase] = []

    def plan(indices: Sequence[int], mode: Mode, dissolved: frozenset[int] = frozenset(),
             split: Split = frozenset()) -> ReplayPlan:
        return plan_for([by_index[i] for i in indices], mode, dissolved, split)

    def test(indices: Sequence[int], mode: Mode, dissolved: frozenset[int] = frozenset(),
             split: Split = frozenset()) -> bool:
        key: CandidateKey = (frozenset(indices), mode, dissolved if mode == "grouped" else frozenset(), split)
        return oracle.reproduces(plan(indices, mode, key[2], split), key)

    def phase(name: str, before: int, after: int, tries0: int, t_start: float) -> None:
        phases.append(Phase(name, before, after, budget.tries - tries0, time.monotonic() - t_start))
        say(f"minimize: {name}: {before} -> {after} operations ({budget.tries} tries, "
            f"{time.monotonic() - t0:.0f} s)")

    # 1. Reproduce at all, from the smallest tail window up.
    found: tuple[list[int], Mode] | None = None
    stop_reason = "done"
    tries0, ts = budget.tries, time.monotonic()
    seen: set[frozenset[int]] = set()
    refused = {op.index for op in ops if refused_without_effect(op)}

    def attempts() -> Iterator[tuple[str, list[int]]]:
        """Candidates that may reproduce at all, small and likely first.

        A storm's crash is one worker's episode: the lives of what the workers cut off by the death touched
        replay with far less interference than everything. Then the tail windows and the whole history. The
        calls the target refused change nothing, but replayed in a slightly different order they may succeed
        and make the replay diverge (space taken, objects gone): each candidate is also tried without them."""
        cut_off = [w for w in worker_order(ops) if any(
            op.worker == w and op.error is not None and op.error.get("errno") in LOST_ERRNOS for op in ops)]
        several = len({op.worker for op in ops}) > 1
        slices = cut_off[:MAX_SLICE_WORKERS] if several else []
        mine = {w: [op.index for op in ops if op.worker == w] for w in slices}
        sliced: list[tuple[str, list[int]]] = []
        for k in (32, 128):
            for worker in slices:
                if k < len(mine[worker]):
                    sliced.append((f"worker {worker}'s last {k} calls with the lives of what they touch",
                                   lives.complete(mine[worker][-k:], rounds=1)))
        for worker in slices:
            sliced.append((f"worker {worker}'s episode", lives.complete(mine[worker])))
        # The strategy episodes the death cut off (the history tags each call with its episode): a storm's
        # crash is most often one episode's, and its calls alone, with what they name, replay cleanly.
        # First those whose cut-off calls hold the RPC on the crashing stack, oldest such call first (a
        # long-running call of another episode can be cut off too: a checksum sent before the fatal delete).
        lost = [op for op in ops if op.episode is not None and op.error is not None
                and op.error.get("errno") in LOST_ERRNOS]
        on_stack: dict[str, float] = {}
        for op in lost:
            if op.method == stack_method and op.episode is not None:
                on_stack[op.episode] = min(on_stack.get(op.episode, op.t_start), op.t_start)
        episodes = sorted(((ep, lives.complete([op.index for op in ops if op.episode == ep]))
                           for ep in dict.fromkeys(op.episode for op in lost if op.episode is not None)),
                          key=lambda e: (e[0] not in on_stack, on_stack.get(e[0], 0.0), len(e[1])))
        yield from ((f"the crashing episode {ep}", candidate) for ep, candidate in episodes[:MAX_SLICE_WORKERS])
        # Smallest first: cheap to replay, and a replies-queued death cuts off several workers' calls at once
        # (the target answers a whole poll's requests after running them), so "oldest cut-off call" misleads.
        yield from sorted(sliced, key=lambda item: len(item[1]))
        for w in windows(len(order)):
            yield (f"the last {w} operations" if w < len(order) else "everything"), lives.complete(order[-w:])

    try:
        for label, window in attempts():
            for suffix, candidate in (("", window),
                                      (" without refused calls", deps.closure(i for i in window if i not in refused))):
                if frozenset(candidate) in seen:
                    continue
                seen.add(frozenset(candidate))
                say(f"minimize: trying {label}{suffix} ({len(candidate)} operations with dependencies)")
                modes: tuple[Mode, ...] = ("serial", "serial-sent", "grouped")
                for each in modes:
                    if test(candidate, each):
                        found = (candidate, each)
                        break
                if found is not None:
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
    split: Split = frozenset()

    try:
        # 2. Whole workers (one alone first: a storm episode runs on one worker), then all reads.
        tries0, ts, before = budget.tries, time.monotonic(), len(current)
        workers = worker_order([by_index[i] for i in current])
        if len(workers) > 1:
            for worker in workers:
                kept = set(current)
                candidate = [i for i in lives.complete(i for i in current if by_index[i].worker == worker)
                             if i in kept]
                if len(candidate) < len(current) and test(candidate, mode):
                    say(f"minimize: worker {worker} alone (with the lives of what it touched) reproduces: "
                        f"{len(candidate)} operations")
                    current = candidate
                    break
            for worker in workers_of(by_index[i] for i in current):
                candidate = deps.closure([i for i in current if by_index[i].worker != worker])
                if len(candidate) < len(current) and test(candidate, mode):
                    current = candidate
        candidate = deps.closure([i for i in current if by_index[i].method not in READS])
        if len(candidate) < len(current) and test(candidate, mode):
            current = candidate
        phase("drop workers and reads", before, len(current), tries0, ts)

        # 3. ddmin over objects (an lvol's whole life at once), then over single operations.
        tries0, ts, before = budget.tries, time.monotonic(), len(current)
        unit_of = object_units([by_index[i] for i in current])

        def ops_of(units: Sequence[int]) -> list[int]:
            wanted = set(units)
            return deps.closure([i for i in current if unit_of[i] in wanted])

        def unit_closure(units: list[int]) -> list[int]:
            return list(dict.fromkeys(unit_of[i] for i in ops_of(units)))

        units = list(dict.fromkeys(unit_of[i] for i in current))
        kept_units = ddmin(units, lambda us: test(ops_of(us), mode), closure=unit_closure,
                           progress=lambda m: say(m.replace("operations", "objects")))
        current = ops_of(kept_units)
        phase("ddmin over objects", before, len(current), tries0, ts)
        tries0, ts, before = budget.tries, time.monotonic(), len(current)
        current = ddmin(current, lambda c: test(c, mode), closure=deps.closure, progress=say)
        phase("ddmin", before, len(current), tries0, ts)
        if budget.exhausted:
            stop_reason = budget.why_exhausted()

        # 4. Concurrency only where the crash needs it (and the plainest order that still crashes).
        if mode == "serial-sent" and test(current, "serial"):
            mode = "serial"
        if mode == "grouped":
            tries0, ts = budget.tries, time.monotonic()
            if test(current, "serial"):
                mode = "serial"
            elif test(current, "serial-sent"):
                mode = "serial-sent"
            else:
                for step in plan(current, "grouped").steps:
                    if len(step) > 1 and test(current, "grouped", dissolved | {step[0].group}):
                        dissolved = dissolved | {step[0].group}
            phase(f"concurrency ({plan(current, mode, dissolved).describe()})", len(current), len(current),
                  tries0, ts)
        # One-write batches only where the crash needs the target to read the calls in one poll.
        batch_keys = list(dict.fromkeys(op.batch_key for op in plan(current, mode, dissolved).ops
                                        if op.batch_key is not None))
        if batch_keys:
            tries0, ts = budget.tries, time.monotonic()
            for key in batch_keys:
                if test(current, mode, dissolved, split | {key}):
                    split = split | {key}
                    say(f"minimize: batch {key[2]} of worker {key[0]} need not be one write")
                else:
                    say(f"minimize: batch {key[2]} of worker {key[0]} must stay one write (sent as separate "
                        "calls it does not reproduce)")
            phase(f"one-write batches ({plan(current, mode, dissolved, split).describe()})", len(current),
                  len(current), tries0, ts)
    except BudgetExhausted as exc:
        stop_reason = str(exc)
        say(f"minimize: stopped: {exc}")

    final = plan(current, mode, dissolved, split)
    say(f"minimize: running the {len(final)}-operation reproducer {config.rate_runs} more times")
    try:
        rate = oracle.rate(final, config.rate_runs)
    except EnvironmentRefused as exc:
        rate, stop_reason = (0, 0), f"{stop_reason}; rate not measured: {exc}"
    say(f"minimize: reproduction rate {rate[0]}/{rate[1]}")
    return SearchOutcome(True, final, len(order), phases, rate, dict(oracle.other_titles), budget.tries,
                         time.monotonic() - t0, stop_reason)
