"""What the watchdog hands over: evidence that the target died or stopped, and non-fatal findings.

Kept apart from the watchers so the report can read evidence without importing threads or hosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from harness.watch.kmsg import UserFault


@dataclass(frozen=True)
class MapEntry:
    """One file-backed line of /proc/PID/maps, recorded while the target ran (to find and symbolize files)."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


def parse_maps(text: str, executable_only: bool = True) -> list[MapEntry]:
    """File-backed mappings of a /proc/PID/maps text (anonymous, [heap], [stack] ... are left out).

    Only executable ones by default: an ip always lies in one, and SPDK maps thousands of hugepage files.
    """
    entries: list[MapEntry] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or not parts[5].startswith("/"):
            continue
        if executable_only and "x" not in parts[1]:
            continue
        lo, _, hi = parts[0].partition("-")
        try:
            entries.append(MapEntry(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                                    parts[5].removesuffix(" (deleted)")))
        except ValueError:
            continue
    return entries


@dataclass(frozen=True)
class AbortMessage:
    """A line the target printed on its way to SIGABRT (glibc heap check, assert, SPDK spinlock check).

    kind: `glibc`, `assert`, `spinlock`, `stack-protector`; `text` is the stable part used in titles.
    """

    kind: str
    text: str
    line: str
    function: str | None = None
    file: str | None = None
    lineno: int | None = None


@dataclass
class CrashEvidence:
    """One observation that the target is dead or unusable.

    kind: `fault` (kernel fault line of ours), `oom` (OOM killer chose it), `abort` (fatal message in its
    log), `exit` (it exited: by a signal or a code, unexpectedly), `hang` (no probe answer for `hang_s`).
    """

    kind: str
    summary: str
    source: str
    t: float = field(default_factory=time.time)
    fault: UserFault | None = None
    abort: AbortMessage | None = None
    exit_rc: int | None = None
    hang_s: float | None = None
    attribution: str = ""
    kernel_lines: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    maps: list[MapEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "summary": self.summary, "source": self.source, "t": self.t,
            "attribution": self.attribution,
        }
        if self.fault is not None:
            out["fault"] = self.fault.to_json()
        if self.abort is not None:
            out["abort"] = {k: v for k, v in vars(self.abort).items() if v is not None}
        if self.exit_rc is not None:
            out["exit_rc"] = self.exit_rc
        if self.hang_s is not None:
            out["hang_s"] = self.hang_s
        return out


@dataclass(frozen=True)
class Finding:
    """A non-fatal *ERROR* line matching a configured pattern (e.g. `forced removal`): worth a look, not a crash."""

    pattern: str
    line: str
    t: float = field(default_factory=time.time)
