"""Delta debugging (Zeller's ddmin) with a dependency closure and a budget.

Every candidate is closed under `closure` before it is tried (a kept snapshot keeps its lvol's create), so the
search never wastes a try on a candidate that cannot mean anything. Each try restarts a target, so tries are
the scarce resource: results are cached by candidate, and the search stops cleanly when the `Budget` (a try
count and a deadline) runs out, returning the smallest candidate that reproduced so far.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

Progress = Callable[[str], None]


class BudgetExhausted(Exception):
    """The try count or the time budget is spent; the search keeps what it has."""


@dataclass
class Budget:
    """Tries and wall time a whole minimization may spend; `spend()` before each try."""

    max_tries: int
    seconds: float
    started: float = field(default_factory=time.monotonic)
    tries: int = 0
    cancel: threading.Event | None = None
    """Set from outside (Ctrl-C in a run): the search stops as if the budget were spent."""

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    @property
    def left_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    @property
    def exhausted(self) -> bool:
        return (self.tries >= self.max_tries or time.monotonic() >= self.deadline
                or (self.cancel is not None and self.cancel.is_set()))

    def why_exhausted(self) -> str:
        if self.cancel is not None and self.cancel.is_set():
            return f"interrupted after {self.tries} tries"
        if self.tries >= self.max_tries:
            return f"try budget spent ({self.tries} of {self.max_tries} tries)"
        return f"time budget spent ({self.seconds:g} s)"

    def spend(self, n: int = 1) -> None:
        if self.exhausted:
            raise BudgetExhausted(self.why_exhausted())
        self.tries += n


class CachedTest(Generic[T]):
    """A candidate test that remembers answers (the same candidate is never run twice) and counts runs."""

    def __init__(self, test: Callable[[list[T]], bool]) -> None:
        self._test = test
        self.cache: dict[frozenset[T], bool] = {}
        self.runs = 0

    def __call__(self, candidate: list[T]) -> bool:
        key = frozenset(candidate)
        hit = self.cache.get(key)
        if hit is None:
            self.runs += 1
            hit = self.cache[key] = bool(self._test(candidate))
        return hit


def _chunks(items: list[T], n: int) -> list[list[T]]:
    """`items` cut into `n` nearly equal consecutive chunks (none empty)."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def ddmin(
    items: Sequence[T],
    test: Callable[[list[T]], bool],
    *,
    closure: Callable[[list[T]], list[T]] | None = None,
    progress: Progress | None = None,
) -> list[T]:
    """The smallest closed subset of `items` found for which `test` holds; `items` itself must pass.

    Tries chunks, then complements of chunks, doubling the granularity when neither helps, until every single
    item is necessary (1-minimal, up to the closure) or `test` raises BudgetExhausted. `test` should be a
    CachedTest when tries are expensive.
    """
    close = closure or (lambda xs: list(xs))
    current = close(list(items))
    n = 2
    say = progress or (lambda _msg: None)
    try:
        while len(current) >= 2:
            chunks = _chunks(current, n)
            reduced = False
            for chunk in chunks:
                candidate = close(chunk)
                if len(candidate) < len(current) and test(candidate):
                    current, n, reduced = candidate, 2, True
                    say(f"ddmin: {len(current)} operations (kept a chunk of {len(chunk)})")
                    break
            if not reduced and n > 2:
                for chunk in chunks:
                    drop = set(chunk)
                    candidate = close([x for x in current if x not in drop])
                    if len(candidate) < len(current) and test(candidate):
                        current, n, reduced = candidate, max(n - 1, 2), True
                        say(f"ddmin: {len(current)} operations (dropped a chunk of {len(chunk)})")
                        break
            if not reduced:
                if n >= len(current):
                    break
                n = min(len(current), 2 * n)
    except BudgetExhausted as exc:
        say(f"ddmin: stopped at {len(current)} operations: {exc}")
    return current
