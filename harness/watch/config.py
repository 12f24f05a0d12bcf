"""`WatchConfig`: the `watch:` section of a profile, what the watchdog follows and when silence is a hang."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WatchConfig(BaseModel):
    """What the watchdog follows and how long silence may last before it calls a hang."""

    model_config = ConfigDict(extra="forbid")

    kernel_log: bool = True
    hang_after_s: float = Field(30.0, gt=0)
    probe_interval_s: float = Field(2.0, gt=0, description="how often the hang probe asks spdk_get_version")
    core_dumps: bool = True
    error_patterns: list[str] = Field(
        default_factory=lambda: ["Lvol store removed with error", "forced removal"]
    )
