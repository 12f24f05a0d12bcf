"""What one reference target holds, and how SPDK finds things in it by name.

Base bdevs, lvstores (`harness.model.LvolStore`, by UUID in creation order), the blobstore layouts, lvstores
unloaded from an aio file, shallow copy statuses and the log lines of the current call; the lookups SPDK's RPC
handlers make (spdk_bdev_get_by_name, vbdev_get_lvol_store_by_uuid_xor_name, ...) with their refusals; and
running a model operation so that a refusal becomes SPDK's error reply and a crash kills the target. The
handler families (framework_methods, bdev_methods, lvstore_methods, lvol_methods) are written on top of it.
"""

from __future__ import annotations

import errno
import random
import time
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from harness.model.lvstore import MODEL_FAULTS, NAME_MAX, Job, Lvol, LvolStore, ModelCrash, ModelError
from harness.sim import death
from harness.sim import faults as fm
from harness.sim.bdevs import BaseBdev, BlobstoreLayout
from harness.sim.protocol import ERROR_INVALID_PARAMS, SimulatedCrash, fault, no_device

LVS_NAME_MAX = 255


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
        """Lvstores unloaded from an aio file, by file name: what the file still holds."""
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
        """spdk_bdev_get_by_name + vbdev_lvol_get_from_bdev: an lvol by its bdev name (UUID) or alias."""
        if name is None or name in self.bdevs:
            return None
        for store in self.stores.values():
            lv = store.find_by_uuid(name)
            if lv is not None:
                return store, lv
        for i, ch in enumerate(name):
            if ch == "/":
                named = self._store_by_name(name[:i])
                if named is not None:
                    lv = named.find_by_alias_tail(name[i + 1 :])
                    if lv is not None:
                        return named, lv
        return None

    def _lvol(self, name: object) -> tuple[LvolStore, Lvol]:
        found = self._find_lvol(name if isinstance(name, str) else None)
        if found is None:
            raise no_device()
        return found

    def _copy_target(self, name: str) -> bool:
        """A shallow copy in progress claims its destination (vbdev_lvol_shallow_copy's spdk_bs_bdev_claim)."""
        return any(cp.dst == name and not cp.job.done for cp in self._copies.values())

    def _bdev_size(self, name: str) -> int | None:
        if name in self.bdevs:
            return self.bdevs[name].size_bytes
        found = self._find_lvol(name)
        return None if found is None else found[0].size_bytes(found[1])

    def _name_taken(self, name: str) -> bool:
        return name in self.bdevs or self._find_lvol(name) is not None

    def _check_alias_free(self, store: LvolStore, name: object) -> None:
        """A new lvol's bdev alias `lvs/name` must not be another bdev's name (spdk_bdev_register: EEXIST,
        reported by the create callback). Names the model refuses anyway are left to it."""
        if (isinstance(name, str) and 0 < len(name) <= NAME_MAX and store.find_by_name(name) is None
                and f"{store.name}/{name}" in self.bdevs):
            raise fault(errno.EEXIST, ERROR_INVALID_PARAMS)

    def _new_store(self, name: str, uuid: str, bdev: BaseBdev, total: int, cluster_sz: int) -> LvolStore:
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
        for cp in self._copies.values():
            if cp.store is store and not cp.job.done:
                cp.job.error = errno.ECANCELED
