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
from dataclasses import dataclass
from typing import Any

from harness.storm.config import StormConfig
from harness.storm.operations import Op
from harness.storm.view import TreeView

# How often an op aims at the hot set (the few most recently used lvols), by contention level.
HOT_SHARE = {"low": 0.0, "medium": 0.5, "high": 0.9}
HOT_SIZE = {"low": 16, "medium": 8, "high": 3}

# The kind of lvol each method targets.
TARGET_KIND: dict[str, str] = {
    "bdev_lvol_snapshot": "volume",
    "bdev_lvol_clone": "snapshot",
    "bdev_lvol_delete": "any",
    "bdev_lvol_resize": "volume",
    "bdev_lvol_rename": "any",
    "bdev_lvol_set_read_only": "volume",
    "bdev_lvol_inflate": "clone",
    "bdev_lvol_decouple_parent": "clone",
    "bdev_lvol_set_parent": "volume",
    "bdev_lvol_detach_parent": "clone",
    "bdev_lvol_set_xattr": "volume",
    "bdev_lvol_get_xattr": "any",
    "bdev_lvol_register_snapshot_checksum": "snapshot",
    "bdev_lvol_get_snapshot_checksum": "snapshot",
    "bdev_lvol_start_shallow_copy": "snapshot",
    "bdev_get_bdevs": "any",
}

MISSING = "storm_missing_lvol"


@dataclass(frozen=True, slots=True)
class Step:
    """One drawn step: a single method, or a strategy episode with its own seed."""

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
    for i, c in enumerate(cum):
        if u < c:
            return i
    return len(cum) - 1


class Scheduler:
    """Turns a drawn step into an operation aimed at a live lvol, honouring contention and the lvol ceiling."""

    def __init__(self, cfg: StormConfig, view: TreeView) -> None:
        self.cfg = cfg
        self.view = view
        self.hot = HOT_SHARE[cfg.contention]
        self.lvs_name = ""
        self.copy_dst: str | None = None
        self.short_of_space: set[int] = set()
        """Workers whose last create (or grow) met ENOSPC and who have not freed anything since."""

    def pick(self, kind: str, step: Step) -> str | None:
        return self.view.pick(kind, step.u_target, self.hot, step.u_hot)

    def build(self, step: Step, worker: int) -> Op:
        """The op for a single-method step. A method with no possible target is sent at a missing name (the
        target must answer No such device), so the per-worker method sequence never depends on state."""
        method = step.method
        assert method is not None
        view = self.view
        name = f"w{worker}n{step.name_no}"
        if method in ("bdev_lvol_create", "bdev_lvol_snapshot", "bdev_lvol_clone") and \
                len(view) >= self.cfg.max_lvols:
            method = "bdev_lvol_delete"  # at the ceiling, growth turns into deletion
        elif worker in self.short_of_space and (method == "bdev_lvol_resize" or
                                                (method == "bdev_lvol_create" and not step.thin)):
            method = "bdev_lvol_delete"  # out of space: free some rather than meet ENOSPC again
        params: dict[str, Any]
        if method == "bdev_lvol_create":
            params = {"lvs_name": self.lvs_name, "lvol_name": name, "size_in_mib": step.size_mib,
                      "thin_provision": step.thin}
        elif method in ("bdev_lvol_get_lvols", "bdev_lvol_get_lvstores"):
            params = {"lvs_name": self.lvs_name}
        elif method == "bdev_lvol_rename_lvstore":
            base = self.lvs_name.removesuffix("_r")
            new = base if self.lvs_name.endswith("_r") else f"{base}_r"
            params = {"old_name": self.lvs_name, "new_name": new}
        else:
            kind = TARGET_KIND[method]
            if method == "bdev_lvol_delete" and step.u_extra < 0.6:
                kind = "leaf"  # mostly leaves, so the population turns over; sometimes inner snapshots
            target = self.pick(kind, step) or MISSING
            params = _params_for(method, target, name, step, self)
        return Op(method, params, worker)


def _params_for(method: str, target: str, name: str, step: Step, sched: Scheduler) -> dict[str, Any]:
    if method == "bdev_lvol_snapshot":
        return {"lvol_name": target, "snapshot_name": name}
    if method == "bdev_lvol_clone":
        return {"snapshot_name": target, "clone_name": name}
    if method == "bdev_lvol_resize":
        return {"name": target, "size_in_mib": step.size_mib}
    if method == "bdev_lvol_rename":
        return {"old_name": target, "new_name": name}
    if method == "bdev_lvol_set_parent":
        parent = sched.view.pick("snapshot", step.u_extra, sched.hot, step.u_hot) or MISSING
        return {"lvol_name": target, "parent_name": parent}
    if method == "bdev_lvol_set_xattr":
        return {"name": target, "xattr_name": "storm", "xattr_value": name}
    if method == "bdev_lvol_get_xattr":
        return {"name": target, "xattr_name": "storm" if step.u_extra < 0.7 else "name"}
    if method == "bdev_lvol_start_shallow_copy":
        return {"src_lvol_name": target, "dst_bdev_name": sched.copy_dst or "storm_copy_dst"}
    return {"name": target}
