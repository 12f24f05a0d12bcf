"""Busy lvols: after a job (a checksum, a shallow copy) answered, the target may keep its lvol open a little
longer, so ops on it within BUSY_LINGER_S are judged as races (`BusyWindows`); and a delete that answered
EBUSY must have changed nothing, which only the target can say (`busy_delete_removed`: the engine reads the
lvol back right after)."""

from __future__ import annotations

from harness.storm.findings import Finding
from harness.storm.operations import Op

BUSY_LINGER_S = 0.5
BUSY_SWEEP_MIN = 1024
"""The windows are swept of passed ones when they number more than this (or twice what the last sweep kept)."""


class BusyWindows:
    """Keys (lvols) a job may still hold open, with when the window closes."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._sweep_at = BUSY_SWEEP_MIN

    def open(self, keys: tuple[str, ...], now: float) -> None:
        """A job's op answered at `now`: its lvols may stay busy for BUSY_LINGER_S."""
        until = now + BUSY_LINGER_S
        for k in keys:
            self._until[k] = until
        if len(self._until) > self._sweep_at:
            self._sweep(now)

    def any_busy(self, keys: tuple[str, ...], now: float) -> bool:
        """Is any of `keys` inside a window? (Passed windows of these keys are forgotten on the way.)"""
        until = self._until
        found = False
        for k in keys:
            t = until.get(k)
            if t is not None:
                if t > now:
                    found = True
                else:
                    del until[k]
        return found

    def busy(self, key: str, now: float) -> bool:
        """Is `key` inside a window? (A passed window is forgotten on the way.)"""
        until = self._until.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self._until[key]
        return False

    def _sweep(self, now: float) -> None:
        """Forget windows that have passed. Most keys are lvols deleted since and never named again (an entry
        left only when its key was named again), so the dict grew by every checksum and shallow copy of the
        run: ~1.2M entries, ~150 MB an hour at full rate. Sweeping when it doubles keeps it to the last
        BUSY_LINGER_S of them at amortized O(1) per op."""
        self._until = {k: t for k, t in self._until.items() if t > now}
        self._sweep_at = max(BUSY_SWEEP_MIN, 2 * len(self._until))

    def clear(self) -> None:
        self._until.clear()

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, key: object) -> bool:
        return key in self._until


def busy_delete_removed(op: Op, racing: list[Op]) -> Finding | None:
    """The lvol of a delete that answered EBUSY is gone: a finding (SPDK's forced removal) unless another
    delete of it raced this one (`racing`: in flight at once, or a successful member of its group)."""
    if racing:
        return None
    name = op.params.get(op.rule.lvol_params[0])
    return Finding("busy-delete-removed",
                   f"delete answered EBUSY but the lvol is gone: {op.describe()}, then bdev_get_bdevs {name} -> "
                   "ENODEV (a refused delete must change nothing; SPDK's forced removal)", op.record())
