"""`MinimizeConfig`: whether and how hard a run minimizes each new crash (the `minimize:` section of a profile)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MinimizeConfig(BaseModel):
    """Flakiness is data: a candidate reproduces when `k` of `tries` fresh targets crash with the same title."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    budget_s: float = Field(600.0, gt=0, description="wall time for the whole search of one crash")
    tries: int = Field(3, ge=1, le=50, description="fresh targets per candidate (n of k-of-n)")
    k: int = Field(2, ge=1, description="crashes with the same title out of `tries` for a candidate to count")
    max_tries: int = Field(1000, ge=1, description="target starts the whole search may spend")
    final_runs: int | None = Field(None, ge=1, le=100,
                                   description="runs of the final reproducer for its rate (default: tries)")
    op_timeout_s: float = Field(10.0, gt=0, description="deadline of one replayed call")
    settle_s: float = Field(0.3, ge=0, description="wait after the last reply for a late death")
    parallel: int = Field(2, ge=1, le=16, description="fresh targets run at once for one candidate")
    cores: bool = Field(False, description="collect a core per try (slower; only if titles need the backtrace)")
    reuse_targets: bool = Field(True, description="a try that survived wipes its target (every lvstore and bdev "
                                "deleted, checked empty) for the next try instead of a restart")

    @model_validator(mode="after")
    def _k_within_tries(self) -> MinimizeConfig:
        if self.k > self.tries:
            raise ValueError(f"k: must be <= tries ({self.tries}), got {self.k}")
        return self

    @property
    def rate_runs(self) -> int:
        return self.final_runs if self.final_runs is not None else self.tries
