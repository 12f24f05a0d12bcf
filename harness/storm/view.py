"""The storm's own index of live lvols, kept in the target's UUIDs: what exists, what kind, who is whose parent.

It is what the scheduler samples targets from and what the checker derives an operation's keys from, so every
update and every sample is O(1): no listing, no scan, whatever the number of lvols. It follows replies as they
arrive (optimistic); quiesce points rebuild it from the target's own listing.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class IndexedSet:
    """A set with O(1) add, remove and uniform random choice."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._pos:
            self._pos[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        i = self._pos.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i

    def choice(self, u: float) -> str | None:
        """The element at fraction `u` in [0, 1): the caller draws `u` from its own seeded stream."""
        if not self._items:
            return None
        return self._items[min(int(u * len(self._items)), len(self._items) - 1)]

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def clear(self) -> None:
        self._items.clear()
        self._pos.clear()


@dataclass(slots=True)
class Node:
    """One live lvol as the storm believes it is."""

    uuid: str
    name: str
    snapshot: bool = False
    parent: str | None = None
    children: set[str] = field(default_factory=set)
    thin: bool = True
    size_mib: int = 0
    read_only: bool = False


KINDS = ("any", "snapshot", "volume", "clone", "leaf")


class TreeView:
    """Live lvols by UUID with per-kind samplers and a short list of recently used ones (the hot set)."""

    def __init__(self, hot_size: int = 6) -> None:
        self.nodes: dict[str, Node] = {}
        self.by_kind: dict[str, IndexedSet] = {k: IndexedSet() for k in KINDS}
        self.recent: deque[str] = deque(maxlen=hot_size)
        self.by_name: dict[str, str] = {}
        self.hidden: dict[str, int] = {}
        """Lvols no sampler may return, with how many holds each has: a running episode's own tree (its race
        must not be spoiled by a random op) and lvols with a delete in flight (an op aimed at them would
        mostly answer No such device). Kept across `rebuild` (holds belong to whoever set them)."""

    def __len__(self) -> int:
        return len(self.nodes)

    def _reindex(self, node: Node) -> None:
        u = node.uuid
        sets = self.by_kind
        if u in self.hidden:
            for s in sets.values():
                s.discard(u)
            return
        sets["any"].add(u)
        if node.snapshot:
            sets["snapshot"].add(u)
            sets["volume"].discard(u)
        else:
            sets["volume"].add(u)
            sets["snapshot"].discard(u)
        if node.parent is not None and not node.snapshot:
            sets["clone"].add(u)
        else:
            sets["clone"].discard(u)
        if node.children:
            sets["leaf"].discard(u)
        else:
            sets["leaf"].add(u)

    def hide(self, uuid: str) -> None:
        """One more hold on uuid: samplers skip it until every hold is released (O(1))."""
        self.hidden[uuid] = self.hidden.get(uuid, 0) + 1
        node = self.nodes.get(uuid)
        if node is not None:
            self._reindex(node)

    def unhide(self, uuid: str) -> None:
        n = self.hidden.get(uuid, 0) - 1
        if n > 0:
            self.hidden[uuid] = n
            return
        self.hidden.pop(uuid, None)
        node = self.nodes.get(uuid)
        if node is not None:
            self._reindex(node)

    def touch(self, uuid: str) -> None:
        self.recent.append(uuid)

    def add(self, uuid: str, name: str, *, snapshot: bool = False, parent: str | None = None,
            thin: bool = True, size_mib: int = 0) -> Node:
        node = Node(uuid, name, snapshot=snapshot, parent=parent, thin=thin, size_mib=size_mib)
        self.nodes[uuid] = node
        self.by_name[name] = uuid
        if parent is not None and parent in self.nodes:
            p = self.nodes[parent]
            p.children.add(uuid)
            self._reindex(p)
        self._reindex(node)
        self.touch(uuid)
        return node

    def remove(self, uuid: str) -> None:
        node = self.nodes.pop(uuid, None)
        if node is None:
            return
        self.by_name.pop(node.name, None)
        for s in self.by_kind.values():
            s.discard(uuid)
        parent = self.nodes.get(node.parent) if node.parent else None
        if parent is not None:
            parent.children.discard(uuid)
        # A deleted snapshot's single child moves up to its parent (SPDK's behaviour).
        for child_id in node.children:
            child = self.nodes.get(child_id)
            if child is None:
                continue
            child.parent = node.parent
            if parent is not None:
                parent.children.add(child_id)
            self._reindex(child)
        if parent is not None:
            self._reindex(parent)

    def set_parent(self, uuid: str, parent: str | None) -> None:
        node = self.nodes.get(uuid)
        if node is None:
            return
        old = self.nodes.get(node.parent) if node.parent else None
        if old is not None:
            old.children.discard(uuid)
            self._reindex(old)
        node.parent = parent if parent in self.nodes else None
        if node.parent is not None:
            new = self.nodes[node.parent]
            new.children.add(uuid)
            self._reindex(new)
        self._reindex(node)

    def insert_snapshot(self, lvol: str, snap_uuid: str, snap_name: str) -> None:
        """A snapshot of `lvol` takes its place under lvol's parent; lvol becomes its (thin) clone."""
        node = self.nodes.get(lvol)
        if node is None:
            self.add(snap_uuid, snap_name, snapshot=True)
            return
        parent = node.parent
        self.add(snap_uuid, snap_name, snapshot=True, parent=parent, thin=node.thin, size_mib=node.size_mib)
        self.set_parent(lvol, snap_uuid)
        node.thin = True

    def rename(self, uuid: str, new_name: str) -> None:
        node = self.nodes.get(uuid)
        if node is None:
            return
        self.by_name.pop(node.name, None)
        node.name = new_name
        self.by_name[new_name] = uuid

    def parent_of(self, uuid: str) -> str | None:
        node = self.nodes.get(uuid)
        return node.parent if node else None

    def root_of(self, uuid: str) -> str:
        """The top of uuid's snapshot/clone tree (bounded walk: a broken view cannot loop)."""
        nodes = self.nodes
        cur = uuid
        for _ in range(256):
            node = nodes.get(cur)
            if node is None or node.parent is None:
                return cur
            cur = node.parent
        return cur

    def children_of(self, uuid: str) -> set[str]:
        node = self.nodes.get(uuid)
        return node.children if node else set()

    def pick(self, kind: str, u: float, hot: float, u_hot: float) -> str | None:
        """A target of `kind`: with probability `hot` (decided by u_hot) one of the recently used ones."""
        pool = self.by_kind[kind]
        if u_hot < hot and self.recent:
            candidates = [x for x in self.recent if x in pool]
            if candidates:
                return candidates[min(int(u * len(candidates)), len(candidates) - 1)]
        return pool.choice(u)

    def rebuild(self, lvols: list[dict[str, Any]], bdevs: dict[str, dict[str, Any]]) -> None:
        """From `bdev_lvol_get_lvols` and `bdev_get_bdevs` (by UUID): the target's truth replaces ours (one pass
        over the listing, one over the links)."""
        nodes = self.nodes
        nodes.clear()
        self.by_name.clear()
        for s in self.by_kind.values():
            s.clear()
        by_name = self.by_name
        links: list[tuple[Node, str]] = []
        for e in lvols:
            uuid = e["uuid"]
            bdev = bdevs.get(uuid)
            info = bdev.get("driver_specific", {}).get("lvol", {}) if bdev else {}
            size = bdev.get("num_blocks", 0) * bdev.get("block_size", 0) // (1024 * 1024) if bdev else 0
            node = nodes[uuid] = Node(uuid, e["name"], snapshot=bool(info.get("snapshot")),
                                      thin=bool(e.get("is_thin_provisioned")), size_mib=size)
            by_name[e["name"]] = uuid
            base = info.get("base_snapshot")
            if base:
                links.append((node, base))
        for node, base in links:
            pu = by_name.get(base)
            if pu is not None:
                node.parent = pu
                nodes[pu].children.add(node.uuid)
        for node in nodes.values():
            self._reindex(node)
        self.recent = deque((u for u in self.recent if u in nodes), maxlen=self.recent.maxlen)


def draw(rng: random.Random) -> float:
    return rng.random()
