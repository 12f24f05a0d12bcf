"""What one reference target holds, and how SPDK finds things in it by name.

Base bdevs, lvstores (`harness.model.LvolStore`, by UUID in creation order), the blobstore layouts, lvstores
unloaded from an aio file (or from an lvol, a nested lvstore), shallow copy statuses and the log lines of the
current call; the lookups SPDK's RPC handlers make (spdk_bdev_get_by_name, vbdev_get_lvol_store_by_uuid_xor_name,
...) with their refusals; the claims on bdevs (an lvstore's base, a shallow copy's destination: read_many_write_one;
an external snapshot esnap clones read: read_many_write_none); the order bdevs registered in (bdev_get_bdevs
lists them so); and running a model operation so that a refusal becomes SPDK's error reply and a crash kills the
target. The handler families (framework_methods, bdev_methods, lvstore_methods, lvol_methods) are written on top.
"""

from __future__ import annotations

import errno
import itertools
import random
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from harness.model.lvstore import MODEL_FAULTS, NAME_MAX, Job, Lvol, LvolStore, ModelCrash, ModelError
from harness.sim import death
from harness.sim import faults as fm
from harness.sim.bdevs import BaseBdev, BlobstoreLayout
from harness.sim.protocol import ERROR_INVALID_PARAMS, SimulatedCrash, fault, no_device

LVS_NAME_MAX = 255
CLAIM_WRITER = "read_many_write_one"
"""spdk_bs_bdev_claim of a writable bs_dev: an lvstore's base bdev, a shallow copy's destination (recorded)."""
CLAIM_READER = "read_many_write_none"
"""spdk_bs_bdev_claim of a read-only bs_dev: the external snapshot of esnap clones (recorded)."""


@dataclass(frozen=True, slots=True)
class BdevRef:
    """Any bdev as spdk_bdev_get_by_name finds it: a base bdev, or an lvol (its store and blob)."""

    name: str
    uuid: str
    size_bytes: int
    block_size: int
    base: BaseBdev | None = None
    store: LvolStore | None = None
    lvol: Lvol | None = None


@dataclass(eq=False)
class ShallowCopy:
    """A shallow copy's status entry; while its job runs it claims the destination bdev."""

    store: LvolStore
    job: Job
    dst: str


class TargetState:
    """One reference target's state (see the module docstring)."""

    def __init__(self, faults: frozenset[str] = frozenset(), seed: int | None = None,
                 memory_mib: int | None = None) -> None:
        self.faults = frozenset(faults)
        self.memory_mib = memory_mib
        """Hugepage memory this target may use (`-s`: what the harness reserved for it), SPDK's own share
        included; None: unlimited. spdk_tgt can grow into any free hugepage, this target only into this."""
        self._malloc_mib: dict[str, int] = {}
        """Hugepage MiB each malloc bdev holds (spdk_memory.malloc_cost_mib)."""
        self._rng = random.Random(seed) if seed is not None else None
        self._tick_per_call = True
        """Until a server calls start_poll(): every call is its own poll (the in-process conformance replay)."""
        self.defer_checksum_replies = False
        """Answer a checksum when its job is done, as spdk_tgt does (`--defer-checksum-replies`)."""
        self.bdevs: dict[str, BaseBdev] = {}
        self.stores: dict[str, LvolStore] = {}  # by lvstore uuid, in creation order
        self._layouts: dict[str, BlobstoreLayout] = {}
        self._on_disk: dict[str, tuple[LvolStore, BlobstoreLayout]] = {}
        """Lvstores unloaded from an aio file (by file name) or from an lvol (by `lvol:<uuid>`): what it holds."""
        self._nested: dict[str, str] = {}
        """Lvol UUID -> the UUID of the lvstore on that lvol's bdev (which claims it)."""
        self._registered: dict[str, int] = {}
        """Bdev name -> when it registered: bdev_get_bdevs lists bdevs in registration order."""
        self._reg_clock = itertools.count()
        self._copies: dict[int, ShallowCopy] = {}
        self._copy_count = 0
        self._malloc_count = 0
        self._log: list[str] = []
        self.dead: SimulatedCrash | None = None

    def _die(self, crash: SimulatedCrash) -> NoReturn:
        """The target dies here and stays dead: later calls raise the same crash."""
        self.dead = crash
        raise crash

    def _new_uuid(self) -> str:
        if self._rng is None:
            return str(uuid_mod.uuid4())
        return str(uuid_mod.UUID(int=self._rng.getrandbits(128), version=4))

    @staticmethod
    def _now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _model_call(self, fn: Callable[[], object], code: int | None, sync: frozenset[int] = frozenset()) -> object:
        """Run a model operation; a refusal becomes SPDK's reply (`-errno` for `sync` errnos, else `code`)."""
        try:
            return fn()
        except (ModelError, ModelCrash) as exc:
            self._model_failed(exc, code, sync)

    def _model_failed(self, exc: ModelError | ModelCrash, code: int | None, sync: frozenset[int]) -> NoReturn:
        """A model refusal as SPDK's error reply (with the log lines a forced removal prints), or the death a
        model crash means."""
        if isinstance(exc, ModelCrash):
            self._die(self._crash_for(exc))
        if exc.forced_removal:
            # bs_is_blob_deletable's line only when the blob itself was open; the other two always.
            lines = fm.FORCED_REMOVAL_LOG_LINES
            self._log.extend(lines if exc.cause == "open" else lines[1:])
        raise fault(exc.errno, None if (code is None or exc.errno in sync) else code) from None

    @staticmethod
    def _crash_for(exc: ModelCrash) -> SimulatedCrash:
        if exc.kind == "segv":
            # The forced removal's log lines were written when it happened; SPDK adds none before a SIGSEGV. The
            # sim adds one line of its own naming the SPDK function it models (its real fault is in libc).
            site = death.modelled_site_line("SIGSEGV", exc.detail)
            return SimulatedCrash(kind="segv", address=exc.address or fm.SEGV_ADDRESS, thread_name=fm.SEGV_THREAD,
                                  log_lines=[site] if site else [])
        if exc.detail == "lvs-remove-assert":
            return SimulatedCrash(kind="abort", stderr_text=fm.LVS_REMOVE_STDERR, log_lines=[fm.LVS_REMOVE_LOG_LINE])
        text = fm.ABORT_MALLOC_STDERR if exc.detail == fm.ABORT_MALLOC else fm.ABORT_ASSERT_STDERR
        return SimulatedCrash(kind="abort", stderr_text=text)

    def _store_by_name(self, name: str) -> LvolStore | None:
        for store in self.stores.values():
            if store.name == name:
                return store
        return None

    def _store_xor(self, uuid: object, name: object) -> LvolStore:
        """vbdev_get_lvol_store_by_uuid_xor_name: none or both -> -EINVAL, not found -> -ENODEV."""
        if (uuid is None) == (name is None):
            raise fault(errno.EINVAL)
        store = self.stores.get(str(uuid)) if uuid is not None else self._store_by_name(str(name))
        if store is None:
            raise no_device()
        return store

    def _find_lvol(self, name: str | None) -> tuple[LvolStore, Lvol] | None:
        """spdk_bdev_get_by_name + vbdev_lvol_get_from_bdev: an lvol by its bdev name (UUID) or alias. A
        degraded lvol has no bdev: not found."""
        if name is None or name in self.bdevs:
            return None
        for store in self.stores.values():
            lv = store.find_by_uuid(name)
            if lv is not None:
                return None if store.missing_esnaps and store.is_degraded(lv) else (store, lv)
        for i, ch in enumerate(name):
            if ch == "/":
                named = self._store_by_name(name[:i])
                if named is not None:
                    lv = named.find_by_alias_tail(name[i + 1 :])
                    if lv is not None and not (named.missing_esnaps and named.is_degraded(lv)):
                        return named, lv
        return None

    def _base_named(self, name: str, *, deleting: bool = False) -> BaseBdev | None:
        """A malloc or aio bdev by its name or its alias (the UUID); one being deleted only if `deleting`."""
        bdev = self.bdevs.get(name)
        if bdev is None:
            bdev = next((b for b in self.bdevs.values() if b.uuid == name), None)
        if bdev is None or (bdev.deleting and not deleting):
            return None
        return bdev

    def _bdev_ref(self, name: str, *, deleting: bool = False) -> BdevRef | None:
        """Any bdev by name or alias: a base bdev or an lvol's."""
        base = self._base_named(name, deleting=deleting)
        if base is not None:
            return BdevRef(base.name, base.uuid, base.size_bytes, base.block_size, base=base)
        found = self._find_lvol(name)
        if found is None:
            return None
        store, lv = found
        return BdevRef(lv.uuid, lv.uuid, store.size_bytes(lv), store.block_size, store=store, lvol=lv)

    def _esnap_holders(self) -> dict[str, int]:
        """External snapshot UUID -> how many blobs of all lvstores read it."""
        held: dict[str, int] = {}
        for store in self.stores.values():
            for uuid, n in store.esnaps_held().items():
                held[uuid] = held.get(uuid, 0) + n
        return held

    def _claim(self, name: str, uuid: str, holders: dict[str, int] | None = None) -> str | None:
        """The claim on a bdev (`bdev_get_bdevs`' claim_type), None when unclaimed."""
        base = self.bdevs.get(name)
        if (base is not None and base.lvs_uuid is not None) or name in self._nested or self._copy_target(name):
            return CLAIM_WRITER
        held = self._esnap_holders() if holders is None else holders
        return CLAIM_READER if held.get(uuid) else None

    def _memory_domains(self, store: LvolStore, lv: Lvol | None = None, depth: int = 0) -> int:
        """Memory domains an lvol reports (vbdev_lvol_get_memory_domains): its lvstore's base bdev's, plus its
        external snapshot's when it reads one. `lv` None: the base bdev's alone."""
        count = 0
        ref = self._bdev_ref(store.base_bdev, deleting=True) if depth < 8 else None
        if ref is not None:
            count = ref.base.memory_domains if ref.base is not None else \
                self._memory_domains(ref.store, ref.lvol, depth + 1)  # type: ignore[arg-type]
        if lv is not None and lv.esnap is not None and depth < 8:
            esnap = self._bdev_ref(lv.esnap, deleting=True)
            if esnap is not None:
                count += esnap.base.memory_domains if esnap.base is not None else \
                    self._memory_domains(esnap.store, esnap.lvol, depth + 1)  # type: ignore[arg-type]
        return count

    def _register(self, names: Iterable[str]) -> None:
        """Bdevs registered now, in this order (spdk_bdev_register). Each is examined: it may hold an lvstore
        this target unloaded from it (vbdev_lvs_examine_disk), or be an external snapshot some lvstore misses
        (vbdev_lvs_examine_config -> spdk_lvs_notify_hotplug)."""
        for name in list(names):
            self._registered[name] = next(self._reg_clock)
            ref = self._bdev_ref(name)
            if ref is None:
                continue
            key = ref.base.filename if ref.base is not None else f"lvol:{ref.uuid}"
            if key is not None and key in self._on_disk:
                self._examine(key, ref)
            if any(store.missing_esnaps for store in self.stores.values()):
                self._hotplug(ref.uuid)

    def _examine(self, key: str, ref: BdevRef) -> None:
        """vbdev_lvs_examine: a bdev holding an lvstore (one this target unloaded from the same file or lvol)
        loads it; its esnap clones whose external snapshot is missing load degraded, and its lvols register
        in the order their opens complete."""
        store, layout = self._on_disk[key]
        if store.uuid in self.stores or self._store_by_name(store.name) is not None:
            return  # spdk_lvs_load refuses a duplicate lvstore (same uuid or name): the bdev stays unclaimed
        del self._on_disk[key]
        store.base_bdev = ref.name
        holders = {b.uuid for b in self.bdevs.values() if not b.deleting}
        opened = store.reload(lambda esnap: esnap in holders or self._find_lvol(esnap) is not None)
        self.stores[store.uuid] = store
        self._layouts[store.uuid] = layout
        if ref.base is not None:
            ref.base.lvs_uuid = store.uuid
        else:
            self._nested[ref.uuid] = store.uuid
        self._register(lv.uuid for lv in opened)

    def _hotplug(self, uuid: str) -> None:
        for store in list(self.stores.values()):
            if uuid in store.missing_esnaps:
                self._register(lv.uuid for lv in store.hotplug(uuid))

    def _settle_bdevs(self) -> None:
        """After a change to lvols: a bdev being deleted that no esnap clone holds any more goes; an lvstore
        on an lvol that is gone (deleted, or unloaded with its own lvstore) is unloaded."""
        if any(b.deleting for b in self.bdevs.values()):
            holders = self._esnap_holders()
            for bdev in [b for b in self.bdevs.values() if b.deleting and not holders.get(b.uuid)]:
                self._remove_base(bdev)
        for lvol_uuid, lvs_uuid in list(self._nested.items()):
            if self._find_lvol(lvol_uuid) is None and lvs_uuid in self.stores:
                self._unload(self.stores[lvs_uuid], keep=f"lvol:{lvol_uuid}")

    def _remove_base(self, bdev: BaseBdev) -> None:
        del self.bdevs[bdev.name]
        self._malloc_mib.pop(bdev.name, None)
        self._registered.pop(bdev.name, None)

    def _unload(self, store: LvolStore, keep: str | None) -> None:
        """Hot remove of the lvstore's base bdev: the lvstore is unloaded; `keep`: where what it holds stays
        (an aio file, an lvol that may load again), None when it is gone with its base (a malloc bdev, a
        deleted lvol)."""
        if keep is not None and (not keep.startswith("lvol:") or self._lvol_survives(keep)):
            self._on_disk[keep] = (store, self._layouts[store.uuid])
        self._drop_store(store)
        self._settle_bdevs()

    def _lvol_survives(self, key: str) -> bool:
        """An lvol that went with its lvstore's unload (not deleted) comes back when that lvstore loads."""
        uuid = key.removeprefix("lvol:")
        return any(store.find_by_uuid(uuid) is not None for store in self.stores.values()) or \
            any(st.find_by_uuid(uuid) is not None for st, _ in self._on_disk.values())

    def _listed_bdevs(self) -> list[tuple[str, BaseBdev | None, LvolStore | None, Lvol | None]]:
        """Every bdev (base bdevs, lvols with bdevs) in registration order; forgets what went."""
        items: list[tuple[int, str, BaseBdev | None, LvolStore | None, Lvol | None]] = []
        seen: set[str] = set()
        for bdev in self.bdevs.values():
            if not bdev.deleting:
                items.append((self._registered.get(bdev.name, -1), bdev.name, bdev, None, None))
                seen.add(bdev.name)
        for store in self.stores.values():
            degraded = bool(store.missing_esnaps)
            for lv in store.lvols():
                if degraded and store.is_degraded(lv):
                    continue
                items.append((self._registered.get(lv.uuid, 1 << 62), lv.uuid, None, store, lv))
                seen.add(lv.uuid)
        for name in [n for n in self._registered if n not in seen]:
            del self._registered[name]
        items.sort(key=lambda item: item[0])
        return [(name, base, store, lv) for _, name, base, store, lv in items]

    def _lvol(self, name: object) -> tuple[LvolStore, Lvol]:
        found = self._find_lvol(name if isinstance(name, str) else None)
        if found is None:
            raise no_device()
        return found

    def _copy_target(self, name: str) -> bool:
        """A shallow copy in progress claims its destination (vbdev_lvol_shallow_copy's spdk_bs_bdev_claim)."""
        return any(cp.dst == name and not cp.job.done for cp in self._copies.values())

    def _bdev_size(self, name: str) -> int | None:
        ref = self._bdev_ref(name)
        return None if ref is None else ref.size_bytes

    def _name_taken(self, name: str) -> bool:
        return self._bdev_ref(name, deleting=True) is not None

    def _check_alias_free(self, store: LvolStore, name: object) -> None:
        """A new lvol's bdev alias `lvs/name` must not be another bdev's name (spdk_bdev_register: EEXIST,
        reported by the create callback). Names the model refuses anyway are left to it."""
        if (isinstance(name, str) and 0 < len(name) <= NAME_MAX and store.find_by_name(name) is None
                and f"{store.name}/{name}" in self.bdevs):
            raise fault(errno.EEXIST, ERROR_INVALID_PARAMS)

    def _new_store(self, name: str, uuid: str, bdev: BdevRef, total: int, cluster_sz: int) -> LvolStore:
        return LvolStore(
            name=name,
            uuid=uuid,
            base_bdev=bdev.name,
            total_data_clusters=total,
            cluster_size=cluster_sz,
            block_size=bdev.block_size,
            faults=self.faults & MODEL_FAULTS,
            uuid_factory=self._new_uuid,
            clock=self._now,
        )

    def _drop_store(self, store: LvolStore) -> None:
        del self.stores[store.uuid]
        self._layouts.pop(store.uuid, None)
        bdev = self.bdevs.get(store.base_bdev)
        if bdev is not None and bdev.lvs_uuid == store.uuid:
            bdev.lvs_uuid = None
        if self._nested.get(store.base_bdev) == store.uuid:
            del self._nested[store.base_bdev]
        for lvol_uuid, lvs_uuid in list(self._nested.items()):  # lvstores on its lvols go with it
            if lvs_uuid in self.stores and store.find_by_uuid(lvol_uuid) is not None:
                self._unload(self.stores[lvs_uuid], keep=f"lvol:{lvol_uuid}")
        for cp in self._copies.values():
            if cp.store is store and not cp.job.done:
                cp.job.error = errno.ECANCELED
