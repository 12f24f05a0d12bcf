"""The reference target's data: the blocks written to its lvols, kept sparse beside the model's blobs.

The model (`harness.model.LvolStore`) owns the structure: which clusters each blob owns (`alloc`), its parent,
its size. This store keeps only the written blocks of the clusters a blob owns, zlib-compressed, and reads
follow SPDK's blobstore: a block of a cluster the blob owns comes from the blob (zeroes if never written: a
freed cluster is cleared, clear_method unmap); of a cluster it does not own, from its parent snapshot while the
block is within the parent's size (blob_bs_dev's zero_trailing_bytes), else zeroes. A write to a cluster the
blob does not own allocates it and copies the parent's cluster first (bs_allocate_and_copy_cluster), taking a
free cluster from the lvstore as the real blobstore does, so listings and fragmaps show written clusters.

RPCs move data without naming it: `capture()` before a mutating call and `follow()` after it compare the
blobs' ownership and give each newly owned cluster what that blob showed there before (an inflate, a decouple, a
one-clone delete merging into its clone, a thick grow), a new blob that owns clusters (a snapshot) what its
origin showed; clusters a blob no longer owns, and blobs that are gone, drop their data. Memory is bounded:
only written blocks are kept, compressed, and at most `max_bytes` of them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from harness.io.images import bits
from harness.model.lvstore import Lvol, LvolStore

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
Key = tuple[str, int]
"""(lvstore uuid, blob id)."""


class BlockError(Exception):
    """A write the blobstore refuses: `reason` is `read-only`, `no-space` or `store-full`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Shape:
    alloc: int
    parent: int | None
    num_clusters: int


Capture = dict[str, dict[int, _Shape]]


class BlockStore:
    """Sparse written blocks per blob (see the module docstring)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.data: dict[Key, dict[int, bytes]] = {}
        self.max_bytes = max_bytes
        self.bytes = 0
        self.writes = 0
        self.reads = 0

    # -- geometry -----------------------------------------------------------------------------------------------

    @staticmethod
    def blocks_per_cluster(store: LvolStore) -> int:
        return store.cluster_size // store.block_size

    # -- I/O -------------------------------------------------------------------------------------------------------

    def read(self, store: LvolStore, lv: Lvol, lba: int) -> bytes:
        """One block as the lvol shows it (the caller checked lba against the lvol's size)."""
        self.reads += 1
        owner = self._owner(store, lv, lba // self.blocks_per_cluster(store), lba)
        if owner is None:
            return bytes(store.block_size)
        raw = self.data.get((store.uuid, owner.blob_id), {}).get(lba)
        return zlib.decompress(raw) if raw is not None else bytes(store.block_size)

    def write(self, store: LvolStore, lv: Lvol, lba: int, block: bytes) -> None:
        if lv.read_only:
            raise BlockError("read-only")
        bpc = self.blocks_per_cluster(store)
        c = lba // bpc
        key = (store.uuid, lv.blob_id)
        if not lv.alloc >> c & 1:
            if store.free_clusters <= 0:
                raise BlockError("no-space")
            self._copy_cluster_in(store, lv, c)
            lv.alloc |= 1 << c
            store.set_free_clusters(store.free_clusters - 1)
        packed = zlib.compress(block, 1)
        blocks = self.data.setdefault(key, {})
        old = blocks.get(lba)
        grow = len(packed) - (len(old) if old is not None else 0)
        if self.bytes + grow > self.max_bytes:
            raise BlockError("store-full")
        blocks[lba] = packed
        self.bytes += grow
        self.writes += 1

    def _owner(self, store: LvolStore, lv: Lvol | None, c: int, lba: int) -> Lvol | None:
        """The blob whose data the lvol shows at cluster c (bounded walk up the parents), None for zeroes."""
        bpc = self.blocks_per_cluster(store)
        for _ in range(len(store.blobs) + 1):
            if lv is None or lba >= lv.num_clusters * bpc:
                return None
            if lv.alloc >> c & 1:
                return lv
            lv = store.parent_of(lv)
        return None

    def _copy_cluster_in(self, store: LvolStore, lv: Lvol, c: int) -> None:
        """Copy-on-write: the cluster's blocks as the parent chain shows them become the blob's own."""
        bpc = self.blocks_per_cluster(store)
        src = self._owner(store, store.parent_of(lv), c, c * bpc)
        if src is None:
            return
        have = self.data.get((store.uuid, src.blob_id))
        if not have:
            return
        mine = self.data.setdefault((store.uuid, lv.blob_id), {})
        limit = min((c + 1) * bpc, src.num_clusters * bpc)
        for lba in range(c * bpc, limit):
            raw = have.get(lba)
            if raw is not None:
                mine[lba] = raw
                self.bytes += len(raw)

    # -- structure changes ------------------------------------------------------------------------------------------

    def capture(self, stores: dict[str, LvolStore]) -> Capture:
        """Every blob's ownership, parent and size now (before a mutating call)."""
        return {u: {b: _Shape(lv.alloc, lv.parent, lv.num_clusters) for b, lv in s.blobs.items()}
                for u, s in stores.items()}

    def follow(self, before: Capture, stores: dict[str, LvolStore], keep: set[str] | frozenset[str] = frozenset(),
               ) -> None:
        """Move data as the call moved ownership (see the module docstring). `keep`: lvstore uuids that left
        `stores` but still exist (unloaded with their base bdev): their data stays."""
        if not self.data:
            return
        for uuid in {u for u, _ in self.data} - stores.keys() - set(keep):
            self._drop_store(uuid)
        for uuid, store in stores.items():
            shapes = before.get(uuid)
            if shapes is not None:
                self._follow_store(store, shapes)

    def _follow_store(self, store: LvolStore, before: dict[int, _Shape]) -> None:
        bpc = self.blocks_per_cluster(store)
        uuid = store.uuid
        updates: list[tuple[int, dict[int, bytes]]] = []
        for bid, lv in store.blobs.items():
            old = before.get(bid)
            gained = lv.alloc & ~(old.alloc if old is not None else 0)
            if not gained:
                continue
            src = bid if old is not None else self._origin_of(store, bid, before)
            if src is None:
                continue
            blocks: dict[int, bytes] = {}
            for c in bits(gained):
                owner = _owner_before(before, src, c, c * bpc, bpc)
                have = self.data.get((uuid, owner)) if owner is not None else None
                if have:
                    for lba in range(c * bpc, (c + 1) * bpc):
                        raw = have.get(lba)
                        if raw is not None:
                            blocks[lba] = raw
            updates.append((bid, blocks))
        for bid, old in before.items():
            now = store.blobs.get(bid)
            key = (uuid, bid)
            if key not in self.data:
                continue
            if now is None:
                self._drop(key)
                continue
            lost = old.alloc & ~now.alloc
            if lost:
                kept = self.data[key]
                for lba in [b for b in kept if lost >> (b // bpc) & 1]:
                    self.bytes -= len(kept.pop(lba))
        for bid, blocks in updates:
            if blocks:
                mine = self.data.setdefault((uuid, bid), {})
                for lba, raw in blocks.items():
                    prev = mine.get(lba)
                    self.bytes += len(raw) - (len(prev) if prev is not None else 0)
                    mine[lba] = raw

    @staticmethod
    def _origin_of(store: LvolStore, bid: int, before: dict[int, _Shape]) -> int | None:
        """A new blob that owns clusters is a snapshot: its origin existed before and is now its clone."""
        for c in store.blobs[bid].clones:
            if c in before:
                return c
        return None

    def _drop(self, key: Key) -> None:
        blocks = self.data.pop(key, {})
        self.bytes -= sum(len(b) for b in blocks.values())

    def _drop_store(self, uuid: str) -> None:
        for key in [k for k in self.data if k[0] == uuid]:
            self._drop(key)

    # -- for the fault mode and the tests --------------------------------------------------------------------------

    def some_block_elsewhere(self, store: LvolStore, chain: set[int], lba: int) -> bytes | None:
        """A written block of a blob outside `chain` (the reading lvol and its parents): at `lba` if one has
        it there, else the lowest block of the lowest such blob. Deterministic."""
        others = sorted(k for k in self.data if k[0] == store.uuid and k[1] not in chain and self.data[k])
        for key in others:
            raw = self.data[key].get(lba)
            if raw is not None:
                return zlib.decompress(raw)
        if others:
            blocks = self.data[others[0]]
            return zlib.decompress(blocks[min(blocks)])
        return None


def _owner_before(before: dict[int, _Shape], bid: int | None, c: int, lba: int, bpc: int) -> int | None:
    for _ in range(len(before) + 1):
        shape = before.get(bid) if bid is not None else None
        if shape is None or lba >= shape.num_clusters * bpc:
            return None
        if shape.alloc >> c & 1:
            return bid
        bid = shape.parent
    return None

