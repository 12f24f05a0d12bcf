"""The order search for a group's successful writes: is there an order in which the model accepts them all?

Tried in turn: send order, reply order (each greedy: a refused write is retried after every success), then
every order of up to GROUP_PERMUTE_MAX writes, each from the model's checkpoint of the trees they touch. The
search ends with the model in a legal order's state, or (none found) in send order's greedy state.
"""

from __future__ import annotations

import itertools

from harness.model.lvstore import Checkpoint
from harness.storm.mirror import ModelMirror
from harness.storm.operations import Op

GROUP_PERMUTE_MAX = 5


def _try_order(mirror: ModelMirror, ops: list[Op]) -> list[Op]:
    """Apply successes greedily in this order, retrying refused ones after each success; the leftovers."""
    pending = list(ops)
    progress = True
    while pending and progress:
        progress = False
        for o in list(pending):
            expected, _ = mirror.apply(o)
            if expected == "ok":
                pending.remove(o)
                progress = True
    return pending


def search_order(mirror: ModelMirror, writes: list[Op]) -> tuple[Op, str] | None:
    """Apply two or more overlapping writes (in send order) in a legal order. None when one was found, or
    when there are too many writes to try every order; else the first write no order allows and what the
    model says of it."""
    cp = mirror.checkpoint(writes)
    try:
        return _search(mirror, writes, cp)
    finally:
        mirror.release(cp)


def _search(mirror: ModelMirror, writes: list[Op], cp: Checkpoint) -> tuple[Op, str] | None:
    if not _try_order(mirror, writes):
        return None
    mirror.restore(cp)
    if not _try_order(mirror, sorted(writes, key=lambda o: o.t_end)):
        return None
    exhaustive = len(writes) <= GROUP_PERMUTE_MAX
    if exhaustive:
        for order in itertools.permutations(writes):
            mirror.restore(cp)
            if all(mirror.apply(o)[0] == "ok" for o in order):
                return None
    mirror.restore(cp)
    left = _try_order(mirror, writes)
    if not exhaustive:
        return None
    expected, _ = mirror.apply(left[0])
    return left[0], expected
