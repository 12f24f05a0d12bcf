"""Crash-aware storms: a long run that keeps re-finding one bug stops issuing what triggers it.

A nightly on a buggy build mostly re-finds what it found in its first minute. Once a crash key has been seen
`steer.after` times, the next incarnations leave out what preceded its crashes: the strategy whose episode the
deaths cut off (each call carries its episode, harness.history.EPISODE), or, for crashes outside any episode,
the method of the calls the deaths cut off; where a crash kept its backtrace, the RPC on the crashing stack
decides (`Triggers`). A key that keeps crashing after that is steered again every `steer.after` crashes,
from what preceded its crashes since, one more thing each time, up to `steer.max_per_key` decisions (then its
repeats are only counted: `Steering.capped`). It says so (health line, summary), and never steers away from
everything (harness.longrun keeps the last mix then).

Steering can also leave a mix that crashes nothing: on the NULL-check build, once a method that fed the
commonest assertion was left out, the last incarnation of a 15-minute nightly ran 13 minutes without a crash
(and without a new key). So while anything is steered away an incarnation gets at most `steer.quiet_s`; one that
ends quiet gives back one thing steering took, on trial (the one given back least often, newest first): if its
crashes come back it is left out again and the next quiet slice tries another, so the hour rotates through mixes
rather than keeping one that re-finds a known key.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.report.backtrace import rpc_in_stack
from harness.rpc_rules.table import READ_METHODS
from harness.storm.config import parse_duration

LOST = frozenset({"ECONNRESET", "ETIMEDOUT"})
"""A call the death cut off (or that hung): what the target was doing when it died."""

NEVER_STEERED = frozenset({"bdev_lvol_create"})
"""What steering never leaves out: without creates a storm has no lvols and every other call in the mix answers
ENOENT (a 15-minute nightly on the NULL-check build that left it out ran 60 s at 3,500 calls/s with 0 live
lvols). A known issue may still name it (`known-issues.yaml`: the user's choice)."""


class SteeringConfig(BaseModel):
    """The `steer:` section of a profile."""

    model_config = ConfigDict(extra="forbid")

    after: int = Field(3, ge=0, description="crashes of one key before a long run stops issuing what triggers "
                                            "it (0: never steer)")
    quiet_s: float = Field(60.0, ge=0, description="while steering leaves something out, an incarnation that "
                           "runs this long without a crash ends and gives one thing back, on trial (0: never)")
    max_per_key: int = Field(1, ge=0, description="decisions one key may make; after that its crashes are counted "
                             "(cheap repeats), not steered (0: no limit)")

    @field_validator("quiet_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value, "steer.quiet_s")


@dataclass
class SteeredAway:
    """One decision: what a key's crashes made the run leave out, and why."""

    key: str
    title: str
    count: int
    strategies: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "count": self.count, "strategies": self.strategies,
                "methods": self.methods, "why": self.why}


@dataclass
class Triggers:
    """What a crash cut off: per name, the calls lost, whether it held the first lost call, and whether its
    handler was on the crashing stack.

    The crashing stack (backtrace.txt, kept for a key's first crashes) names the RPC that died: SPDK's handlers
    are rpc_<method>. Without it, the first lost call (sent earliest) is the oldest the target had not answered:
    often what it was working on (a delete's callback runs late), the others queued behind it. Not always: a
    target answers a poll's requests together, so a call answered in the same poll as the crashing one is lost
    with it, and a slow create is often the oldest (on the NULL-check build 51 of 53 stacks of the commonest
    assertion held bdev_lvol_rename while the first lost call was most often a create). With two strategies in
    flight, counting calls alone blamed whichever had more queued.
    """

    in_stack: Counter[str] = field(default_factory=Counter)
    first: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)

    def update(self, other: Triggers) -> None:
        self.in_stack.update(other.in_stack)
        self.first.update(other.first)
        self.calls.update(other.calls)

    def ranked(self, leave: set[str] | frozenset[str]) -> list[tuple[str, int, int, int]]:
        """(name, crashes its handler was on the stack of, crashes it held the first lost call of, calls lost),
        most to blame first."""
        names = [n for n in {**self.in_stack, **self.calls} if n not in leave]
        return sorted(((n, self.in_stack[n], self.first[n], self.calls[n]) for n in names),
                      key=lambda r: (-r[1], -r[2], -r[3], r[0]))


def triggers_of(crash_dir: Path) -> tuple[Triggers, Triggers]:
    """(strategies, methods) of the calls a crash cut off, from its last-operations.jsonl."""
    strategies, methods = Triggers(), Triggers()
    try:
        lines = (crash_dir / "last-operations.jsonl").read_text().splitlines()
    except OSError:
        return strategies, methods
    stack = rpc_in_stack(crash_dir)
    first_strategy: tuple[float, str] | None = None
    first_method: tuple[float, str] | None = None
    stack_strategy: tuple[float, str] | None = None
    for line in lines:
        try:
            op = json.loads(line)
        except ValueError:
            continue
        if not isinstance(op, dict):
            continue
        error = op.get("error") or {}
        if not isinstance(error, dict) or error.get("errno") not in LOST:
            continue
        t_start = op.get("t_start")
        sent = float(t_start) if isinstance(t_start, (int, float)) else float("inf")
        episode = op.get("episode")
        if isinstance(episode, str) and ":" in episode:
            name = episode.split(":", 1)[1]
            strategies.calls[name] += 1
            if first_strategy is None or sent < first_strategy[0]:
                first_strategy = (sent, name)
            if op.get("method") == stack and (stack_strategy is None or sent < stack_strategy[0]):
                stack_strategy = (sent, name)
        method = op.get("method")
        if isinstance(method, str) and int(op.get("worker", 0)) >= 0 and method not in READ_METHODS:
            methods.calls[method] += 1
            if first_method is None or sent < first_method[0]:
                first_method = (sent, method)
    if first_strategy is not None:
        strategies.first[first_strategy[1]] += 1
    if first_method is not None:
        methods.first[first_method[1]] += 1
    if stack_strategy is not None:
        strategies.in_stack[stack_strategy[1]] += 1
    if stack is not None and stack not in READ_METHODS:
        methods.in_stack[stack] += 1
    return strategies, methods


class Steering:
    """Counts crashes by key with what preceded them; decides, once per key, what to leave out."""

    def __init__(self, config: SteeringConfig) -> None:
        self.config = config
        self.seen: Counter[str] = Counter()
        self.strategies: dict[str, Triggers] = {}
        self.methods: dict[str, Triggers] = {}
        """What preceded each key's crashes since its last decision."""
        self.decisions: dict[str, list[SteeredAway]] = {}

    def observe(self, key: str, title: str, crash_dir: Path | None,
                out: tuple[set[str], set[str]] | None = None) -> SteeredAway | None:
        """Count one crash; the new decision when this crash made its key cross `steer.after`.

        `out`: (strategies, methods) the run leaves out now (given-back ones are back in, and may be left out
        again); by default everything decided so far."""
        self.seen[key] += 1
        if crash_dir is not None:
            strategies, methods = triggers_of(crash_dir)
            self.strategies.setdefault(key, Triggers()).update(strategies)
            self.methods.setdefault(key, Triggers()).update(methods)
        earlier = self.decisions.get(key, [])
        since = self.seen[key] - (earlier[-1].count if earlier else 0)
        if not self.config.after or since < self.config.after:
            return None
        n = self.seen[key]
        strategies_left, methods_left = out if out is not None else self.avoided()
        by_strategy = (self.strategies.get(key) or Triggers()).ranked(strategies_left)
        by_method = (self.methods.get(key) or Triggers()).ranked(methods_left | NEVER_STEERED)
        if self.capped(key):  # only what it decided before, given back since and crashing again, goes out again
            mine = {x for d in earlier for x in (*d.strategies, *d.methods)}
            by_strategy = [r for r in by_strategy if r[0] in mine]
            by_method = [r for r in by_method if r[0] in mine]
        again = " more, after what was left out before" if earlier else ""
        stacked = by_method[0] if by_method and by_method[0][1] else None
        outside = " none in a new episode;"
        if by_strategy and stacked is not None and not by_strategy[0][1]:
            by_strategy = []  # the crashing stack names a method no episode's lost call was: leave that out
            outside = ""
        if by_strategy:
            name, in_stack, first, hits = by_strategy[0]
            where = (f"its {stacked[0] if stacked else 'call'} was on the crashing stack at {in_stack} of them"
                     if in_stack else f"its call was the one in progress at {first} of them")
            decision = SteeredAway(key, title, n, strategies=[name],
                                   why=f"{since} crashes{again}; {where}, the deaths cut off its episodes {hits} "
                                       "times")
        elif by_method:
            name, in_stack, first, hits = by_method[0]
            where = (f"its handler was on the crashing stack at {in_stack} of them" if in_stack
                     else f"{name} was in progress at {first} of them")
            decision = SteeredAway(key, title, n, methods=[name],
                                   why=f"{since} crashes{again};{outside} {where}, the deaths cut off {hits} of "
                                       "its calls")
        else:
            return None
        self.decisions.setdefault(key, []).append(decision)
        self.strategies[key], self.methods[key] = Triggers(), Triggers()  # the next decision learns afresh
        return decision

    def capped(self, key: str) -> bool:
        """The key made its `steer.max_per_key` decisions: what else it crashes in is not left out.

        A key that crashes whatever is left out is everywhere: on the NULL-check build the blob_sync_md
        assertion (any metadata update racing another on one blob) took 12 methods out of a 15-minute nightly
        one after the other, and the rest of the mix with them (7 keys); one decision per key found 13."""
        limit = self.config.max_per_key
        return bool(limit) and len(self.decisions.get(key, [])) >= limit

    def all_decisions(self) -> list[SteeredAway]:
        return [d for ds in self.decisions.values() for d in ds]

    def avoided(self) -> tuple[set[str], set[str]]:
        strategies = {s for d in self.all_decisions() for s in d.strategies}
        methods = {m for d in self.all_decisions() for m in d.methods}
        return strategies, methods
