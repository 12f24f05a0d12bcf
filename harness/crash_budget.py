"""`CrashBudget`: which crashes of a long run keep their whole evidence, so its disk stays bounded at any rate.

A nightly on a buggy build crashes hundreds of times, mostly with the bugs it met in its first minute. The
first `cores_per_key` crashes of each crash key keep everything (core, backtrace, reproducer); a repeat keeps
what tells it apart (its count, its last operations, the target log slice) and no core; once the run dir
holds `cap_mb`, a crash keeps only its count and a one-line crash.json. What was not kept is said, never lost
silently.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class EvidenceConfig(BaseModel):
    """The `evidence:` section: how much of each crash a run keeps on disk."""

    model_config = ConfigDict(extra="forbid")

    cores_per_key: int = Field(0, ge=0, description="crashes per crash key that keep a core, backtrace and "
                                                    "reproducer (0: every crash)")
    cap_mb: float = Field(0, ge=0, description="the run dir's size after which a crash keeps only its count "
                                               "(0: no cap)")


class Keep(Enum):
    """How much of one crash goes to disk."""

    ALL = "all"
    REPEAT = "repeat"
    COUNT = "count"


def tree_mb(path: Path) -> float:
    """Bytes under `path` in MiB (files only; links not followed)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total / (1024 * 1024)


class CrashBudget:
    """Shared by every incarnation of a long run: counts crashes by key and says what each may keep."""

    def __init__(self, config: EvidenceConfig, root: Path) -> None:
        self.config = config
        self.root = root
        self.seen: Counter[str] = Counter()
        self.capped = False
        self._lock = threading.Lock()

    def claim(self, key: str) -> Keep:
        """Count one crash of `key` and say how much of it to keep."""
        with self._lock:
            self.seen[key] += 1
            n = self.seen[key]
            if self.config.cap_mb and tree_mb(self.root) >= self.config.cap_mb:
                self.capped = True
                return Keep.COUNT
            if self.config.cores_per_key and n > self.config.cores_per_key:
                return Keep.REPEAT
            return Keep.ALL

    def note(self, keep: Keep, key: str) -> str | None:
        """What the crash dir says about what it does not hold."""
        if keep is Keep.REPEAT:
            return (f"evidence: crash {self.seen[key]} of this key: no core, backtrace or repro.py kept "
                    f"(evidence.cores_per_key: {self.config.cores_per_key}); the first one has them")
        if keep is Keep.COUNT:
            return (f"evidence: the run dir reached evidence.cap_mb ({self.config.cap_mb:g} MiB): only this "
                    "crash's title and time are kept")
        return None
