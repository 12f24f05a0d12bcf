"""Which operations in flight overlap: an op's *keys* and the *groups* ops that shared a key form.

An operation's keys are what its row's params name (by their roles): each lvol and the root of its tree
(tree-wide effects such as re-parenting and cycle checks make any two ops in one tree order-dependent), the
name it gives ("n:"), the lvstore names it uses ("s:"). An op that shares a key with an op in flight joins
(or starts) that op's group; groups that an op bridges merge. A group is judged once every member answered.
Naming the lvstore orders an op only against a rename of it (an lvstore-wide op), not against other ops that
name it. Every step is O(keys) per op: dict lookups, union by size.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.storm.operations import Group, Op
from harness.storm.view import TreeView


class Grouping:
    """The in-flight ops by key, and the open groups by key."""

    def __init__(self, view: TreeView) -> None:
        self.view = view
        # Ops in flight by key (dicts: insertion-ordered sets with O(1) removal); lvstore-wide ops also by
        # their "s:" keys, the only in-flight ops an op naming the lvstore is ordered against.
        self._inflight_by_key: dict[str, dict[Op, None]] = {}
        self._renames_by_key: dict[str, dict[Op, None]] = {}
        self._key_group: dict[str, Group] = {}

    def keys_of(self, op: Op) -> tuple[str, ...]:
        """The lvols op depends on, the name it gives, the lvstore names it uses (see the module docstring)."""
        p = op.params
        rule = op.rule
        root_of = self.view.root_of
        keys: list[str] = []
        new = rule.new_name_param
        if new is not None:
            keys.append("n:" + str(p.get(new)))
        for param in rule.lvstore_keys:
            if param in p:
                keys.append("s:" + str(p[param]))
        for param in rule.lvol_params:
            value = p.get(param)
            if value is None:
                continue
            ref = str(value)
            slash = ref.find("/")
            if slash > 0:
                keys.append("s:" + ref[:slash])
                # One key per lvol however it is named: "lvs/name" and its UUID must meet.
                ref = self.view.by_name.get(ref[slash + 1:], ref)
            keys.append(ref)
            root = root_of(ref)
            if root != ref:
                keys.append(root)
        return tuple(keys)

    def join(self, op: Op) -> None:
        """Index op (its keys set) as in flight; if it shares a key with an op in flight or an open group, it
        joins that group (made for the other op if it had none) and every group it bridges merges in."""
        keys = op.keys
        renames = op.rule.effect == "lvstore"
        groups: set[Group] = set()
        fresh: list[Op] = []
        key_group = self._key_group
        for k in keys:
            g = key_group.get(k)
            if g is not None:
                groups.add(g.root())
            if renames:
                # An lvstore-wide op is ordered against every op naming the lvstore, and those were never
                # grouped with each other by that name: each of them.
                others: Iterable[Op] = self._inflight_by_key.get(k, ())
            else:
                ops = (self._renames_by_key if k.startswith("s:") else self._inflight_by_key).get(k)
                if not ops:
                    continue
                # Every op in flight on k shares one group once two are (each joined the group of those in
                # flight before it), so the first one stands for all: O(1) per key, not O(ops in flight on
                # it), which at depth 64 on a hot lvol was hundreds of ops per send.
                others = (next(iter(ops)),)
            for other in others:
                og = other.group
                if og is None:
                    og = other.group = Group()
                    og.members.append(other)
                    og.inflight = 1
                    other.contended = True
                    fresh.append(other)
                groups.add(og.root())
        if groups:
            # Union by size: the largest group absorbs the others, and only the absorbed members' keys are
            # pointed at it (re-pointing every member on every join was quadratic in a long-lived group).
            g = max(groups, key=lambda x: len(x.members))
            relink: list[Op] = fresh
            with_rename = renames
            for other_group in groups:
                with_rename = with_rename or other_group.with_rename
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
                        self._key_group[k] = g
        for index in (self._inflight_by_key, self._renames_by_key) if renames else (self._inflight_by_key,):
            for k in keys:
                ops = index.get(k)
                if ops is None:
                    index[k] = {op: None}
                else:
                    ops[op] = None

    def leave(self, op: Op) -> None:
        """op is no longer in flight (answered or abandoned)."""
        renames = op.rule.effect == "lvstore"
        for index in (self._inflight_by_key, self._renames_by_key) if renames else (self._inflight_by_key,):
            for k in op.keys:
                ops = index.get(k)
                if ops is not None:
                    ops.pop(op, None)
                    if not ops:
                        del index[k]

    def inflight_on(self, key: str) -> Iterable[Op]:
        return self._inflight_by_key.get(key, ())

    def hold_key(self, key: str, group: Group) -> None:
        """Later ops naming `key` (an lvol a member just made) join `group` while it is open."""
        self._key_group[key] = group

    def close(self, group: Group) -> bool:
        """Mark the group judged and stop drawing ops into it; False if it was closed already."""
        if group.closed:
            return False
        group.closed = True
        for m in group.members:
            for k in m.keys:
                if self._key_group.get(k) is group:
                    del self._key_group[k]
        return True

    def open_groups(self) -> list[Group]:
        """Every open group once (by its root)."""
        roots: dict[int, Group] = {}
        for g in self._key_group.values():
            r = g.root()
            roots.setdefault(id(r), r)
        return list(roots.values())

    def forget_groups(self) -> None:
        """No open group draws ops in any more (the model was re-read from the target)."""
        self._key_group.clear()
