"""Lvols the model is unsure of: after a reply it could not predict, or a race whose order it could not know,
their trees are judged leniently (contended, no finding for a refusal) until the next quiesce point re-reads
them from the target."""

from __future__ import annotations

from harness.storm.operations import Op
from harness.storm.view import Node, TreeView

TAINT_WALK_BUDGET = 256
"""Most keys one taint walks (a tree's lvols as the view sees them): bounded, so a huge tree stays O(1)."""


class Taint:
    """The tainted keys, or everything (an op whose effect is unknown: no reply came)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.everything = False

    def covers(self, key: str) -> bool:
        return self.everything or key in self.keys

    def any_of(self, keys: tuple[str, ...]) -> bool:
        """Is any of `keys` tainted (everything tainted aside)?"""
        tainted = self.keys
        for k in keys:
            if k in tainted:
                return True
        return False

    def __bool__(self) -> bool:
        return self.everything or bool(self.keys)

    def add(self, key: str) -> None:
        self.keys.add(key)

    def trees(self, view: TreeView, ops: list[Op]) -> None:
        """Taint the ops' keys, all of them, and the lvols of their trees as the view sees them now (a walk of at
        most TAINT_WALK_BUDGET lvols, so a huge tree stays O(1): at a quiesce point `sure_lvols` distrusts a whole
        tree with any tainted member, so a walk cut short never leaves a tree trusted that should not be)."""
        seen = self.keys
        nodes = view.nodes
        fresh = [k for o in ops for k in o.keys if k not in seen and not k.startswith("s:")]
        seen.update(fresh)
        todo: list[str] = []
        for k in fresh:
            _push_neighbours(nodes.get(k), todo)
        budget = TAINT_WALK_BUDGET
        while todo and budget > 0:
            k = todo.pop()
            budget -= 1
            if k not in seen:
                seen.add(k)
                _push_neighbours(nodes.get(k), todo)

    def clear(self) -> None:
        self.keys.clear()
        self.everything = False


def _push_neighbours(node: Node | None, todo: list[str]) -> None:
    if node is not None:
        todo.extend(node.children)
        if node.parent is not None:
            todo.append(node.parent)
