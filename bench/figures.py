"""`Figure`: one measured number with its goal, and the table `make bench` ends with.

A figure whose goal is None is shown for context (peers, breakdowns); only figures with a goal are
counted as met or missed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """`value` in `unit`; `met` is decided by `check(value)` when a goal is given."""

    section: str
    name: str
    value: float | None
    unit: str = ""
    goal: str | None = None
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def judged(cls, section: str, name: str, value: float | None, unit: str, goal: str,
               check: Callable[[float], bool], note: str = "", **extra: Any) -> Figure:
        met = None if value is None else bool(check(value))
        return cls(section, name, value, unit, goal, met, note, dict(extra))

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        if self.met is None:
            return "not measured"
        return "met" if self.met else "MISSED"

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        v = self.value
        if abs(v) >= 100:
            text = f"{v:,.0f}"
        elif abs(v) >= 10:
            text = f"{v:.1f}"
        else:
            text = f"{v:.3g}" if v else "0"
        return f"{text} {self.unit}".strip()


def table_text(figures: Iterable[Figure]) -> str:
    """A plain-text table (no terminal needed: CI logs and docs/BENCHMARKS.md paste it as is)."""
    rows = [("section", "figure", "value", "goal", "verdict", "note")]
    rows += [(f.section, f.name, f.value_text(), f.goal or "", f.verdict, f.note) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + ("  " + r[5] if r[5] else ""))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(figures: Iterable[Figure]) -> str:
    """The same table as Markdown, for docs/BENCHMARKS.md."""
    out = ["| section | figure | value | goal | verdict | note |", "|---|---|---|---|---|---|"]
    for f in figures:
        out.append(f"| {f.section} | {f.name} | {f.value_text()} | {f.goal or ''} | {f.verdict} | {f.note} |")
    return "\n".join(out)


def to_json(figures: Iterable[Figure]) -> str:
    return json.dumps([asdict(f) for f in figures], indent=2, default=str)
