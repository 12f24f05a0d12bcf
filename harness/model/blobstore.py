"""What the blobstore's metadata decides for an lvstore: blob ids, extent pages, and the order an examine opens
the blobs in again.

A blob's id is the metadata page that holds its first page: bs_create_blob takes the lowest free page
(`spdk_bit_array_find_first_clear(used_md_pages, 0)`); a cluster of a blob with an extent table that falls in a
range of SPDK_EXTENTS_PER_EP clusters with no extent page yet claims the lowest free page from 1
(bs_allocate_cluster). Deleting a blob frees its pages, so a later blob takes a deleted one's place, and after a
reload SPDK lists lvols in blob id order, not creation order (recorded: transcript 14). The lvstore's own super
blob holds page 0. Pages a blob needs for xattrs beyond its first page are not modelled.

The order an examine registers the lvol bdevs in is the order their opens complete (`load_order`): every open
reads the blob's first metadata page, then its extent pages, then opens its parent (a load of its own unless
the parent is open already); the aio reads of one poll complete in the order they were submitted.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

EXTENTS_PER_PAGE = 512
"""lib/blob/blobstore.h SPDK_EXTENTS_PER_EP for 4 KiB metadata pages: clusters one extent page maps."""


class MdPages:
    """The used_md_pages bit array as a high-water mark and a heap of freed pages below it: O(log n) per
    claim or release whatever the number of blobs. While a mark is out (`mark`), each change is logged so
    `undo_to` can take it back: a mark costs nothing however many pages were freed."""

    __slots__ = ("_free", "_high", "_log")

    def __init__(self) -> None:
        self._free: list[int] = []
        self._high = 0
        self._log: list[int] | None = None
        """Since the oldest mark: a page claimed from the heap (p), claimed past the high-water mark (-1), or
        released (-2 - p)."""

    def claim(self) -> int:
        """The lowest free page (what find_first_clear returns), now used."""
        if self._free:
            page = heapq.heappop(self._free)
            if self._log is not None:
                self._log.append(page)
            return page
        if self._log is not None:
            self._log.append(-1)
        self._high += 1
        return self._high - 1

    def release(self, page: int) -> None:
        if self._log is not None:
            self._log.append(-2 - page)
        heapq.heappush(self._free, page)

    def mark(self) -> int:
        """A point `undo_to` can go back to, until `stop`."""
        if self._log is None:
            self._log = []
        return len(self._log)

    def undo_to(self, mark: int) -> None:
        """Back to the pages used at `mark` (the heap may be laid out otherwise: it holds the same pages)."""
        log = self._log
        assert log is not None and mark <= len(log), "undo_to without its mark"
        undone_releases = False
        while len(log) > mark:
            entry = log.pop()
            if entry == -1:
                self._high -= 1
            elif entry >= 0:
                heapq.heappush(self._free, entry)
            else:
                self._free.remove(-2 - entry)  # O(heap), but only a restore does it
                undone_releases = True
        if undone_releases:
            heapq.heapify(self._free)

    def stop(self) -> None:
        """No mark will be undone: stop logging."""
        self._log = None


def extent_ranges(alloc: int, num_clusters: int) -> list[int]:
    """The extent-page ranges (cluster // EXTENTS_PER_PAGE) holding at least one of `alloc`'s clusters."""
    out, i = [], 0
    mask = (1 << EXTENTS_PER_PAGE) - 1
    bits = alloc & ((1 << num_clusters) - 1)
    while bits:
        if bits & mask:
            out.append(i)
        bits >>= EXTENTS_PER_PAGE
        i += 1
    return out


@dataclass(frozen=True, slots=True)
class Opening:
    """What opening one blob needs to read and open: `reads_extents` (it has extent pages to read) and the
    blob id of its parent (None: no parent blob; an external snapshot opens at once)."""

    blob_id: int
    reads_extents: bool
    parent: int | None


@dataclass(eq=False)
class _Load:
    blob: Opening
    then: Callable[[], None]
    stage: str = "md"


@dataclass
class _Poller:
    """Aio reads of one poll complete in submission order; what they submit completes in the next poll."""

    submitted: deque[_Load] = field(default_factory=deque)


def load_order(openings: Sequence[Opening], lookup: Callable[[int], Opening | None]) -> list[int]:
    """The blob ids of `openings` (an examine's spdk_lvol_open of each, in blob id order) in the order their
    opens complete: the order vbdev_lvol registers their bdevs in. `lookup` gives a parent's Opening."""
    opened: set[int] = set()
    done: list[int] = []
    poller = _Poller()

    def backing(load: _Load) -> None:
        parent = load.blob.parent
        parent_opening = lookup(parent) if parent is not None else None
        if parent_opening is None or parent in opened:
            finish(load)
            return
        poller.submitted.append(_Load(parent_opening, lambda: finish(load)))

    def finish(load: _Load) -> None:
        opened.add(load.blob.blob_id)  # a second load of an open blob only takes a reference (bs_open_blob_cpl)
        load.then()

    def opened_lvol(bid: int) -> Callable[[], None]:
        return lambda: done.append(bid)

    for opening in openings:
        poller.submitted.append(_Load(opening, opened_lvol(opening.blob_id)))
    for _ in range(4 * len(openings) + 4):  # each poll completes every load at least one stage further
        if not poller.submitted:
            break
        batch, poller.submitted = poller.submitted, deque()
        for load in batch:
            if load.stage == "md" and load.blob.reads_extents:
                load.stage = "extents"
                poller.submitted.append(load)
                continue
            backing(load)
    return done


def depth_first(roots: Iterable[int], children: Callable[[int], Iterable[int]]) -> list[int]:
    """`roots` and everything under them, each before its clones (create_esnap_clone_lvol_disks' walk)."""
    out: list[int] = []
    seen: set[int] = set()

    def walk(bid: int) -> None:
        if bid in seen:
            return
        seen.add(bid)
        out.append(bid)
        for child in children(bid):
            walk(child)

    for root in roots:
        walk(root)
    return out
