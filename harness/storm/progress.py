"""What a running storm shows: a live line on a terminal (rich), one log line every 30 s otherwise.

It only reads the engine's counters (no locks, same event loop), at most a few times a second.
"""

from __future__ import annotations

import sys
import time
from typing import Any

LOG_EVERY_S = 30.0
LIVE_EVERY_S = 0.25


class Progress:
    """Renders the storm's counters; `tick()` is called by the engine's monitor every ~50 ms."""

    def __init__(self, storm: Any, *, force: bool | None = None, stream: Any = None) -> None:
        self.storm = storm
        self.stream = stream or sys.stderr
        self.live = bool(force) if force is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_ops = 0
        self._last_t = time.monotonic()
        self._live: Any = None
        if self.live:
            try:
                from rich.console import Console
                from rich.live import Live

                self._live = Live("", console=Console(file=self.stream), refresh_per_second=4, transient=False)
                self._live.start()
            except Exception:
                self._live = None

    def line(self) -> str:
        s = self.storm
        now = time.monotonic()
        elapsed = now - s.t0
        ops = sum(s.ops_by_method.values())
        dt = max(now - self._last_t, 1e-6)
        rate = (ops - self._last_ops) / dt
        self._last_ops, self._last_t = ops, now
        dur = s.cfg.duration
        remaining = f"{max(0.0, dur - elapsed):.0f}s left" if dur > 0 else "no time limit"
        top = ", ".join(f"{m.removeprefix('bdev_lvol_')} {n}" for m, n in s.ops_by_method.most_common(5))
        errs = ", ".join(f"{e} {n}" for e, n in s.errors_by_errno.most_common(4)) or "none"
        # The target's own count (its latest bdev_lvol_get_lvstores reply), not the model's: the model judges
        # overlapping allocations leniently and can drift (even below zero) until the next quiesce point.
        free = s.space.free if s.space.free is not None else "?"
        findings = len(s.checker.findings) if s.checker is not None else 0
        return (f"storm {elapsed:.0f}s ({remaining}) | {ops} ops, {rate:.0f}/s | {top} | errors: {errs} | "
                f"lvols {len(s.view.nodes)} | free clusters {free} | findings {findings}")

    def tick(self) -> None:
        now = time.monotonic()
        every = LIVE_EVERY_S if self._live is not None else LOG_EVERY_S
        if now - self._last < every:
            return
        if self._last == 0.0 and self._live is None:
            self._last = now  # the first log line after 30 s, not at 0
            return
        self._last = now
        text = self.line()
        if self._live is not None:
            self._live.update(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            try:
                self._live.update(self.line())
                self._live.stop()
            except Exception:
                pass
