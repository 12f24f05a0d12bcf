"""Pure semantics of one SPDK lvol store, as Longhorn's fork (longhorn-v24.09 @1975133e9) behaves.

The reference target serves RPCs from it and the storm's checker predicts replies with it, so it imports no
socket, process or storm code, is deterministic (UUIDs and timestamps come from injected factories), and every
operation costs O(1) or O(parent-chain depth) in the number of lvols (cluster maps are Python ints used as bit
sets; lookups are dicts). `copy()` snapshots the whole state; `checkpoint(refs)` / `restore(cp)` save and undo
just what operations on some trees can change (the checker orders overlapping operations with them): the
blobs of those trees, and the indexes through an undo journal kept while a checkpoint is live.

Ground truth is the recordings in /work/shared/spdk/transcripts; where they are silent, the fork's
lib/lvol/lvol.c, lib/blob/blobstore.c and module/bdev/lvol/vbdev_lvol.c:
- a snapshot takes its origin's clusters and thin flag; the origin becomes a thin clone of it; the snapshot
  replaces the origin at the tail of the old parent's clone list;
- "is_snapshot" means "has a snapshot entry" (someone was cloned from it): it stays true with 0 clones, and a
  read-only lvol that was cloned reports it;
- delete: 2+ clones -> EPERM; exactly one clone -> the clone takes the snapshot's clusters it lacks and moves
  to the snapshot's parent (tail of its clone list); held open -> EBUSY;
- background jobs (snapshot checksum, shallow copy) hold their blob open and locked (clone, inflate, decouple,
  detach, set_parent and another job answer EBUSY) and progress CLUSTERS_PER_TICK clusters per `tick()`; the
  reference target ticks once per poll of its RPC socket, so a job on a large snapshot holds it across the
  next few polls, and a checksum holds even a snapshot without clusters for the rest of its poll (`Job`);
- the checksum is SPDK's CRC-64 of the snapshot's own clusters, which hold zeroes (no I/O is modelled);
- deliberate deviation: set_parent refuses a cycle (EINVAL); SPDK has no such check, so a target that
  accepts one shows up as a finding;
- external snapshots (transcripts 10-12): an esnap clone is a thin blob reading a bdev outside the lvstore by
  its UUID (`esnap`); a snapshot of it takes the external parent and the clone hangs under the snapshot; the
  only clone of a deleted esnap snapshot becomes the esnap clone; inflate and decouple copy every cluster
  (no parent of any kind, thick); detach is EINVAL; set_parent_bdev accepts any bdev of any size that is a
  whole number of clusters; an esnap clone whose bdev was missing when the lvstore loaded is degraded, and so
  is everything under it: listed, no bdev (found only by delete), until the bdev arrives (`hotplug`);
- blob ids are metadata pages, reused after a delete (`harness.model.blobstore`): after a reload lvols list in
  blob id order and register their bdevs in the order their opens complete (transcript 14).
Fault modes the model acts on are MODEL_FAULTS (see harness/sim/faults.py for what each does).
"""

from __future__ import annotations

import base64
import copy
import errno
import functools
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from harness.model.blobstore import EXTENTS_PER_PAGE, MdPages, Opening, depth_first, extent_ranges, load_order

MIB = 1024 * 1024
NAME_MAX = 255
"""Longest lvol name the fork accepts on create (256 fails; rename truncates to 255)."""
CLUSTERS_PER_TICK = 64
"""Clusters a background job (checksum, shallow copy) gets through per tick."""
BLOB_ID_BASE = 1 << 32
# spdk_lvs_opts_init: num_md_pages_per_cluster_ratio = 100, i.e. one metadata page per cluster.
MD_PAGES_PER_CLUSTER_RATIO = 100

FORCED_REMOVAL = "forced-removal"
LEAK_CLUSTER = "leak-cluster"
DELETE_SNAPSHOT_WITH_CLONES = "delete-snapshot-with-clones"
ABORT_ASSERT = "abort-assert"
ABORT_MALLOC = "abort-malloc"
MODEL_FAULTS = frozenset({FORCED_REMOVAL, LEAK_CLUSTER, DELETE_SNAPSHOT_WITH_CLONES, ABORT_ASSERT, ABORT_MALLOC})
"""Fault modes the model itself acts on (the dispatcher handles `hang` and `exit`)."""


class ModelError(Exception):
    """SPDK refused the operation with `errno` (e.g. errno.EBUSY).

    `forced_removal` is set when the (faulty) target answered the error but removed the lvol anyway; `cause`
    says why a blob delete failed (`open`: held open; `clone-locked`: the only clone is busy).
    """

    def __init__(self, err: int, detail: str = "", forced_removal: bool = False, cause: str = "") -> None:
        super().__init__(f"{errno.errorcode.get(err, err)}: {detail}" if detail else errno.errorcode.get(err, str(err)))
        self.errno = err
        self.detail = detail
        self.forced_removal = forced_removal
        self.cause = cause


class ModelCrash(Exception):
    """The state reached makes the real target die: kind `segv` (detail names the dereference, `address` the
    faulting address) or `abort` (detail is the fault mode that fired: `abort-assert` / `abort-malloc`)."""

    def __init__(self, kind: str, detail: str, address: int = 0) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.address = address


_CRC64_ISO_POLY = 0xD800000000000000  # CRC-64/ISO, reflected (ISA-L crc64_iso_refl)
_ALL_ONES = (1 << 64) - 1


def _gf2_apply(columns: tuple[int, ...], x: int) -> int:
    out, i = 0, 0
    while x:
        if x & 1:
            out ^= columns[i]
        x >>= 1
        i += 1
    return out


def _crc64_zero_byte(reg: int) -> int:
    for _ in range(8):
        reg = (reg >> 1) ^ (_CRC64_ISO_POLY if reg & 1 else 0)
    return reg


@functools.cache
def _zero_byte_powers() -> tuple[tuple[int, ...], ...]:
    """The register update for 2**i zero bytes, i = 0..63, as 64x64 bit matrices (columns), squared once."""
    base = tuple(_crc64_zero_byte(1 << i) for i in range(64))
    powers = [base]
    for _ in range(63):
        base = tuple(_gf2_apply(base, c) for c in base)
        powers.append(base)
    return tuple(powers)


@functools.lru_cache(maxsize=4096)  # one entry per allocated-cluster count seen
def crc64_iso_of_zeroes(nbytes: int) -> int:
    """spdk_crc64_iso_refl(zeroes, nbytes, 0): the register update is linear over GF(2), so n zero bytes are
    the product of the matrices for the powers of two in n, applied to the initial register one by one
    (matrix-vector products: O(popcount(n)) once the 64 powers are known)."""
    if nbytes == 0:
        return 0
    powers = _zero_byte_powers()
    reg, i, n = _ALL_ONES, 0, nbytes
    while n:
        if n & 1:
            reg = _gf2_apply(powers[i], reg)
        n >>= 1
        i += 1
    return reg ^ _ALL_ONES


def _popcount(bits: int) -> int:
    return bits.bit_count()


def _mask(n: int) -> int:
    return (1 << n) - 1


_U64 = (1 << 64) - 1
_ABSENT = object()
"""What an undo entry saves for a key that was not in its index."""


@dataclass(eq=False)
class Lvol:
    """One blob of the store and, unless `removed`, the lvol bdev on it.

    `alloc` is the set of clusters this blob owns (bit i = cluster i). Links are blob ids so a store can be
    deep-copied cheaply. A `removed` blob is what a forced removal leaves: no lvol, but still in its parent's
    clone list, still holding its clusters.
    """

    uuid: str
    name: str
    blob_id: int
    num_clusters: int
    thin: bool
    creation_time: str
    alloc: int = 0
    read_only: bool = False
    is_snapshot: bool = False
    parent: int | None = None
    clones: dict[int, None] = field(default_factory=dict)
    xattrs: dict[str, str] = field(default_factory=dict)
    open_refs: int = 0
    locks: int = 0
    checksum: int | None = None
    removed: bool = False
    alias_tail: str = ""
    """What the bdev alias says after `lvs_name/`: the name, except after a rename to 256 characters
    (SPDK keeps 255 in the lvol's name but the full string in the alias) or before an lvstore rename."""
    esnap: str | None = None
    """The external snapshot's id (the UUID of the bdev it was made from) when this blob is an esnap clone:
    its parent is outside the lvstore (parent stays None; SPDK's parent_id is SPDK_BLOBID_EXTERNAL_SNAPSHOT)."""
    extent_pages: dict[int, int] = field(default_factory=dict)
    """Extent-page range (cluster // EXTENTS_PER_PAGE) -> the metadata page that maps it."""
    seq: int = 0
    """Its place in the store's listing order (`LvolStore.blobs` holds blobs by rising seq): a restore that
    puts a deleted blob back puts it back in its place."""

    @property
    def is_clone(self) -> bool:
        return self.parent is not None

    @property
    def is_esnap_clone(self) -> bool:
        return self.esnap is not None

    @property
    def num_allocated_clusters(self) -> int:
        return _popcount(self.alloc)

    @property
    def busy(self) -> bool:
        """Held open by someone else (a checksum or shallow copy): delete answers EBUSY."""
        return self.open_refs > 0

    @property
    def locked(self) -> bool:
        """blob->locked_operation_in_progress: clone, inflate, decouple, detach, set_parent, another
        checksum or shallow copy answer EBUSY."""
        return self.locks > 0

    def _saved(self) -> tuple[Any, ...]:
        """The fields an operation can change (uuid, blob_id and creation_time never change)."""
        return (self.name, self.num_clusters, self.thin, self.alloc, self.read_only, self.is_snapshot, self.parent,
                dict(self.clones), dict(self.xattrs), self.open_refs, self.locks, self.checksum, self.removed,
                self.alias_tail, self.esnap, dict(self.extent_pages))

    def _restore(self, saved: tuple[Any, ...]) -> None:
        (self.name, self.num_clusters, self.thin, self.alloc, self.read_only, self.is_snapshot, self.parent,
         clones, xattrs, self.open_refs, self.locks, self.checksum, self.removed, self.alias_tail, self.esnap,
         extent_pages) = saved
        self.clones = dict(clones)
        self.xattrs = dict(xattrs)
        self.extent_pages = dict(extent_pages)


@dataclass(eq=False)
class Job:
    """A background operation holding `blob_id` open: `kind` is `checksum` or `shallow_copy`.

    `min_ticks`: ticks the job lasts even with nothing to copy. In SPDK a checksum opens the blob (at once: the
    lvol holds it open, bs_open_blob's blob_lookup path), locks it, and with no allocated cluster still stores
    its xattr with blob_sync_md, an asynchronous metadata write, before it unlocks and closes the blob
    (blobstore.c bs_snapshot_checksum_blob_open_cpl -> _cluster_find_next -> _store_xattr ->
    _md_synchronized). That write completes only after the RPC poller has handled every request it read in
    the same poll (jsonrpc_server_conn_recv runs them all back to back), so a delete read together with the
    checksum meets the open blob. The reference target ticks once per poll and asks a checksum for one tick
    (a shallow copy needs none: see start_shallow_copy)."""

    kind: str
    blob_id: int
    total_clusters: int
    copied_clusters: int = 0
    error: int = 0
    holding: bool = False
    min_ticks: int = 0
    ticks: int = 0

    @property
    def done(self) -> bool:
        return self.error != 0 or (self.copied_clusters >= self.total_clusters and self.ticks >= self.min_ticks)


@dataclass(frozen=True, slots=True, eq=False)
class Checkpoint:
    """What `LvolStore.checkpoint()` saved for `restore()`: the store's fields, where its undo journal of the
    indexes stood (`mark`), its jobs and the changeable fields of the blobs and jobs it covers."""

    fields: tuple[Any, ...]
    mark: int
    jobs: tuple[Job, ...]
    lvols: tuple[tuple[Lvol, tuple[Any, ...]], ...]
    job_states: tuple[tuple[Job, tuple[int, int, bool, int]], ...]


def _default_uuid() -> str:
    return str(uuid_mod.uuid4())


def _default_clock() -> str:
    return "1970-01-01T00:00:00Z"


class LvolStore:
    """One lvstore: its clusters, lvols, snapshot/clone tree and background jobs.

    Refusals raise ModelError(errno) and change nothing (except the recorded forced removal when the
    `forced-removal` fault is on); ModelCrash means the real target would die here.
    """

    def __init__(
        self,
        name: str,
        uuid: str,
        base_bdev: str,
        total_data_clusters: int,
        cluster_size: int,
        block_size: int,
        faults: frozenset[str] = frozenset(),
        uuid_factory: Callable[[], str] | None = None,
        clock: Callable[[], str] | None = None,
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.base_bdev = base_bdev
        self.total_data_clusters = total_data_clusters
        self.cluster_size = cluster_size
        self.block_size = block_size
        self.faults = frozenset(faults)
        self._free = total_data_clusters
        self._uuid_factory = uuid_factory or _default_uuid
        self._clock = clock or _default_clock
        self._pages = MdPages()
        self._pages.claim()  # page 0: the lvstore's super blob (lvol.c's name and uuid xattrs)
        self.blobs: dict[int, Lvol] = {}
        """Every blob in the order SPDK lists lvols, removed ones included: creation order, and blob id order
        after a reload (spdk_lvs_load iterates blobs by id)."""
        self.missing_esnaps: set[str] = set()
        """External snapshots that were missing when the lvstore loaded: the esnap clones of them and every
        blob under those are degraded (no bdev) until the bdev arrives (`hotplug`)."""
        self._by_name: dict[str, int] = {}
        self._by_uuid: dict[str, int] = {}
        self._by_alias: dict[str, int] = {}
        self.jobs: list[Job] = []
        self._seq = 0
        self._undo: list[tuple[Any, Any, Any]] | None = None
        """While a checkpoint is live: (index or object, key or attribute, old value) for each change to the
        indexes, newest last, so a checkpoint costs what its trees cost, not a copy of every index (at 5,000
        lvols four dict copies took ~0.5-0.8 ms, once per group of overlapping writes)."""
        self._live: list[Checkpoint] = []
        self.leaked_by_fault = 0
        """Clusters the `leak-cluster` fault kept from being returned (for invariant messages)."""

    # ---- copying and lookups -------------------------------------------------------------------------------------

    def copy(self) -> LvolStore:
        """An independent snapshot of the whole state (the factories are shared, not copied)."""
        uf, ck = self._uuid_factory, self._clock
        self._uuid_factory = self._clock = None  # type: ignore[assignment]
        try:
            dup = copy.deepcopy(self)
        finally:
            self._uuid_factory, self._clock = uf, ck
        dup._uuid_factory, dup._clock = uf, ck
        return dup

    def checkpoint(self, refs: Iterable[str] | None = None) -> Checkpoint:
        """The state before operations on the trees holding `refs` (lvol names, aliases or UUIDs), enough for
        `restore()` to undo them, as often as needed until `release()`: the store's fields, a mark in the undo
        journal of its indexes (kept from now on), every blob of those trees (an operation changes only blobs
        in the trees it names: a parent, its clones, a snapshot's origin), the blobs background jobs hold (any
        operation may tick them) and the jobs. `refs=None`: every blob (an lvstore rename renames every
        alias)."""
        if refs is None:
            blobs: Iterable[Lvol] = self.blobs.values()
        else:
            picked: dict[int, Lvol] = {}
            for ref in refs:
                lv = self.find(ref)
                if lv is not None and lv.blob_id not in picked:  # its tree is in already otherwise
                    for t in self._tree(lv):
                        picked[t.blob_id] = t
            for job in self.jobs:
                held = self.blobs.get(job.blob_id)
                if held is not None:
                    picked[held.blob_id] = held
            blobs = picked.values()
        if self._undo is None:
            self._undo = []
        cp = Checkpoint(
            fields=(self.name, self.base_bdev, self.total_data_clusters, self._free, self._pages.mark(),
                    self.leaked_by_fault, frozenset(self.missing_esnaps)),
            mark=len(self._undo),
            jobs=tuple(self.jobs),
            lvols=tuple((lv, lv._saved()) for lv in blobs),
            job_states=tuple((j, (j.copied_clusters, j.error, j.holding, j.ticks)) for j in self.jobs),
        )
        self._live.append(cp)
        return cp

    def restore(self, cp: Checkpoint) -> None:
        """Back to the state `cp` saved (operations since then touched only the trees it covers). Checkpoints
        taken after `cp` are gone with what they saved."""
        if not any(c is cp for c in self._live):
            raise ValueError("restore of a checkpoint that was released or undone by an earlier restore")
        undo = self._undo
        assert undo is not None
        reorder = False
        while len(undo) > cp.mark:
            target, key, old = undo.pop()
            if type(target) is dict:
                if old is _ABSENT:
                    target.pop(key, None)
                else:
                    reorder = reorder or (key not in target and target is self.blobs)
                    target[key] = old
            else:
                setattr(target, key, old)
        if reorder:  # a deleted blob came back at the end: to its place in the listing order
            self.blobs = dict(sorted(self.blobs.items(), key=lambda kv: kv[1].seq))
        self._live = [c for c in self._live if c.mark <= cp.mark]
        (self.name, self.base_bdev, self.total_data_clusters, self._free, pages,
         self.leaked_by_fault, missing) = cp.fields
        self._pages.undo_to(pages)
        self.missing_esnaps = set(missing)
        self.jobs = list(cp.jobs)
        for lv, saved in cp.lvols:
            lv._restore(saved)
        for job, (copied, error, holding, ticks) in cp.job_states:
            job.copied_clusters, job.error, job.holding, job.ticks = copied, error, holding, ticks

    def release(self, cp: Checkpoint) -> None:
        """`cp` will not be restored: once no checkpoint is live, the indexes' changes are no longer kept."""
        self._live = [c for c in self._live if c is not cp]
        if not self._live:
            self._undo = None
            self._pages.stop()

    def _put(self, index: dict[Any, Any], key: Any, value: Any) -> None:
        """index[key] = value, journaled while a checkpoint is live."""
        if self._undo is not None:
            self._undo.append((index, key, index.get(key, _ABSENT)))
        index[key] = value

    def _drop(self, index: dict[Any, Any], key: Any) -> None:
        """del index[key] (if there), journaled while a checkpoint is live."""
        if key in index:
            if self._undo is not None:
                self._undo.append((index, key, index[key]))
            del index[key]

    def _replace(self, obj: Any, attr: str, value: Any) -> None:
        """obj.attr = value (a whole index, a blob's seq), journaled while a checkpoint is live."""
        if self._undo is not None:
            self._undo.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)

    @property
    def free_clusters(self) -> int:
        return self._free

    def find_by_uuid(self, uuid: str) -> Lvol | None:
        bid = self._by_uuid.get(uuid)
        return None if bid is None else self.blobs[bid]

    def find_by_name(self, name: str) -> Lvol | None:
        bid = self._by_name.get(name)
        return None if bid is None else self.blobs[bid]

    def find_by_alias_tail(self, tail: str) -> Lvol | None:
        """The lvol whose bdev alias is `lvs_name/tail` (what spdk_bdev_get_by_name matches)."""
        bid = self._by_alias.get(tail)
        return None if bid is None else self.blobs[bid]

    def find(self, ref: str) -> Lvol | None:
        """An lvol by UUID, by alias `lvs_name/lvol_name`, or by bare name (in that order)."""
        lv = self.find_by_uuid(ref)
        if lv is None and ref.startswith(self.name + "/"):
            lv = self.find_by_alias_tail(ref[len(self.name) + 1 :])
        if lv is None:
            lv = self.find_by_name(ref)
        return lv

    def lookup(self, ref: str, *, degraded_ok: bool = False) -> Lvol:
        """Like find(), but a missing lvol is ModelError(ENODEV) as SPDK answers it; so is a degraded one (it
        has no bdev to be found by), except for a caller that finds lvols without bdevs too (`degraded_ok`:
        bdev_lvol_delete looks degraded lvols up by UUID and by lvs_name/lvol_name)."""
        lv = self.find(ref)
        if lv is None or (not degraded_ok and self.missing_esnaps and self.is_degraded(lv)):
            raise ModelError(errno.ENODEV, f"no lvol {ref!r} in lvstore {self.name}")
        return lv

    def esnap_root(self, lv: Lvol) -> Lvol:
        """The top of lv's chain of parents (bounded walk): the blob whose esnap, if any, lv reads through."""
        root, hops = lv, 0
        while root.parent is not None and hops <= len(self.blobs):
            parent = self.blobs.get(root.parent)
            if parent is None:
                break
            root, hops = parent, hops + 1
        return root

    def is_degraded(self, lv: Lvol) -> bool:
        """spdk_blob_is_degraded: the external snapshot at the top of lv's chain was missing at load."""
        if not self.missing_esnaps:
            return False
        esnap = self.esnap_root(lv).esnap
        return esnap is not None and esnap in self.missing_esnaps

    def esnaps_held(self) -> dict[str, int]:
        """External snapshot id -> how many live blobs hold it open (claimed read_many_write_none); a degraded
        esnap clone holds nothing."""
        held: dict[str, int] = {}
        for lv in self.blobs.values():
            if lv.esnap is not None and lv.esnap not in self.missing_esnaps:
                held[lv.esnap] = held.get(lv.esnap, 0) + 1
        return held

    def lvols(self) -> list[Lvol]:
        """Live lvols in SPDK's listing order (creation order)."""
        return [b for b in self.blobs.values() if not b.removed]

    def alias(self, lv: Lvol) -> str:
        """`lvs_name/lvol_name`, as bdev_lvol_get_lvols prints it."""
        return f"{self.name}/{lv.name}"

    def bdev_alias(self, lv: Lvol) -> str:
        """The lvol bdev's alias, as bdev_get_bdevs prints it (differs from alias() only after odd renames)."""
        return f"{self.name}/{lv.alias_tail}"

    def rename_store(self, new_name: str) -> None:
        """The lvstore's new name; SPDK rebuilds every lvol's alias from its (255-character) name."""
        self.name = new_name
        self._replace(self, "_by_alias", {})
        for lv in self.blobs.values():
            if not lv.removed:
                lv.alias_tail = lv.name
                self._by_alias[lv.name] = lv.blob_id

    def bdev_links(self, name: str) -> dict[str, object]:
        """The links bdev_get_bdevs reports for an lvol (driver_specific.lvol): snapshot, clone, its parent's
        name and its clones' names (sorted), removed blobs included as the model keeps them."""
        lv = self.lookup(name)
        parent = self.parent_of(lv)
        return {
            "snapshot": lv.is_snapshot,
            "clone": parent is not None,
            "base_snapshot": parent.name if parent is not None else None,
            "clones": sorted(c.name for c in self.clones_of(lv)),
            "esnap": lv.esnap,
        }

    def parent_of(self, lv: Lvol) -> Lvol | None:
        return None if lv.parent is None else self.blobs.get(lv.parent)

    def clones_of(self, lv: Lvol) -> list[Lvol]:
        """Every blob in lv's clone list, removed ones included, in list order."""
        return [self.blobs[c] for c in lv.clones if c in self.blobs]

    def size_bytes(self, lv: Lvol) -> int:
        return lv.num_clusters * self.cluster_size

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _clusters_for(self, size_in_mib: int) -> int:
        """The RPC multiplies size_in_mib by 1 MiB in uint64 (a size of 2**44 MiB wraps to 0; recorded)."""
        return -(-((size_in_mib * MIB) & _U64) // self.cluster_size)

    def _check_new_name(self, name: str | None) -> str:
        if not name or len(name) > NAME_MAX:
            raise ModelError(errno.EINVAL, f"invalid lvol name (1..{NAME_MAX} characters)")
        if name in self._by_name:
            raise ModelError(errno.EEXIST, f"lvol {name!r} exists")
        return name

    def _take(self, n: int) -> None:
        if n > self._free:
            raise ModelError(errno.ENOSPC, f"need {n} clusters, {self._free} free")
        self._free -= n

    def _give(self, n: int) -> None:
        if n <= 0:
            return
        if LEAK_CLUSTER in self.faults:
            self.leaked_by_fault += n
            return
        self._free += n

    def _new_blob(self, name: str, num_clusters: int, thin: bool) -> Lvol:
        lv = Lvol(
            uuid=self._uuid_factory(),
            name=name,
            blob_id=BLOB_ID_BASE + self._pages.claim(),
            num_clusters=num_clusters,
            thin=thin,
            creation_time=self._clock(),
        )
        lv.alias_tail = name
        lv.xattrs = {"name": name, "uuid": lv.uuid, "creation_time": lv.creation_time}  # lvol.c's blob xattrs
        self._seq += 1
        lv.seq = self._seq
        self._put(self.blobs, lv.blob_id, lv)
        self._put(self._by_name, name, lv.blob_id)
        self._put(self._by_uuid, lv.uuid, lv.blob_id)
        self._put(self._by_alias, name, lv.blob_id)
        return lv

    def _unlink_from_parent(self, lv: Lvol) -> None:
        parent = self.parent_of(lv)
        if parent is not None:
            parent.clones.pop(lv.blob_id, None)
        lv.parent = None

    def _link_to_parent(self, lv: Lvol, parent: Lvol) -> None:
        lv.parent = parent.blob_id
        parent.clones[lv.blob_id] = None
        parent.is_snapshot = True

    def _claim_extent_pages(self, lv: Lvol) -> None:
        """Extent pages for the ranges of lv's clusters that have none yet (bs_allocate_cluster, in cluster
        order)."""
        for ep in extent_ranges(lv.alloc, lv.num_clusters):
            if ep not in lv.extent_pages:
                lv.extent_pages[ep] = self._pages.claim()

    def _release_blob_pages(self, lv: Lvol) -> None:
        """A deleted blob's metadata page and extent pages are free again."""
        self._pages.release(lv.blob_id - BLOB_ID_BASE)
        for page in lv.extent_pages.values():
            self._pages.release(page)
        lv.extent_pages = {}

    def _delete_blob(self, lv: Lvol) -> None:
        self._forget(lv)
        self._release_blob_pages(lv)
        self._drop(self.blobs, lv.blob_id)

    def _forget(self, lv: Lvol) -> None:
        """Drop the lvol's names (the blob may stay, see forced removal)."""
        if self._by_name.get(lv.name) == lv.blob_id:
            self._drop(self._by_name, lv.name)
        if self._by_alias.get(lv.alias_tail) == lv.blob_id:
            self._drop(self._by_alias, lv.alias_tail)
        self._drop(self._by_uuid, lv.uuid)

    # ---- lvol operations (SPDK's RPC parameter names) ------------------------------------------------------------

    def create(self, lvol_name: str, size_in_mib: int, thin_provision: bool = False) -> Lvol:
        name = self._check_new_name(lvol_name)
        n = self._clusters_for(size_in_mib)
        if not thin_provision:
            self._take(n)
        lv = self._new_blob(name, n, thin_provision)
        if not thin_provision:
            lv.alloc = _mask(n)
            self._claim_extent_pages(lv)
        return lv

    def snapshot(self, lvol_name: str, snapshot_name: str, xattrs: dict[str, str] | None = None) -> Lvol:
        origin = self.lookup(lvol_name)
        name = self._check_new_name(snapshot_name)
        if origin.read_only:
            raise ModelError(errno.EINVAL, "cannot snapshot a read-only lvol")
        old_parent = self.parent_of(origin)
        snap = self._new_blob(name, origin.num_clusters, origin.thin)
        snap.alloc, origin.alloc = origin.alloc, 0
        snap.extent_pages, origin.extent_pages = origin.extent_pages, {}
        snap.esnap, origin.esnap = origin.esnap, None  # the snapshot reads the external snapshot now
        snap.read_only = True
        snap.xattrs = {**(xattrs or {}), **snap.xattrs}
        origin.thin = True
        if old_parent is not None:
            self._unlink_from_parent(origin)
            self._link_to_parent(snap, old_parent)
        self._link_to_parent(origin, snap)
        return snap

    def clone(self, snapshot_name: str, clone_name: str | None = None) -> Lvol:
        snap = self.lookup(snapshot_name)
        name = self._check_new_name(clone_name)
        if not snap.read_only:
            raise ModelError(errno.EINVAL, "clone source must be read-only (a snapshot)")
        if snap.locked:
            raise ModelError(errno.EBUSY, f"{snap.name}: another operation in progress")
        if ABORT_MALLOC in self.faults and len(snap.clones) >= 2:
            raise ModelCrash("abort", ABORT_MALLOC)
        lv = self._new_blob(name, snap.num_clusters, True)
        self._link_to_parent(lv, snap)
        return lv

    def delete(self, name: str) -> None:
        lv = self.lookup(name, degraded_ok=True)
        n_clones = len(lv.clones)
        if n_clones > 1 and DELETE_SNAPSHOT_WITH_CLONES not in self.faults:
            raise ModelError(errno.EPERM, f"{lv.name} has {n_clones} clones")
        only = self.blobs[next(iter(lv.clones))] if n_clones == 1 else None
        if only is not None and only.removed and FORCED_REMOVAL in self.faults:
            # spdk_lvol_destroy looks the only clone's lvol up before deleting the blob: NULL -> blob at +8.
            raise ModelCrash("segv", f"spdk_lvol_destroy: the only clone of {lv.name} has no lvol", address=8)
        if lv.busy:
            self._blob_delete_failed(lv, errno.EBUSY, "open", f"{lv.name} is open")
        if only is not None and only.locked:  # delete_snapshot_open_clone_cb
            self._blob_delete_failed(lv, errno.EBUSY, "clone-locked", f"{lv.name}'s clone {only.name} is busy")
        if only is not None:
            if only.is_snapshot:
                only.checksum = None  # spdk_lvol_destroy: the clone's data changes, its checksum goes
            if ABORT_ASSERT in self.faults:
                raise ModelCrash("abort", ABORT_ASSERT)
            self._merge_into_clone(lv, only)
            return
        # With delete-snapshot-with-clones the clones keep pointing at the deleted blob (nothing re-parented).
        self._unlink_from_parent(lv)
        self._give(lv.num_allocated_clusters)
        self._delete_blob(lv)

    def _blob_delete_failed(self, lv: Lvol, err: int, cause: str, detail: str) -> NoReturn:
        """spdk_bs_delete_blob failed. With `forced-removal` (the recorded bug, lvol_delete_blob_cb) the lvol goes
        anyway: its blob stays in its parent's clone list, keeps its clusters and its own clones."""
        if FORCED_REMOVAL in self.faults:
            self._forget(lv)
            lv.removed = True
            raise ModelError(err, detail + " (forced removal)", forced_removal=True, cause=cause)
        raise ModelError(err, detail, cause=cause)

    def _merge_into_clone(self, snap: Lvol, clone: Lvol) -> None:
        moved = snap.alloc & ~clone.alloc & _mask(clone.num_clusters)
        clone.alloc |= moved
        self._give(snap.num_allocated_clusters - _popcount(moved))
        for ep in extent_ranges(clone.alloc, clone.num_clusters):  # the clone takes the snapshot's extent pages
            if ep not in clone.extent_pages and ep in snap.extent_pages:
                clone.extent_pages[ep] = snap.extent_pages.pop(ep)
        parent = self.parent_of(snap)
        self._unlink_from_parent(snap)
        clone.parent = None
        clone.esnap = snap.esnap  # a deleted esnap snapshot's only clone becomes the esnap clone
        if parent is not None:
            self._link_to_parent(clone, parent)
        self._delete_blob(snap)

    def resize(self, name: str, size_in_mib: int) -> None:
        lv = self.lookup(name)
        if lv.read_only:
            raise ModelError(errno.EPERM, f"{lv.name} is read-only")
        n = self._clusters_for(size_in_mib)
        if n > lv.num_clusters and not lv.thin:
            self._take(n - lv.num_clusters)
            lv.alloc |= _mask(n) & ~_mask(lv.num_clusters)
        elif n < lv.num_clusters:
            dropped = lv.alloc & ~_mask(n)
            lv.alloc &= _mask(n)
            self._give(_popcount(dropped))
            for ep in [ep for ep in lv.extent_pages if ep * EXTENTS_PER_PAGE >= n]:
                self._pages.release(lv.extent_pages.pop(ep))
        lv.num_clusters = n
        self._claim_extent_pages(lv)

    def rename(self, old_name: str, new_name: str) -> None:
        """vbdev_lvol_rename: the new alias must be free (so the same name is EEXIST), then the name must be
        free in the lvstore; the name keeps 255 characters, the alias all of them. Snapshots can be renamed."""
        lv = self.lookup(old_name)
        if new_name in self._by_alias or new_name in self._by_name:
            raise ModelError(errno.EEXIST, f"lvol {new_name!r} exists")
        self._drop(self._by_alias, lv.alias_tail)
        self._drop(self._by_name, lv.name)
        lv.name, lv.alias_tail = new_name[:NAME_MAX], new_name
        lv.xattrs["name"] = new_name  # spdk_lvol_rename stores the whole string
        self._put(self._by_name, lv.name, lv.blob_id)
        self._put(self._by_alias, lv.alias_tail, lv.blob_id)

    def set_read_only(self, name: str) -> None:
        self.lookup(name).read_only = True

    def _begin_inflate(self, lv: Lvol) -> None:
        if lv.is_snapshot:
            lv.checksum = None  # spdk_lvol_inflate/decouple drop a snapshot's checksum up front
        if lv.locked:
            raise ModelError(errno.EBUSY, f"{lv.name}: another operation in progress")

    def inflate(self, name: str) -> None:
        lv = self.lookup(name)
        self._begin_inflate(lv)
        if not lv.thin:
            return
        self._allocate_all(lv)

    def _allocate_all(self, lv: Lvol) -> None:
        """bs_inflate_blob with ALLOCATE_ALL: every cluster the blob lacks, then no parent (blob or external)
        and no thin provisioning."""
        missing = _mask(lv.num_clusters) & ~lv.alloc
        self._take(_popcount(missing))
        lv.alloc |= missing
        self._claim_extent_pages(lv)
        lv.thin = False
        lv.esnap = None
        self._unlink_from_parent(lv)

    def decouple_parent(self, name: str) -> None:
        """bs_inflate_blob without allocate_all: copy the clusters the DIRECT parent owns (and the blob lacks),
        then hang the blob on the parent's parent (bs_inflate_blob_done), or on nothing at the top of a chain."""
        lv = self.lookup(name)
        self._begin_inflate(lv)
        if lv.esnap is not None:  # an external parent: every cluster is copied (bs_inflate_blob_open_cpl)
            if lv.thin:
                self._allocate_all(lv)
            return
        if lv.parent is None:
            raise ModelError(errno.EINVAL, f"{lv.name} has no parent")
        if not lv.thin:
            return
        parent = self.blobs[lv.parent]
        need = parent.alloc & _mask(lv.num_clusters) & ~lv.alloc  # bs_cluster_needs_allocation
        self._take(_popcount(need))
        lv.alloc |= need
        self._claim_extent_pages(lv)
        self._move_to_grandparent(lv, parent)

    def detach_parent(self, name: str) -> None:
        """Longhorn's detach (bs_inflate_blob with ALLOCATE_NONE): copy nothing; the blob moves to the parent's
        parent, as with decouple."""
        lv = self.lookup(name)
        if lv.locked:
            raise ModelError(errno.EBUSY, f"{lv.name}: another operation in progress")
        if lv.parent is None:
            raise ModelError(errno.EINVAL, f"{lv.name} has no parent")
        if not lv.thin:
            return
        self._move_to_grandparent(lv, self.blobs[lv.parent])

    def _move_to_grandparent(self, lv: Lvol, parent: Lvol) -> None:
        """bs_inflate_blob_done: a parent that has a parent hands the blob to it (tail of its clone list). A
        parent that reads an external snapshot hands it that: the blob becomes an esnap clone of it. (The fork
        @1975133e9 answers ENOENT there instead: it opens SPDK_BLOBID_EXTERNAL_SNAPSHOT as a blob id; a correct
        target moves the blob, so the checker reports the ENOENT.)"""
        grandparent = self.parent_of(parent)
        self._unlink_from_parent(lv)
        if grandparent is not None:
            self._link_to_parent(lv, grandparent)
        elif parent.esnap is not None:
            lv.esnap = parent.esnap

    def set_parent(self, lvol_name: str, parent_name: str) -> None:
        """spdk_bs_blob_set_parent's checks in its order. SPDK has no cycle check; the model refuses a cycle
        (EINVAL) so that a target accepting one shows up as a finding."""
        lv = self.lookup(lvol_name)
        snap = self.lookup(parent_name)
        if lv is snap:
            raise ModelError(errno.EINVAL, "lvol and parent are the same")
        if lv.parent == snap.blob_id:
            raise ModelError(errno.EEXIST, f"{snap.name} already is the parent")
        if not lv.thin:
            raise ModelError(errno.EINVAL, f"{lv.name} is not thin provisioned")
        if not snap.is_snapshot:
            raise ModelError(errno.EINVAL, f"{snap.name} is not a snapshot")
        if lv.num_clusters != snap.num_clusters:
            raise ModelError(errno.EINVAL, "sizes differ")
        if lv.locked or snap.locked:
            raise ModelError(errno.EBUSY, "another operation in progress")
        p: Lvol | None = snap
        for _ in range(len(self.blobs) + 1):  # bounded walk up: refuse a cycle
            if p is None:
                break
            if p is lv:
                raise ModelError(errno.EINVAL, f"{snap.name} descends from {lv.name}")
            p = self.parent_of(p)
        self._unlink_from_parent(lv)
        lv.esnap = None
        self._link_to_parent(lv, snap)

    # ---- external snapshots -------------------------------------------------------------------------------------

    def clone_bdev(self, clone_name: str, esnap_id: str, esnap_size_bytes: int) -> Lvol:
        """spdk_lvol_create_esnap_clone: a thin lvol as large as the external bdev, reading it where it has no
        clusters of its own; the name first (EINVAL, EEXIST), then the size (not a whole number of clusters:
        EINVAL). It takes no cluster."""
        name = self._check_new_name(clone_name)
        if esnap_size_bytes % self.cluster_size:
            raise ModelError(errno.EINVAL, f"size {esnap_size_bytes} is not a multiple of the cluster size")
        lv = self._new_blob(name, esnap_size_bytes // self.cluster_size, True)
        lv.esnap = esnap_id
        return lv

    def set_parent_bdev(self, lvol_name: str, esnap_id: str, esnap_size_bytes: int) -> None:
        """spdk_lvol_set_external_parent then spdk_bs_blob_set_external_parent, their checks in order: the
        lvol's own UUID (EINVAL), a size that is no whole number of clusters (EINVAL), the same external
        snapshot already (EEXIST), not thin (EINVAL), locked (EBUSY). The lvol leaves its parent's clone list
        and reads the bdev; its size need not match (recorded: a 4 MiB bdev under an 8 MiB lvol), and any bdev
        will do, an lvol of this lvstore too (recorded)."""
        lv = self.lookup(lvol_name)
        if esnap_id == lv.uuid:
            raise ModelError(errno.EINVAL, f"{lv.name} and the external snapshot have the same UUID")
        if esnap_size_bytes % self.cluster_size:
            raise ModelError(errno.EINVAL, f"size {esnap_size_bytes} is not a multiple of the cluster size")
        if lv.esnap == esnap_id:
            raise ModelError(errno.EEXIST, f"{esnap_id} already is the external parent of {lv.name}")
        if not lv.thin:
            raise ModelError(errno.EINVAL, f"{lv.name} is not thin provisioned")
        if lv.locked:
            raise ModelError(errno.EBUSY, f"{lv.name}: another operation in progress")
        self._unlink_from_parent(lv)
        lv.esnap = esnap_id

    def hotplug(self, esnap_id: str) -> list[Lvol]:
        """The missing external snapshot `esnap_id` arrived (spdk_lvs_notify_hotplug): its degraded esnap
        clones and everything under them get their bdevs, in the order vbdev_lvs_hotplug makes them (each
        esnap clone, then its clones depth first). [] if none waited for it."""
        if esnap_id not in self.missing_esnaps:
            return []
        self.missing_esnaps.discard(esnap_id)
        roots = [lv.blob_id for lv in self.blobs.values() if lv.esnap == esnap_id and not lv.removed]
        order = depth_first(roots, lambda bid: list(self.blobs[bid].clones))
        return [self.blobs[bid] for bid in order if not self.blobs[bid].removed and not self.is_degraded(
            self.blobs[bid])]

    # ---- writes ---------------------------------------------------------------------------------------------------

    def write(self, name: str, offset: int, length: int) -> None:
        """What writing [offset, offset + length) bytes does to the lvol's clusters: a thin lvol allocates the
        clusters it lacks (ENOSPC when none are free). The harness writes no data; the metadata an lvstore on
        an lvol bdev writes at its start is such a write (a nested lvstore)."""
        lv = self.lookup(name)
        if length <= 0:
            return
        cs = self.cluster_size
        first, last = offset // cs, min(lv.num_clusters, -(-(offset + length) // cs))
        need = (_mask(last) & ~_mask(first)) & ~lv.alloc
        if not need:
            return
        self._take(_popcount(need))
        lv.alloc |= need
        self._claim_extent_pages(lv)

    def set_xattr(self, name: str, xattr_name: str, xattr_value: str) -> None:
        lv = self.lookup(name)
        if lv.read_only:
            raise ModelError(errno.EPERM, f"{lv.name} is read-only")
        lv.xattrs[xattr_name] = xattr_value

    def get_xattr(self, name: str, xattr_name: str) -> str:
        """A blob xattr: user ones, plus lvol.c's `name`, `uuid` and `creation_time`."""
        lv = self.lookup(name)
        if xattr_name not in lv.xattrs:
            raise ModelError(errno.ENOENT, f"{lv.name} has no xattr {xattr_name!r}")
        return lv.xattrs[xattr_name]

    def get_fragmap(self, name: str, offset: int = 0, size: int = 0) -> dict[str, object]:
        """Longhorn's fragmap of [offset, offset + size) (size 0: the lvol's size, even with an offset): a base64
        bit map of num_clusters bits, bit i for cluster offset/cs + i, set where the lvol's own clusters are.

        vbdev_lvol_get_fragmap walks the range with seek_data / seek_hole, and two of SPDK's corners show: the
        walk starts with a seek at `offset`, and a seek at or past the lvol's end is -EINVAL (bdev_seek checks
        one block there), so an offset at the end, a zero-size lvol, or a walk that has to look for data past
        the end fails; a seek_hole that finds no hole (blob_find_io_unit: UINT64_MAX) counts the rest of the
        requested range as data, past the lvol's end too."""
        lv = self.lookup(name)
        cs = self.cluster_size
        total = self.size_bytes(lv)
        if offset + size > total:
            raise ModelError(errno.EINVAL, "offset + size beyond the lvol")
        segment = size or total
        if offset % cs or segment % cs:
            raise ModelError(errno.EINVAL, "offset and size must be multiples of the cluster size")
        n, end = segment // cs, offset + segment
        bits, cur = 0, offset
        while True:
            if cur >= total:
                raise ModelError(errno.EINVAL, f"seek at {cur}: at or past the lvol's end ({total})")
            data = self._next_cluster(lv, cur // cs, allocated=True)
            if data is None or data * cs >= end:
                break
            cur = data * cs
            hole = self._next_cluster(lv, data, allocated=False)
            nxt = end if hole is None else min(hole * cs, end)
            first = (cur - offset) // cs
            bits |= _mask((nxt - cur) // cs) << first
            cur = nxt
            if cur == end:
                break
        data_bytes = bits.to_bytes((n + 7) // 8, "little")
        return {
            "cluster_size": cs,
            "num_clusters": n,
            "num_allocated_clusters": _popcount(bits),
            "fragmap": base64.b64encode(data_bytes).decode(),
        }

    @staticmethod
    def _next_cluster(lv: Lvol, start: int, *, allocated: bool) -> int | None:
        """The first cluster >= start that the lvol owns (or lacks), within its size (blob_find_io_unit)."""
        pool = lv.alloc if allocated else _mask(lv.num_clusters) & ~lv.alloc
        rest = pool >> start
        return None if rest == 0 else start + (rest & -rest).bit_length() - 1

    # ---- busy blobs and background jobs ------------------------------------------------------------------------

    def open_blob(self, name: str) -> None:
        """Hold a blob open and locked, as a checksum or shallow copy in progress does (for a caller that
        tracks such an operation itself): delete, clone, inflate, ... then answer EBUSY."""
        lv = self.lookup(name)
        lv.open_refs += 1
        lv.locks += 1

    def close_blob(self, name: str) -> None:
        """Undo one open_blob()."""
        lv = self.lookup(name)
        lv.open_refs = max(0, lv.open_refs - 1)
        lv.locks = max(0, lv.locks - 1)

    def _start_job(self, kind: str, lv: Lvol, total: int, error: int = 0, min_ticks: int = 0) -> Job:
        if not error and lv.locked:
            error = errno.EBUSY
        job = Job(kind=kind, blob_id=lv.blob_id, total_clusters=total, error=error, min_ticks=min_ticks)
        if not job.done:
            job.holding = True
            lv.open_refs += 1
            lv.locks += 1
            self.jobs.append(job)
        else:
            self._finish(job)
        return job

    def _finish(self, job: Job) -> None:
        lv = self.blobs.get(job.blob_id)
        if job.holding and lv is not None:
            lv.open_refs = max(0, lv.open_refs - 1)
            lv.locks = max(0, lv.locks - 1)
        job.holding = False
        if job.kind == "checksum" and job.error == 0 and lv is not None:
            lv.checksum = self._checksum_of(lv)

    def _checksum_of(self, lv: Lvol) -> int:
        """What bs_snapshot_checksum stores: spdk_crc64_iso_refl chained over the snapshot's own allocated
        clusters, seed 0. The model has no data, i.e. all zeroes (what a harness that does no I/O sees on a
        fresh malloc bdev); the recorded 8 MiB value (13859014760662026744) comes out exactly."""
        return crc64_iso_of_zeroes(lv.num_allocated_clusters * self.cluster_size)

    def tick(self, steps: int = 1) -> None:
        """Advance every background job by `steps` x CLUSTERS_PER_TICK clusters; finished jobs let go."""
        if not self.jobs:
            return
        still: list[Job] = []
        for job in self.jobs:
            job.ticks += steps
            job.copied_clusters = min(job.total_clusters, job.copied_clusters + steps * CLUSTERS_PER_TICK)
            if job.done:
                self._finish(job)
            else:
                still.append(job)
        self.jobs = still

    def register_snapshot_checksum(self, name: str, *, min_ticks: int = 0) -> Job:
        """Start a checksum job; `min_ticks=1` keeps even a snapshot without clusters open until the next
        tick (its metadata write, see Job); 0 (a model without polls) finishes such a job at once."""
        lv = self.lookup(name)
        if not lv.is_snapshot:
            raise ModelError(errno.EPERM, f"{lv.name} is not a snapshot")
        if lv.locked:
            raise ModelError(errno.EBUSY, f"{lv.name}: another operation in progress")
        return self._start_job("checksum", lv, lv.num_allocated_clusters, min_ticks=min_ticks)

    def get_snapshot_checksum(self, name: str) -> int:
        lv = self.lookup(name)
        if lv.checksum is None:
            raise ModelError(errno.ENODEV, f"no checksum registered for {lv.name}")
        return lv.checksum

    def start_shallow_copy(self, src_lvol_name: str, dst_size_bytes: int) -> Job:
        """Copy the lvol's own clusters to a bdev; a failure is reported by the job, as SPDK's status does.

        Unlike a checksum, a copy with no allocated cluster lets go within the RPC: bs_shallow_copy_cluster_find_
        next unlocks and calls spdk_blob_close, whose blob_persist of a clean blob completes synchronously
        (blobstore.c ~7388, ~9366, ~2601); with clusters, the first read keeps it open past the poll."""
        lv = self.lookup(src_lvol_name)
        total = lv.num_allocated_clusters  # the RPC's status counts these before the copy even starts
        if not lv.read_only:
            return self._start_job("shallow_copy", lv, total, error=errno.EPERM)
        if dst_size_bytes < self.size_bytes(lv):
            return self._start_job("shallow_copy", lv, total, error=errno.EINVAL)
        return self._start_job("shallow_copy", lv, total)

    # ---- the store -----------------------------------------------------------------------------------------------

    def destroy(self) -> None:
        """bdev_lvol_delete_lvstore (_vbdev_lvs_remove_lvol_cb): delete an lvol without clones, again and again
        until none is left. A busy one goes too: the blob delete fails and the lvol is removed regardless (with
        `forced-removal` its blob then stays behind). If lvols remain and none is deletable - a forced removal
        left a blob in some lvol's clone list - the debug build hits `assert(false)`: ModelCrash("abort")."""
        for _ in range(len(self.blobs) + 1):
            live = [lv for lv in self.blobs.values() if not lv.removed]
            if not live:
                return
            victim = next((lv for lv in live if not lv.clones), None)
            if victim is None:
                raise ModelCrash("abort", "lvs-remove-assert")
            if victim.busy and FORCED_REMOVAL in self.faults:
                self._forget(victim)
                victim.removed = True
                continue
            self._unlink_from_parent(victim)
            self._give(victim.num_allocated_clusters)
            self._delete_blob(victim)
        raise AssertionError("destroy did not converge")  # unreachable: each round removes one lvol

    def reload(self, esnap_present: Callable[[str], bool] | None = None) -> list[Lvol]:
        """The lvstore was unloaded (its base bdev hot-removed) and loaded again from the disk: what is on disk
        stays (blobs, names, links, clusters, xattrs, read-only flags, stored checksums, external snapshot
        ids); what lived in memory goes (background jobs, open references). A blob a forced removal left
        without an lvol is on disk too: the load makes it an lvol again, under its name unless another lvol
        has taken that name since. "Is a snapshot" is rebuilt from the clone links (bs_blob_list_add at load):
        a snapshot whose clones are all gone is not one any more (seen on spdk_tgt 24.09, lvstore-reload
        storm). Lvols are listed in blob id order from now on, each alias from its (255-character) name.

        `esnap_present` says whether an external snapshot's bdev exists now (None: every one does); the
        esnap clones of a missing one, and what is under them, load degraded. Returns the lvols that get a bdev,
        in the order the examine registers them (`load_order`)."""
        self.jobs = []
        self._replace(self, "blobs", dict(sorted(self.blobs.items())))
        self._replace(self, "_by_alias", {})
        for lv in self.blobs.values():
            self._seq += 1
            self._replace(lv, "seq", self._seq)
            lv.open_refs = lv.locks = 0
            lv.is_snapshot = bool(lv.clones)
            if lv.removed and lv.name not in self._by_name and lv.uuid not in self._by_uuid:
                lv.removed = False
                self._put(self._by_name, lv.name, lv.blob_id)
                self._put(self._by_uuid, lv.uuid, lv.blob_id)
            if not lv.removed:
                lv.alias_tail = lv.name
                self._by_alias[lv.name] = lv.blob_id
        self.missing_esnaps = {lv.esnap for lv in self.blobs.values()
                               if lv.esnap is not None and esnap_present is not None and not esnap_present(lv.esnap)}
        live = [lv for lv in self.blobs.values() if not lv.removed]
        openings = {lv.blob_id: Opening(lv.blob_id, bool(lv.extent_pages), lv.parent) for lv in self.blobs.values()}
        order = load_order([openings[lv.blob_id] for lv in live], openings.get)
        return [self.blobs[bid] for bid in order if not self.is_degraded(self.blobs[bid])]

    def grow(self, total_data_clusters: int) -> None:
        """The base bdev grew: new clusters are free."""
        if total_data_clusters > self.total_data_clusters:
            self._free += total_data_clusters - self.total_data_clusters
            self.total_data_clusters = total_data_clusters

    def check_invariants(self) -> list[str]:
        """Problems a correct target never shows: leaked clusters, orphans, broken parent/child links."""
        problems: list[str] = []
        used = 0
        for lv in self.blobs.values():
            used += lv.num_allocated_clusters
            if lv.alloc >> lv.num_clusters:
                problems.append(f"{lv.name}: owns clusters beyond its size")
            if not lv.thin and lv.alloc != _mask(lv.num_clusters):
                problems.append(f"{lv.name}: thick but only {lv.num_allocated_clusters}/{lv.num_clusters} allocated")
            if lv.removed:
                problems.append(
                    f"orphan blob {lv.blob_id:#x} (was lvol {lv.name}, {lv.uuid}): no lvol, "
                    f"{lv.num_allocated_clusters} clusters leaked, {len(lv.clones)} clones"
                )
            else:
                if (
                    self._by_name.get(lv.name) != lv.blob_id
                    or self._by_uuid.get(lv.uuid) != lv.blob_id
                    or self._by_alias.get(lv.alias_tail) != lv.blob_id
                ):
                    problems.append(f"{lv.name}: name/uuid index out of date")
            if lv.parent is not None:
                parent = self.blobs.get(lv.parent)
                if parent is None:
                    problems.append(f"{lv.name}: parent blob {lv.parent:#x} does not exist")
                elif lv.blob_id not in parent.clones:
                    problems.append(f"{lv.name}: missing from its parent {parent.name}'s clone list")
            for c in lv.clones:
                child = self.blobs.get(c)
                if child is None:
                    problems.append(f"{lv.name}: clone list names missing blob {c:#x}")
                elif child.parent != lv.blob_id:
                    problems.append(f"{lv.name}: clone {child.name} points at another parent")
        if self._free < 0 or self._free > self.total_data_clusters:
            problems.append(f"free_clusters {self._free} outside 0..{self.total_data_clusters}")
        if used + self._free != self.total_data_clusters:
            problems.append(
                f"cluster accounting: {used} owned + {self._free} free != {self.total_data_clusters} total "
                f"({self.total_data_clusters - used - self._free} leaked)"
            )
        return problems

    # ---- for a checker that mirrors a real target -------------------------------------------------------------

    def adopt_lvol(self, name: str, num_clusters: int, thin: bool, allocated: int, is_snapshot: bool) -> Lvol:
        """Add an lvol as a target's listing shows it (a resync), its uuid from the factory; free clusters are
        set separately (set_free_clusters), from the same listing."""
        lv = self._new_blob(name, num_clusters, thin)
        lv.alloc = _mask(allocated)
        lv.is_snapshot = is_snapshot
        lv.read_only = is_snapshot
        return lv

    def adopt_link(self, child: Lvol, parent: Lvol) -> None:
        """child is a clone of parent, as the target's listing says."""
        self._link_to_parent(child, parent)

    def set_free_clusters(self, free: int) -> None:
        self._free = free

    @contextmanager
    def space_unjudged(self) -> Iterator[None]:
        """Allocations cannot fail inside: for judging overlapping operations whose share of the last free
        clusters depends on an order the model cannot see."""
        bump = self.total_data_clusters * 4
        self._free += bump
        try:
            yield
        finally:
            self._free -= bump

    def drop_lvol(self, lv: Lvol) -> None:
        """The target removed lv's lvol but (as far as we know) not its blob: what a forced removal does."""
        self._forget(lv)
        lv.removed = True

    def tree_of(self, ref: str) -> list[Lvol]:
        """Every blob in the snapshot tree holding `ref` (root first, removed blobs included); [] if unknown."""
        lv = self.find(ref)
        return [] if lv is None else self._tree(lv)

    def _tree(self, lv: Lvol) -> list[Lvol]:
        out, todo, seen = [], [self.esnap_root(lv)], set()
        while todo:
            node = todo.pop()
            if node.blob_id in seen:
                continue
            seen.add(node.blob_id)
            out.append(node)
            todo.extend(self.blobs[c] for c in node.clones if c in self.blobs)
        return out

    def md_pages_estimate(self) -> tuple[int, int]:
        """(pages in use, pages in all) of the blobstore's metadata, estimated: the super blob, one page per blob
        and the extent pages of its allocated range. Creating a blob when none is free answers ENOMEM
        (bs_create_blob); xattrs that overflow a page are not counted, so `in use` is a lower bound."""
        used = 1
        for lv in self.blobs.values():
            used += 1 + (-(-lv.alloc.bit_length() // EXTENTS_PER_PAGE))
        return used, self.total_data_clusters * MD_PAGES_PER_CLUSTER_RATIO // 100
