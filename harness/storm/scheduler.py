"""Per-worker operation streams: which method or strategy comes next, and which lvol it aims at.

Reproducibility: worker w's stream is `Random(f"{seed}/{w}")`. Every step draws the same number of values
whatever the target's state (method, target fraction, hot-set coin, size, thin coin), and new names are
`w{w}{kind}{n}` from a per-worker counter, so two runs with one seed send the same per-worker sequence of
methods and names. Which live lvol a draw lands on is resolved against the live view when the op is sent,
so with several workers (or depth > 1) the interleaving, and with it the chosen targets, may differ; with
workers=1 and depth=1 the whole run repeats exactly (UUIDs aside).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass

from harness.rpc_rules.table import BY_METHOD
from harness.storm.config import StormConfig
from harness.storm.esnaps import EsnapBdevs
from harness.storm.operations import Op
from harness.storm.view import TreeView

# How often an op aims at the hot set (the few most recently used lvols), by contention level.
HOT_SHARE = {"low": 0.0, "medium": 0.5, "high": 0.9}
HOT_SIZE = {"low": 16, "medium": 8, "high": 3}

MISSING = "storm_missing_lvol"
DELETE = BY_METHOD["bdev_lvol_delete"]


@dataclass(slots=True)
class Step:
    """One drawn step: a single method, or a strategy episode with its own seed (not frozen: a frozen
    dataclass sets each field through object.__setattr__, half the cost of drawing the step)."""

    method: str | None
    strategy: str | None
    u_target: float
    u_hot: float
    u_extra: float
    size_mib: int
    thin: bool
    name_no: int
    episode_seed: int


class WorkerStream:
    """The deterministic sequence of steps for one worker."""

    def __init__(self, cfg: StormConfig, worker: int, methods: list[str], weights: list[float]) -> None:
        self.worker = worker
        self.rng = random.Random(f"{cfg.seed}/{worker}")
        self.cfg = cfg
        self.methods = methods
        self.cum_m = _cumulative(weights)
        self.strategies = [s for s, w in cfg.strategies.items() if w > 0]
        self.cum_s = _cumulative([cfg.strategies[s] for s in self.strategies])
        self.share = cfg.effective_strategy_share if self.strategies else 0.0
        if not self.methods:
            self.share = 1.0
        self.counter = 0

    def next(self) -> Step:
        r = self.rng
        pick_strategy = r.random() < self.share
        u_kind = r.random()
        u_target, u_hot, u_extra = r.random(), r.random(), r.random()
        lo, hi = self.cfg.lvol_size_mib
        size = r.randint(lo, hi)
        thin = r.random() < self.cfg.thin_ratio
        episode_seed = r.getrandbits(32)
        self.counter += 1
        if pick_strategy and self.strategies:
            return Step(None, self.strategies[_index(self.cum_s, u_kind)], u_target, u_hot, u_extra, size, thin,
                        self.counter, episode_seed)
        return Step(self.methods[_index(self.cum_m, u_kind)], None, u_target, u_hot, u_extra, size, thin,
                    self.counter, episode_seed)

    def name(self, kind: str) -> str:
        self.counter += 1
        return f"w{self.worker}{kind}{self.counter}"


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights) or 1.0
    out, acc = [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    if out:
        out[-1] = 1.0
    return out


def _index(cum: list[float], u: float) -> int:
    """The first i with u < cum[i] (a binary search: the mix has a few dozen methods)."""
    return min(bisect_right(cum, u), len(cum) - 1)


class Scheduler:
    """Turns a drawn step into an operation aimed at a live lvol, honouring contention and the lvol ceiling."""

    def __init__(self, cfg: StormConfig, view: TreeView) -> None:
        self.cfg = cfg
        self.view = view
        self.hot = HOT_SHARE[cfg.contention]
        self.lvs_name = ""
        self.copy_dst: str | None = None
        self.esnaps = EsnapBdevs()
        self.short_of_space: set[int] = set()
        """Workers whose last create (or grow) met ENOSPC and who have not freed anything since."""
        self._draw = _Draw(self)

    def build(self, step: Step, worker: int) -> Op:
        """The op for a single-method step, its params from the method's row (`StormUse.args`). A method with
        no possible target is sent at a missing name (the target must answer No such device), so the
        per-worker method sequence never depends on state."""
        method = step.method
        assert method is not None
        rule = BY_METHOD[method]
        if rule.creates_lvol and len(self.view) >= self.cfg.max_lvols:
            rule = DELETE  # at the ceiling, growth turns into deletion
        elif worker in self.short_of_space and (rule.takes_clusters == "always" or
                                                (rule.takes_clusters == "if-thick" and not step.thin)):
            rule = DELETE  # out of space: free some rather than meet ENOSPC again
        assert rule.storm is not None, f"{rule.method} has no StormUse in its row"
        draw = self._draw
        draw.set(step, f"w{worker}n{step.name_no}")
        return Op(rule.method, rule.storm.args(draw), worker)


class _Draw:
    """What a row's argument builder sees of one step (see `harness.rpc_rules.rule.Draw`); the scheduler keeps
    one and sets it per step (builders use it only while they run)."""

    __slots__ = ("_sched", "_step", "copy_dst", "esnap", "lvs_name", "name", "size_mib", "thin", "u_extra")

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched

    def set(self, step: Step, name: str) -> None:
        sched = self._sched
        self._step = step
        self.name = name
        self.size_mib = step.size_mib
        self.thin = step.thin
        self.u_extra = step.u_extra
        self.lvs_name = sched.lvs_name
        self.copy_dst = sched.copy_dst
        self.esnap = sched.esnaps.pick(step.u_extra)

    def target(self, kind: str) -> str:
        s, step = self._sched, self._step
        return s.view.pick(kind, step.u_target, s.hot, step.u_hot) or MISSING

    def other(self, kind: str) -> str:
        s, step = self._sched, self._step
        return s.view.pick(kind, step.u_extra, s.hot, step.u_hot) or MISSING
