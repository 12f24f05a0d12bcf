"""What a storm did and found: `StormResult`, the storm part of summary.json."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from harness.storm.findings import Finding

MAX_PAUSES = 1000
"""The latest pauses kept (a soak pauses every 10 s for days; the report draws the latest)."""


@dataclass
class StormResult:
    """What a storm did and found; `to_dict()` is the storm part of summary.json."""

    ops: int = 0
    ops_by_method: dict[str, int] = field(default_factory=dict)
    errors_by_errno: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    stop_reason: str = "duration"
    wall_s: float = 0.0
    ops_per_s: float = 0.0
    lvols_live: int = 0
    free_clusters_start: int | None = None
    free_clusters_end: int | None = None
    races: int = 0
    lvols_compared: int = 0
    """Lvols the quiesce points compared with the target's listing (each time, each lvol): the trees no race of
    the interval before touched."""
    notes: list[str] = field(default_factory=list)
    pauses: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_PAUSES))
    """(start, end) wall times when every lane was held (quiesce points, lvstore-wide ops): the report's bands."""
    io: dict[str, Any] | None = None
    """What the I/O lanes did and found (harness.io.lanes), when the storm did I/O."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "ops_by_method": dict(self.ops_by_method),
            "errors_by_errno": dict(self.errors_by_errno),
            "findings": [f.to_dict() for f in self.findings],
            "stop_reason": self.stop_reason,
            "wall_s": round(self.wall_s, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "lvols_live": self.lvols_live,
            "free_clusters_start": self.free_clusters_start,
            "free_clusters_end": self.free_clusters_end,
            "races": self.races,
            "lvols_compared": self.lvols_compared,
            "notes": list(self.notes),
            "pauses": [[round(a, 3), round(b, 3)] for a, b in self.pauses],
            **({"io": self.io} if self.io is not None else {}),
        }
