"""What a storm does: how many connections, how deep, how long, which operations and strategies.

Validated twice: once on its own (field by field, before anything starts) and once against the lvstore the
storm will use (`check_against_lvstore`), so a mistake is one line naming the field before the target is touched.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.errors import ConfigError
from harness.rpc.connect import MAX_CONNECTIONS
from harness.rpc_rules.table import RULES
from harness.storm.operations import KNOWN_METHODS
from harness.storm.strategies import STRATEGIES

MIB = 1024 * 1024
BUSY_MIN_CLUSTERS = 96
"""A busy snapshot's least size: its job must outlast the call behind it (the reference target advances a job
64 clusters per call; spdk_tgt reads 96 MiB for tens of milliseconds)."""
BUSY_MAX_MIB = 256

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, field: str = "duration") -> float:
    """`30`, `"30s"`, `"5m"`, `"1h"`, `"250ms"` -> seconds. Negative or malformed values are a ConfigError."""
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            if value.strip().startswith("-"):
                raise ValueError(f"{field}: must not be negative, got {value!r}")
            raise ValueError(f"{field}: expected a duration like 30s, 5m or 1h, got {value!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise ValueError(f"{field}: expected a duration like 30s, 5m or 1h, got {value!r}")
    if seconds < 0:
        raise ValueError(f"{field}: must not be negative, got {value!r}")
    return seconds


DEFAULT_MIX: dict[str, float] = {r.method: r.storm.weight for r in RULES if r.storm is not None and r.storm.weight > 0}
"""Each row's weight (`StormUse.weight`): what Longhorn's replica does most, create/snapshot/clone/delete, with
the rest as seasoning."""


HARNESS_CONNECTIONS = 2
"""Connections a storm's harness holds beside its workers': the storm's set-up connection and the watchdog's
hang probe."""


class StormConfig(BaseModel):
    """The `storm:` section of a profile. Method names are SPDK's own, as `spdk-rpc` spells them."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(8, description="connections, one operation stream (and seed) each")
    depth: int = Field(4, description="requests each worker keeps in flight on its connection")
    duration: float = Field(60.0, description="seconds, or 30s/5m/1h; 0 = until max_ops or interrupted")
    max_ops: int | None = Field(None, description="stop after this many operations (all workers)")
    rate_limit: float | None = Field(None, description="operations per second, all workers together")
    max_lvols: int = Field(64, description="ceiling on live lvols + snapshots; creates pause above it")
    seed: int = Field(1, description="run seed; worker w derives its own stream from (seed, w)")
    mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    strategies: dict[str, float] = Field(default_factory=dict, description="name -> weight (a list = 1 each)")
    strategy_share: float = Field(0.3, description="fraction of steps that are strategy episodes")
    contention: Literal["low", "medium", "high"] = "medium"
    quiesce_every: float = Field(10.0, description="seconds between drain-and-check points; 0 = only at end")
    lvol_size_mib: tuple[int, int] = Field((4, 16), description="[min, max] MiB of a created lvol")
    thin_ratio: float = Field(0.5, description="fraction of creates that are thin provisioned")
    op_timeout: float = Field(30.0, description="seconds without a reply before the target is unresponsive")
    final_cleanup: bool = Field(True, description="delete everything at the end and check for leaked clusters")
    check_busy_delete: bool = Field(True, description="after a delete answered EBUSY, check the lvol still exists")

    @field_validator("duration", "quiesce_every", "op_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any, info: Any) -> float:
        return parse_duration(value, info.field_name)

    @field_validator("strategies", mode="before")
    @classmethod
    def _strategy_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {str(name): 1.0 for name in value}
        return value

    @field_validator("lvol_size_mib", mode="before")
    @classmethod
    def _size_range(cls, value: Any) -> Any:
        if isinstance(value, int):
            return (value, value)
        return value

    @model_validator(mode="after")
    def _check(self) -> StormConfig:
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")
        if self.workers > (most := self.max_workers):
            each = " with strategies (each worker has a second connection for them)" if self.strategies else ""
            raise ValueError(f"workers: must be <= {most}{each} (spdk_tgt serves at most {MAX_CONNECTIONS} "
                             f"connections, SPDK_JSONRPC_MAX_CONNS, and the harness keeps {HARNESS_CONNECTIONS} "
                             f"for its set-up calls and the watchdog's probe), got {self.workers}")
        if self.depth < 1:
            raise ValueError(f"depth: must be >= 1, got {self.depth}")
        if self.max_ops is not None and self.max_ops < 1:
            raise ValueError(f"max_ops: must be >= 1 (or unset), got {self.max_ops}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit: must be > 0 operations/s (or unset), got {self.rate_limit}")
        if self.max_lvols < 2:
            raise ValueError(f"max_lvols: must be >= 2, got {self.max_lvols}")
        if self.op_timeout <= 0:
            raise ValueError(f"op_timeout: must be > 0, got {self.op_timeout}")
        for method, weight in self.mix.items():
            if method not in KNOWN_METHODS:
                near = [m for m in KNOWN_METHODS if method.removeprefix("bdev_lvol_") in m]
                hint = f" (did you mean {near[0]}?)" if near else f"; known: {', '.join(sorted(KNOWN_METHODS))}"
                raise ValueError(f"mix: unknown method {method!r}{hint}")
            if weight < 0:
                raise ValueError(f"mix.{method}: weight must be >= 0, got {weight}")
        for name, weight in self.strategies.items():
            if name not in STRATEGIES:
                raise ValueError(f"strategies: unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
            if weight < 0:
                raise ValueError(f"strategies.{name}: weight must be >= 0, got {weight}")
        mix_total = sum(self.mix.values())
        strat_total = sum(self.strategies.values())
        if self.mix and mix_total <= 0:
            raise ValueError("mix: weights sum to zero; give at least one method a positive weight")
        if self.strategies and strat_total <= 0:
            raise ValueError("strategies: weights sum to zero; give at least one strategy a positive weight")
        if mix_total <= 0 and strat_total <= 0:
            raise ValueError("mix: no operations to run: give the mix or strategies a positive weight")
        if not 0.0 <= self.strategy_share <= 1.0:
            raise ValueError(f"strategy_share: must be within [0, 1], got {self.strategy_share}")
        if not 0.0 <= self.thin_ratio <= 1.0:
            raise ValueError(f"thin_ratio: must be within [0, 1], got {self.thin_ratio}")
        lo, hi = self.lvol_size_mib
        if lo < 1 or hi < lo:
            raise ValueError(f"lvol_size_mib: expected [min, max] with 1 <= min <= max, got [{lo}, {hi}]")
        return self

    @property
    def max_workers(self) -> int:
        """The most workers one target can serve: a connection each (two with strategies), beside the
        harness's own; more would wait unanswered in the target's listen backlog (or fail to connect)."""
        return (MAX_CONNECTIONS - HARNESS_CONNECTIONS) // (2 if self.strategies else 1)

    @property
    def effective_strategy_share(self) -> float:
        """Episodes only when strategies are named; only episodes when the mix is empty."""
        if not self.strategies or sum(self.strategies.values()) <= 0:
            return 0.0
        if not self.mix or sum(self.mix.values()) <= 0:
            return 1.0
        return self.strategy_share


def check_against_lvstore(cfg: StormConfig, *, cluster_size: int, total_data_clusters: int,
                          free_clusters: int) -> None:
    """Fail before the storm starts if one lvol cannot fit, or the lvstore is not empty enough to judge leaks."""
    lvstore_mib = total_data_clusters * cluster_size // (1024 * 1024)
    free_mib = free_clusters * cluster_size // (1024 * 1024)
    hi = cfg.lvol_size_mib[1]
    if hi > free_mib:
        raise ConfigError(
            f"storm.lvol_size_mib: max {hi} MiB is larger than the lvstore's free space ({free_mib} of "
            f"{lvstore_mib} MiB): lower storm.lvol_size_mib or make bdev.size_mib larger"
        )


def check_against_capabilities(cfg: StormConfig, capabilities: set[str]) -> list[str]:
    """Methods of the mix the target does not register (e.g. Longhorn-only ones on upstream SPDK).

    They are skipped with a note rather than failing the run: the same profile drives upstream and fork targets.
    """
    if not capabilities:
        return []
    return sorted(m for m, w in cfg.mix.items() if w > 0 and m not in capabilities)


ESNAP_METHODS = ("bdev_lvol_clone_bdev", "bdev_lvol_set_parent_bdev")
ESNAP_STRATEGIES = ("esnap-clone-tree", "esnap-reparent", "esnap-missing-reload", "esnap-external-delete",
                    "lvstore-reload-many")
EPISODE_ESNAP_MIB = 4
"""An episode that deletes an external snapshot makes its own, this large (rounded up to a cluster)."""


def esnap_bdev_mibs(cfg: StormConfig, cluster_size: int) -> list[int]:
    """The malloc bdevs the storm makes as external snapshots (none without esnap methods or strategies): two
    shared ones, as large as the largest and the smallest mix lvol (whole clusters), and one per lane (workers x
    depth) for the episodes that make and delete their own. The target session reserves their hugepages before
    the target starts."""
    wants = (any(cfg.mix.get(m, 0) > 0 for m in ESNAP_METHODS)
             or any(s in cfg.strategies for s in ESNAP_STRATEGIES))
    if not wants:
        return []
    cluster_mib = max(1, -(-cluster_size // MIB))
    lo, hi = cfg.lvol_size_mib
    shared = [-(-m // cluster_mib) * cluster_mib for m in (hi, lo)]
    deleting = any(s in cfg.strategies for s in ("esnap-missing-reload", "esnap-external-delete"))
    own = [-(-EPISODE_ESNAP_MIB // cluster_mib) * cluster_mib] * cfg.workers * cfg.depth if deleting else []
    return shared + own


def copy_destination_mib(cfg: StormConfig, cluster_size: int) -> int:
    """The malloc bdev the storm makes as its shallow copies' destination (0: it makes none): as large as the
    largest mix lvol and, for busy-delete, as a busy snapshot of BUSY_MIN_CLUSTERS (a smaller destination
    fails the copy at once: never busy). The target session reserves its hugepages before the target starts."""
    wants_copy = cfg.mix.get("bdev_lvol_start_shallow_copy", 0) > 0 or "busy-delete" in cfg.strategies
    if not wants_copy:
        return 0
    hi = cfg.lvol_size_mib[1]
    if "busy-delete" in cfg.strategies:
        hi = max(hi, min(BUSY_MAX_MIB, -(-BUSY_MIN_CLUSTERS * cluster_size // MIB)))
    return hi
