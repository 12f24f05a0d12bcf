"""`Timeline`: a run's history.jsonl files folded into at most `max_points` time buckets, in constant memory.

A storm writes millions of lines; the report needs a few hundred points. Each bucket keeps counts and a
log-scale latency histogram (mergeable, so buckets can double in width when there are too many), plus each
source's last live-lvol count and free-cluster reading. Files are read incrementally (a byte offset per
file), so a soak's rolling report re-reads only what was appended since the last minute.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.history import read_appended

LATENCY_BINS = 96
_BIN_BASE = 1.25
_BIN_FLOOR_US = 1.0
"""Bin i holds latencies in [1.25**i, 1.25**(i+1)) microseconds: about 12% resolution up to ~30 minutes."""

CREATING_METHODS = frozenset({"bdev_lvol_create", "bdev_lvol_snapshot", "bdev_lvol_clone", "bdev_lvol_clone_bdev"})
DELETING_METHODS = frozenset({"bdev_lvol_delete"})
RESETTING_METHODS = frozenset({"bdev_lvol_create_lvstore", "bdev_lvol_delete_lvstore"})

# Lines are written by History with a fixed layout; this reads the few fields the timeline needs without
# decoding the whole line (ten times faster than json.loads). Anything else falls back to json.loads.
_FAST = re.compile(rb'"method":"([A-Za-z0-9_]+)",.*,"t_start":([0-9.eE+-]+),"t_end":([0-9.eE+-]+),"(result|error)"')
_ERRNO = re.compile(rb'"errno":(?:"([A-Z0-9]+)"|null)')
MAX_ERRNOS = 32
"""Distinct errno names kept per bucket and per method (a bound on memory; the rest count as OTHER)."""


def _bin(latency_s: float) -> int:
    us = latency_s * 1e6
    if us <= _BIN_FLOOR_US:
        return 0
    return min(LATENCY_BINS - 1, int(math.log(us / _BIN_FLOOR_US, _BIN_BASE)))


def _bin_ms(index: int) -> float:
    """The geometric middle of a bin, in milliseconds."""
    return _BIN_FLOOR_US * _BIN_BASE ** (index + 0.5) / 1000.0


def _percentile_ms(hist: list[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return _bin_ms(i)
    return _bin_ms(LATENCY_BINS - 1)


def _count_errno(counter: Counter[str], name: str) -> None:
    counter[name if name in counter or len(counter) < MAX_ERRNOS else "OTHER"] += 1


@dataclass
class _Bucket:
    ops: int = 0
    errors: int = 0
    hist: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    live: dict[str, int] = field(default_factory=dict)
    free: dict[str, int] = field(default_factory=dict)
    errnos: Counter[str] = field(default_factory=Counter)

    def merge(self, later: _Bucket) -> None:
        self.ops += later.ops
        self.errors += later.errors
        self.hist = [a + b for a, b in zip(self.hist, later.hist, strict=True)]
        self.live.update(later.live)
        self.free.update(later.free)
        for name, n in later.errnos.items():
            self.errnos[name] += n

    def percentile_ms(self, q: float) -> float | None:
        return _percentile_ms(self.hist, q)


@dataclass
class MethodStats:
    """One method over the whole timeline: calls, errors by errno, a latency histogram, its time span."""

    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    hist: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    first_t: float | None = None
    last_t: float | None = None

    def to_dict(self) -> dict[str, Any]:
        span = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else 0.0
        return {"calls": self.calls, "errors": sum(self.errors.values()), "errnos": dict(self.errors),
                "calls_per_s": round(self.calls / span, 2) if span > 0 else None,
                "p50_ms": _round(_percentile_ms(self.hist, 0.5)), "p99_ms": _round(_percentile_ms(self.hist, 0.99))}


@dataclass
class _Source:
    offset: int = 0
    live: int = 0
    first_key: int | None = None
    last_key: int | None = None
    first_t: float | None = None
    last_t: float | None = None


class Timeline:
    """Buckets keyed by floor(t / width) on absolute time, so files from several nodes merge without a common
    start; when there are more than `max_points` buckets the width doubles and neighbours merge."""

    def __init__(self, max_points: int = 600, width_s: float = 0.05) -> None:
        self.max_points = max_points
        self.width = width_s
        self.buckets: dict[int, _Bucket] = {}
        self.sources: dict[str, _Source] = {}
        self.records = 0
        self.bad_lines = 0
        self.methods: Counter[str] = Counter()
        self.per_method: dict[str, MethodStats] = {}

    # -- feeding ----------------------------------------------------------------------------------------

    def feed_file(self, path: str | Path, source: str | None = None) -> int:
        """Read what was appended to `path` since the last call (whole lines only); returns lines read."""
        path = Path(path)
        key = source or str(path)
        src = self.sources.setdefault(key, _Source())
        try:
            size = path.stat().st_size
        except OSError:
            return 0
        if size < src.offset:  # truncated or replaced: start over
            src.offset = 0
        if size == src.offset:
            return 0
        n = 0
        try:
            for lines, offset in read_appended(path, src.offset):
                src.offset = offset
                for line in lines:
                    self._line(line, key)
                n += len(lines)
        except OSError:
            pass
        return n

    def _line(self, line: bytes, source: str) -> None:
        m = _FAST.search(line)
        if m is not None and m.group(1) != b"bdev_lvol_get_lvstores":
            ok = m.group(4) == b"result"
            errno_name = None
            if not ok:
                e = _ERRNO.search(line, m.end())
                errno_name = e.group(1).decode() if e is not None and e.group(1) else "no errno"
            try:
                self.add(m.group(1).decode(), float(m.group(2)), float(m.group(3)), ok, None, source, errno_name)
            except ValueError:
                self.bad_lines += 1
            return
        try:
            rec = json.loads(line)
            err = rec.get("error")
            errno_name = (err.get("errno") or "no errno") if isinstance(err, dict) else None
            self.add(rec["method"], float(rec["t_start"]), float(rec["t_end"]), "error" not in rec,
                     rec.get("result"), source, errno_name)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.bad_lines += 1

    def add(self, method: str, t_start: float, t_end: float, ok: bool, result: Any = None,
            source: str = "", errno_name: str | None = None) -> None:
        """One RPC: counted in the bucket of its reply; its effect on live lvols and free clusters recorded."""
        src = self.sources.setdefault(source, _Source())
        key = self._key(t_end)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket()
        self.records += 1
        self.methods[method] += 1
        stats = self.per_method.get(method)
        if stats is None:
            stats = self.per_method[method] = MethodStats()
        stats.calls += 1
        stats.first_t = t_start if stats.first_t is None else min(stats.first_t, t_start)
        stats.last_t = t_end if stats.last_t is None else max(stats.last_t, t_end)
        bucket.ops += 1
        latency_bin = _bin(max(0.0, t_end - t_start))
        bucket.hist[latency_bin] += 1
        stats.hist[latency_bin] += 1
        if not ok:
            bucket.errors += 1
            _count_errno(bucket.errnos, errno_name or "no errno")
            _count_errno(stats.errors, errno_name or "no errno")
        if ok:
            if method in CREATING_METHODS:
                src.live += 1
            elif method in DELETING_METHODS:
                src.live = max(0, src.live - 1)
            elif method in RESETTING_METHODS:
                src.live = 0
            elif method == "bdev_lvol_get_lvstores" and isinstance(result, list) and result:
                free = sum(int(x.get("free_clusters", 0)) for x in result if isinstance(x, dict))
                bucket.free[source] = free
        bucket.live[source] = src.live
        src.first_key = key if src.first_key is None else min(src.first_key, key)
        src.last_key = key if src.last_key is None else max(src.last_key, key)
        src.first_t = t_start if src.first_t is None else min(src.first_t, t_start)
        src.last_t = t_end if src.last_t is None else max(src.last_t, t_end)
        if len(self.buckets) > self.max_points:
            self._coarsen()

    def _key(self, t: float) -> int:
        return math.floor(t / self.width)

    def _coarsen(self) -> None:
        while len(self.buckets) > self.max_points:
            self.width *= 2
            merged: dict[int, _Bucket] = {}
            for key in sorted(self.buckets):
                new = key // 2
                if new in merged:
                    merged[new].merge(self.buckets[key])
                else:
                    merged[new] = self.buckets[key]
            self.buckets = merged
            for src in self.sources.values():
                if src.first_key is not None:
                    src.first_key //= 2
                if src.last_key is not None:
                    src.last_key //= 2

    # -- reading ----------------------------------------------------------------------------------------

    @property
    def span(self) -> tuple[float, float] | None:
        starts = [s.first_t for s in self.sources.values() if s.first_t is not None]
        ends = [s.last_t for s in self.sources.values() if s.last_t is not None]
        return (min(starts), max(ends)) if starts and ends else None

    def points(self) -> list[dict[str, Any]]:
        """One point per bucket from the first to the last (empty buckets included, so gaps show as zero ops).

        Live lvols and free clusters are each source's last reading carried forward within that source's own
        time span, summed over sources (nodes, incarnations)."""
        if not self.buckets:
            return []
        keys = sorted(self.buckets)
        live_now: dict[str, int] = {}
        free_now: dict[str, int] = {}
        out: list[dict[str, Any]] = []
        for key in range(keys[0], keys[-1] + 1):
            bucket = self.buckets.get(key)
            if bucket is not None:
                live_now.update(bucket.live)
                free_now.update(bucket.free)
            active = {name for name, s in self.sources.items()
                      if s.first_key is not None and s.last_key is not None and s.first_key <= key <= s.last_key}
            live = sum(v for k, v in live_now.items() if k in active)
            free_vals = [v for k, v in free_now.items() if k in active]
            out.append({
                "t": key * self.width,
                "ops": bucket.ops if bucket else 0,
                "ops_per_s": round((bucket.ops if bucket else 0) / self.width, 2),
                "errors": bucket.errors if bucket else 0,
                "errnos": dict(bucket.errnos) if bucket else {},
                "p50_ms": _round(bucket.percentile_ms(0.50)) if bucket else None,
                "p99_ms": _round(bucket.percentile_ms(0.99)) if bucket else None,
                "live_lvols": live if active else None,
                "free_clusters": sum(free_vals) if free_vals else None,
            })
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def timeline_of(paths: Iterable[tuple[str, Path]], max_points: int = 600) -> Timeline:
    """A timeline over several (source name, history.jsonl) pairs."""
    tl = Timeline(max_points=max_points)
    for name, path in paths:
        tl.feed_file(path, source=name)
    return tl
