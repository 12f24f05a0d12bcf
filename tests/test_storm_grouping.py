"""Grouping's O(1)-per-key join forms exactly the groups the old walk over every op in flight formed.

The old join looked at every op in flight on each key of a new op (hundreds at depth 64 on a hot lvol); the
new one looks at the first and relies on all of them sharing one group. The reference below is the old walk,
run on a twin Grouping through the same random sends, replies, closes and quiesce points.
"""

from __future__ import annotations

import random

import pytest

from harness.storm.grouping import Grouping
from harness.storm.operations import Group, Op
from harness.storm.view import TreeView

KEYS = ("a", "b", "c", "d", "e", "n:x", "s:lvs0", "s:lvs1")


def old_join(gr: Grouping, op: Op) -> None:
    """Grouping.join as it was before it looked at one op per key (commit 65674bd)."""
    keys = op.keys
    renames = op.rule.effect == "lvstore"
    groups: set[Group] = set()
    fresh: list[Op] = []
    for k in keys:
        g = gr._key_group.get(k)
        if g is not None:
            groups.add(g.root())
        inflight = gr._renames_by_key if not renames and k.startswith("s:") else gr._inflight_by_key
        for other in inflight.get(k, ()):
            og = other.group
            if og is None:
                og = other.group = Group()
                og.members.append(other)
                og.inflight = 1
                other.contended = True
                fresh.append(other)
            groups.add(og.root())
    if groups:
        g = max(groups, key=lambda x: len(x.members))
        relink: list[Op] = fresh
        with_rename = renames or any(x.with_rename for x in groups)
        for other_group in groups:
            if other_group is not g:
                other_group.merged = g
                g.members.extend(other_group.members)
                g.inflight += other_group.inflight
                relink.extend(other_group.members)
        g.members.append(op)
        g.inflight += 1
        op.group = g
        op.contended = True
        relink.append(op)
        if with_rename and not g.with_rename:
            g.with_rename = True
            relink = g.members
        for m in relink:
            for k in m.keys:
                if g.with_rename or not k.startswith("s:"):
                    gr._key_group[k] = g
    for index in (gr._inflight_by_key, gr._renames_by_key) if renames else (gr._inflight_by_key,):
        for k in keys:
            index.setdefault(k, {})[op] = None


def _op(rng: random.Random, n: int) -> Op:
    if rng.random() < 0.03:
        op = Op("bdev_lvol_rename_lvstore", {"old_name": "lvs0", "new_name": "lvs1"}, 0)
        op.keys = ("s:lvs0", "s:lvs1")
    else:
        op = Op("bdev_lvol_resize", {"name": f"l{n}", "size_in_mib": 4}, 0)
        op.keys = tuple(rng.sample(KEYS[:6], rng.randint(1, 3))) + (("s:lvs0",) if rng.random() < 0.5 else ())
    return op


def _partition(ops: list[Op]) -> set[frozenset[int]]:
    """Which ops (by their index in the run) share a root group; ops without a group are alone."""
    classes: dict[int, set[int]] = {}
    for i, o in enumerate(ops):
        classes.setdefault(id(o.group.root()) if o.group is not None else -1 - i, set()).add(i)
    return {frozenset(c) for c in classes.values()}


def _key_partition(gr: Grouping, ops: list[Op]) -> set[tuple[str, frozenset[int]]]:
    """Which open group each key draws ops into, as the members' indexes."""
    index = {id(o): i for i, o in enumerate(ops)}
    return {(k, frozenset(index[id(m)] for m in g.root().members)) for k, g in gr._key_group.items()}


class Twin:
    """One side of the comparison: its own Grouping and its own copy of every op."""

    def __init__(self, join: str) -> None:
        self.gr = Grouping(TreeView())
        self.join = join
        self.ops: list[Op] = []
        self.inflight: list[Op] = []

    def send(self, proto: Op) -> None:
        op = Op(proto.method, proto.params, 0)
        op.keys = proto.keys
        if self.join == "new":
            self.gr.join(op)
        else:
            old_join(self.gr, op)
        self.ops.append(op)
        self.inflight.append(op)

    def reply(self, i: int) -> None:
        op = self.inflight.pop(i)
        self.gr.leave(op)
        if op.group is not None:
            g = op.group.root()
            g.inflight -= 1
            if g.inflight <= 0:
                self.gr.close(g)

    def settle(self) -> None:
        for g in self.gr.open_groups():
            self.gr.close(g)
        self.gr.forget_groups()


@pytest.mark.parametrize("seed", range(40))
def test_join_forms_the_groups_the_walk_over_every_op_in_flight_formed(seed: int) -> None:
    rng = random.Random(seed)
    new, old = Twin("new"), Twin("old")
    depth = rng.choice((4, 16, 64))
    for n in range(600):
        u = rng.random()
        if u < 0.01:
            new.settle()
            old.settle()
        elif new.inflight and (len(new.inflight) >= depth or u < 0.45):
            i = rng.randrange(len(new.inflight))
            new.reply(i)
            old.reply(i)
        else:
            proto = _op(rng, n)
            new.send(proto)
            old.send(proto)
        assert _partition(new.ops) == _partition(old.ops), f"step {n}"
        assert _key_partition(new.gr, new.ops) == _key_partition(old.gr, old.ops), f"step {n}"
    assert any(len(c) > 3 for c in _partition(new.ops)), "the run formed no real groups: it tested nothing"


def test_merged_groups_point_at_their_root_after_one_lookup() -> None:
    a, b, c = Group(), Group(), Group()
    a.merged, b.merged = b, c
    assert a.root() is c
    assert a.merged is c and b.merged is c
