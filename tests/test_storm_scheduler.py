"""The scheduler's method draw: the binary search picks what the linear scan picked, so seeds keep their streams."""

from __future__ import annotations

import random

from harness.storm.scheduler import _cumulative, _index


def _scan(cum: list[float], u: float) -> int:
    for i, c in enumerate(cum):
        if u < c:
            return i
    return len(cum) - 1


def test_the_draw_lands_where_the_linear_scan_landed() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        weights = [rng.choice([0, 0, 0.3, 1, 2.5, 20]) for _ in range(rng.randint(1, 40))]
        cum = _cumulative(weights)
        draws = [rng.random() for _ in range(40)] + [c for c in cum if c < 1.0] + [0.0, 0.9999999999999999]
        for u in draws:
            assert _index(cum, u) == _scan(cum, u), (weights, u)
    assert _index(_cumulative([0, 1, 0]), 0.5) == 1  # zero weights are never drawn
