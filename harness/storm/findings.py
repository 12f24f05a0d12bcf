"""What the checker reports: a `Finding` is something no legal interleaving allows, or a state the target
must never reach; `Findings` keeps the first of each kind (and method, and outcome) and counts the repeats."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Finding:
    """Something no legal interleaving allows, or a state the target must never reach."""

    kind: str
    message: str
    op: dict[str, Any] | None = None
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "op": self.op, "t": self.t}

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Findings:
    """A run's findings, one per kind and method (with the same outcome): a bug met a thousand times is one
    finding and a count, not a thousand lines."""

    def __init__(self) -> None:
        self.items: list[Finding] = []
        self.repeats: dict[tuple[Any, ...], int] = {}
        self._seen: set[tuple[Any, ...]] = set()

    def add(self, finding: Finding) -> None:
        """Keep the first finding of each kind and method (with the same outcome); count the repeats."""
        op = finding.op or {}
        err = op.get("error") or {}
        key = (finding.kind, op.get("method"), err.get("errno") if err else "ok") if op else (
            finding.kind, finding.message)
        if key in self._seen:
            self.repeats[key] = self.repeats.get(key, 0) + 1
            return
        self._seen.add(key)
        self.items.append(finding)

    @property
    def repeat_count(self) -> int:
        return sum(self.repeats.values())
