"""Which write each block of each lvol must show: SPDK's blobstore semantics over stamps, with what overlapping
operations leave open.

Per lvol bdev (its UUID) the model keeps the blob's shape as SPDK does: its size in clusters, its parent, the
clusters it owns, whether it is thin or read-only, and for the written blocks of the clusters it owns the write
they hold. A block of an owned cluster shows its write (or zeroes), of a cluster it does not own its parent's
block while within the parent's size, else zeroes; a write to a cluster the lvol does not own first copies
the parent's cluster in (copy-on-write). So: a snapshot is frozen; a clone shows its snapshot until written;
deleting a snapshot with one clone keeps the clone's data; inflate and decouple keep data; a shrink drops the
blocks past the cut, and a thin clone grown again shows its parent there (zeroes past the parent's end).

Values: a write id (0 = zeroes), a frozenset of write ids (any of them: a write and a snapshot raced), or LOOSE
(any stamp of this storm at this LBA, or zeroes: operations on the tree overlapped and the model cannot know
their order). A write makes its own block exact again. Memory is bounded by the blocks written (the storm writes
a few hot clusters per lvol).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

ZERO = 0
LOOSE = -1
MAX_CANDIDATES = 8
RESIZES_KEPT = 8

Value = int | frozenset[int]


def union(a: Value, b: Value) -> Value:
    """Either value: LOOSE absorbs, sets merge, more than MAX_CANDIDATES is LOOSE."""
    if a == LOOSE or b == LOOSE:
        return LOOSE
    if a == b:
        return a
    sa = a if isinstance(a, frozenset) else frozenset((a,))
    sb = b if isinstance(b, frozenset) else frozenset((b,))
    out = sa | sb
    return LOOSE if len(out) > MAX_CANDIDATES else out


def allows(value: Value, write_id: int) -> bool:
    """Does `value` allow a block holding `write_id` (0: zeroes)?"""
    if value == LOOSE:
        return True
    return write_id in value if isinstance(value, frozenset) else write_id == value


@dataclass(eq=False)
class Blob:
    uuid: str
    clusters: int
    thin: bool
    parent: str | None = None
    owned: int = 0
    maybe: int = 0
    """Clusters whose ownership a race left open (a write against a snapshot of this lvol)."""
    data: dict[int, dict[int, Value]] = field(default_factory=dict)
    """Per owned cluster, its written blocks (lba -> value); a block not there reads zeroes."""
    read_only: bool = False
    loose: bool = False
    """Every block not written since reads LOOSE, owned or not (its ownership is not known either)."""
    loose_bits: int = 0
    """Owned clusters whose unwritten blocks read LOOSE (copied in from a loose parent)."""
    bdev_blocks: int | None = None
    """The bdev's size when it is not the blob's (a refused shrink of an exported lvol left it larger)."""
    resizes: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RESIZES_KEPT))
    """(time, clusters before) of recent resizes: an I/O past the smaller size in its window may fail."""
    read_only_since: float | None = None
    alt_sizes: frozenset[int] = frozenset()
    """Other sizes (clusters) the blob may have: a snapshot that overlapped a resize of its origin took the size
    from before or after it (and a clone takes its snapshot's); I/O past the smallest may fail. Known again once
    the blob is resized or listed."""
    size_from: str | None = None
    """The blob this one took its size from when made (a snapshot's origin, a clone's snapshot); None once
    resized (or made with a size of its own)."""


class Images:
    """The expected contents of every lvol the storm knows (see the module docstring)."""

    def __init__(self, cluster_size: int, block_size: int) -> None:
        self.bpc = cluster_size // block_size
        self.block_size = block_size
        self.blobs: dict[str, Blob] = {}
        self.kids: dict[str, set[str]] = {}
        """parent -> its clones (an index kept with every parent change)."""

    # -- reading the model ---------------------------------------------------------------------------------------

    def blocks(self, uuid: str) -> int:
        """The lvol bdev's size in blocks as I/O sees it (0 if unknown)."""
        b = self.blobs.get(uuid)
        if b is None:
            return 0
        return b.bdev_blocks if b.bdev_blocks is not None else b.clusters * self.bpc

    def visible(self, uuid: str, lba: int) -> Value:
        """What a read of `lba` through the lvol must show."""
        c = lba // self.bpc
        owner, loose = self._owner(self.blobs.get(uuid), c, lba)
        if owner is None:
            return LOOSE if loose else ZERO
        v = owner.data.get(c, {}).get(lba)
        if v is not None:
            return v
        return LOOSE if owner.loose or owner.loose_bits >> c & 1 else ZERO

    def _owner(self, b: Blob | None, c: int, lba: int) -> tuple[Blob | None, bool]:
        """The blob whose cluster c the lvol shows (bounded walk), or None: zeroes, or LOOSE if a loose blob
        on the way does not know whether it owns it."""
        for _ in range(len(self.blobs) + 1):
            if b is None or lba >= b.clusters * self.bpc:
                return None, False
            if b.owned >> c & 1:
                return b, False
            if b.loose:
                return None, True
            b = self.blobs.get(b.parent) if b.parent is not None else None
        return None, True

    def _link(self, b: Blob, parent: str | None) -> None:
        if b.parent is not None:
            self.kids.get(b.parent, set()).discard(b.uuid)
        b.parent = parent
        if parent is not None:
            self.kids.setdefault(parent, set()).add(b.uuid)

    def _add(self, b: Blob) -> None:
        self.blobs[b.uuid] = b
        parent, b.parent = b.parent, None
        self._link(b, parent)

    def children(self, uuid: str) -> list[Blob]:
        return [self.blobs[k] for k in self.kids.get(uuid, ()) if k in self.blobs]

    def tree(self, uuid: str) -> list[Blob]:
        """Every blob of uuid's tree (bounded walks)."""
        root = self.blobs.get(uuid)
        for _ in range(len(self.blobs) + 1):
            if root is None or root.parent is None or root.parent not in self.blobs:
                break
            root = self.blobs[root.parent]
        if root is None:
            return []
        out: list[Blob] = []
        todo, seen = [root], set[str]()
        while todo and len(seen) <= len(self.blobs):
            b = todo.pop()
            if b.uuid in seen:
                continue
            seen.add(b.uuid)
            out.append(b)
            todo.extend(self.children(b.uuid))
        return out

    def min_blocks_since(self, uuid: str, t: float) -> int:
        """The smallest size (blocks) the blob had since time t, or may have (`alt_sizes`): an I/O past it may
        fail."""
        b = self.blobs.get(uuid)
        if b is None:
            return 0
        n = min(b.clusters, *b.alt_sizes) * self.bpc if b.alt_sizes else b.clusters * self.bpc
        for when, before in b.resizes:
            if when >= t:
                n = min(n, before * self.bpc)
        return n

    # -- writes ----------------------------------------------------------------------------------------------

    def write(self, uuid: str, lba: int, write_id: int) -> tuple[Value, bool]:
        """A write completed: the block holds it; a cluster not owned is copied in first. Returns what the block
        showed before and whether the write allocated its cluster."""
        b = self.blobs.get(uuid)
        if b is None or lba >= b.clusters * self.bpc:
            return LOOSE, False
        prev = self.visible(uuid, lba)
        c = lba // self.bpc
        allocated = False
        if not b.owned >> c & 1:
            self._copy_in(b, c)
            allocated = True
        b.data.setdefault(c, {})[lba] = write_id
        return prev, allocated

    def _copy_in(self, b: Blob, c: int) -> None:
        """Copy-on-write of cluster c from what the parent chain shows (loose parents copy LOOSE)."""
        if b.loose:
            b.loose_bits |= 1 << c
        else:
            self._take_cluster(b, c, self.blobs.get(b.parent) if b.parent is not None else None)
        b.owned |= 1 << c

    def _take_cluster(self, b: Blob, c: int, source: Blob | None) -> None:
        """Cluster c of b becomes a copy of what `source` shows there."""
        owner, loose = self._owner(source, c, c * self.bpc)
        if owner is not None:
            have = owner.data.get(c)
            if have:
                b.data[c] = dict(have)
            if owner.loose or owner.loose_bits >> c & 1:
                b.loose_bits |= 1 << c
        elif loose:
            b.loose_bits |= 1 << c

    # -- what the RPCs do ------------------------------------------------------------------------------------------

    def create(self, uuid: str, clusters: int, thin: bool) -> None:
        self._add(Blob(uuid, clusters, thin, owned=0 if thin else (1 << clusters) - 1))

    def adopt(self, uuid: str, clusters: int, *, parent: str | None, read_only: bool, thin: bool) -> None:
        """An lvol the model did not see made (there at the start, or a listing shows it): its data is LOOSE."""
        self._add(Blob(uuid, clusters, thin, parent=parent, read_only=read_only, loose=True))

    def snapshot(self, origin: str, snap: str) -> None:
        o = self.blobs.get(origin)
        if o is None:
            return
        self._add(Blob(snap, o.clusters, o.thin, parent=o.parent, owned=o.owned, maybe=o.maybe, data=o.data,
                       read_only=True, loose=o.loose, loose_bits=o.loose_bits, alt_sizes=o.alt_sizes,
                       size_from=origin))
        o.owned, o.maybe, o.data, o.loose, o.loose_bits, o.thin = 0, 0, {}, False, 0, True
        self._link(o, snap)

    def clone(self, snap: str, clone: str) -> None:
        s = self.blobs.get(snap)
        if s is not None:
            self._add(Blob(clone, s.clusters, True, parent=snap, alt_sizes=s.alt_sizes, size_from=snap))

    def delete(self, uuid: str) -> None:
        """Gone; a snapshot's only clone takes the clusters it lacks (its data unchanged)."""
        x = self.blobs.get(uuid)
        if x is None:
            return
        kids = self.children(uuid)
        if len(kids) == 1:
            c = kids[0]
            moved = x.owned & ~c.owned & ((1 << c.clusters) - 1)
            for cl in bits(moved):
                if cl in x.data:
                    c.data[cl] = x.data[cl]
            c.owned |= moved
            c.maybe |= x.maybe & moved
            c.loose_bits |= x.loose_bits & moved
            c.loose = c.loose or x.loose
            self._link(c, x.parent)
        else:
            for c in kids:  # a target that let a snapshot with clones go: what they show is anyone's guess
                self._link(c, None)
                c.loose, c.data, c.loose_bits = True, {}, 0
        self._link(x, None)
        del self.blobs[uuid]
        self.kids.pop(uuid, None)

    def forget(self, uuid: str) -> None:
        """Gone from the listing: no merge, nothing known."""
        x = self.blobs.get(uuid)
        if x is not None:
            self._link(x, None)
            del self.blobs[uuid]

    def clear(self) -> None:
        self.blobs.clear()
        self.kids.clear()

    def reparent(self, uuid: str, parent: str | None) -> None:
        """The listing says so (the model lost track): the blob follows it."""
        b = self.blobs.get(uuid)
        if b is not None:
            self._link(b, parent)

    def resize(self, uuid: str, clusters: int, t: float, *, bdev_kept: bool = False) -> None:
        """The blob's new size; `bdev_kept`: the bdev kept its (larger) size (a refused shrink)."""
        b = self.blobs.get(uuid)
        if b is None:
            return
        old_blocks = self.blocks(uuid)
        b.resizes.append((t, b.clusters))
        if clusters < b.clusters:
            keep = (1 << clusters) - 1
            b.owned &= keep
            b.maybe &= keep
            b.loose_bits &= keep
            for cl in [x for x in b.data if x >= clusters]:
                del b.data[cl]
        elif not b.thin:
            b.owned |= ((1 << clusters) - 1) & ~((1 << b.clusters) - 1)
        b.clusters = clusters
        b.alt_sizes, b.size_from = frozenset(), None
        b.bdev_blocks = old_blocks if bdev_kept and old_blocks > clusters * self.bpc else None

    def size_raced(self, snap: str, sizes: set[int]) -> None:
        """A snapshot overlapped a resize of its origin: it has the size from before or from after it (`sizes`),
        and so has every blob that took its size from it since (its clones, their snapshots, ...)."""
        todo, seen = ({snap} if snap in self.blobs else set()), set[str]()
        for _ in range(len(self.blobs) + 1):
            if not todo:
                break
            for u in todo:
                b = self.blobs[u]
                b.alt_sizes = b.alt_sizes | frozenset(c for c in sizes if c != b.clusters)
            seen |= todo
            todo = {u for u, b in self.blobs.items() if b.size_from in todo and u not in seen}

    def size_known(self, uuid: str) -> None:
        """A listing gave the blob's size: no other is possible."""
        b = self.blobs.get(uuid)
        if b is not None:
            b.alt_sizes = frozenset()

    def inflate(self, uuid: str) -> None:
        b = self.blobs.get(uuid)
        if b is None or not b.thin:
            return
        self._materialize(b, ((1 << b.clusters) - 1) & ~b.owned, self.blobs.get(b.parent) if b.parent else None)
        b.owned = (1 << b.clusters) - 1
        b.thin = False
        self._link(b, None)

    def decouple(self, uuid: str) -> None:
        b = self.blobs.get(uuid)
        if b is None or not b.thin or b.parent is None:
            return
        p = self.blobs.get(b.parent)
        if p is None:
            self._link(b, None)
            return
        need = p.owned & ((1 << b.clusters) - 1) & ~b.owned
        self._materialize(b, need, p)
        b.owned |= need
        self._link(b, p.parent)

    def detach(self, uuid: str) -> None:
        b = self.blobs.get(uuid)
        if b is None or not b.thin or b.parent is None:
            return
        p = self.blobs.get(b.parent)
        self.set_parent(uuid, p.parent if p is not None else None)

    def set_parent(self, uuid: str, parent: str | None) -> None:
        """A new parent (or none): the clusters it does not own now show the new parent's; where ownership is
        open (`maybe`), either."""
        b = self.blobs.get(uuid)
        if b is None:
            return
        if b.maybe:
            for c in bits(b.maybe):
                lo = c * self.bpc
                mine: dict[int, Value] = {}
                for lba in range(lo, lo + self.bpc):
                    old = self.visible(uuid, lba)
                    new = self.visible(parent, lba) if parent is not None else ZERO
                    if old != ZERO or new != ZERO:
                        mine[lba] = union(old, new)
                b.data[c] = mine
                b.loose_bits &= ~(1 << c)
            b.owned |= b.maybe
        self._link(b, parent)

    def set_read_only(self, uuid: str, t: float) -> None:
        b = self.blobs.get(uuid)
        if b is not None:
            b.read_only = True
            b.read_only_since = t

    def _materialize(self, b: Blob, clusters: int, source: Blob | None) -> None:
        for c in bits(clusters):
            self._take_cluster(b, c, source)

    # -- what races leave open ---------------------------------------------------------------------------------

    def loosen_tree(self, uuid: str) -> None:
        """Overlapping operations on this tree: until rewritten, its blocks may show any stamp."""
        for b in self.tree(uuid):
            b.loose, b.data, b.maybe, b.loose_bits = True, {}, 0, 0

    def raced_snapshot(self, snap: str, origin: str, lba: int, write_id: int, prev: Value | None) -> None:
        """A write to `origin` overlapped its snapshot: the snapshot's block holds it or what it replaced, and
        who owns the write's cluster is open."""
        s, o = self.blobs.get(snap), self.blobs.get(origin)
        if s is None or o is None:
            return
        c = lba // self.bpc
        if not s.owned >> c & 1:  # the write may have come after: the snapshot shows its parent's cluster
            self._copy_in(s, c)
            s.maybe |= 1 << c
        before = prev if prev is not None else self.visible(snap, lba)
        s.data.setdefault(c, {})[lba] = union(before, write_id)
        o.maybe |= 1 << c

    def mark_maybe(self, uuid: str, lba: int) -> None:
        b = self.blobs.get(uuid)
        if b is not None:
            b.maybe |= 1 << (lba // self.bpc)


def bits(x: int) -> list[int]:
    """The set bits of a cluster map, lowest first."""
    out = []
    while x:
        low = x & -x
        out.append(low.bit_length() - 1)
        x ^= low
    return out
