"""Base bdevs as spdk_tgt's malloc and aio modules serve them, and bdev_get_bdevs.

Deleting an aio bdev unloads the lvstore on it (hot remove) and keeps what its file holds; making an aio bdev
on that file again loads it (vbdev_lvs_examine).
"""

from __future__ import annotations

import errno
import os

from harness.rpc_rules.table import BY_METHOD
from harness.sim.bdevs import BaseBdev
from harness.sim.decoding import BOOL, STR, U32, U64, decode, decode_for
from harness.sim.protocol import ERROR_INVALID_PARAMS, RpcFault
from harness.sim.protocol import fault as _fault  # the handlers below were moved here verbatim
from harness.sim.protocol import no_device as _no_device
from harness.sim.shapes import base_bdev_json, lvol_bdev_json
from harness.sim.state import TargetState
from harness.spdk_memory import MALLOC_ENOMEM_LOG, SPDK_BASE_MIB, malloc_cost_mib


class BdevMethods(TargetState):
    """bdev_malloc_*, bdev_aio_*, bdev_wait_for_examine and bdev_get_bdevs."""

    def _m_bdev_malloc_create(self, params: object) -> object:
        p = decode(params, (
            ("name", STR, False), ("uuid", STR, False), ("num_blocks", U64, True), ("block_size", U32, True),
            ("physical_block_size", U32, False), ("optimal_io_boundary", U32, False), ("md_size", U32, False),
            ("md_interleave", BOOL, False), ("dif_type", U32, False), ("dif_is_head_of_md", BOOL, False),
            ("dif_pi_format", U32, False),
        ))  # fmt: skip
        block_size, num_blocks = int(p["block_size"]), int(p["num_blocks"])  # type: ignore[call-overload]
        if num_blocks == 0 or block_size == 0 or block_size % 512:
            raise _fault(errno.EINVAL)  # create_malloc_disk
        name = p["name"] if p["name"] is not None else f"Malloc{self._malloc_count}"
        assert isinstance(name, str)
        if not name or self._name_taken(name):
            raise _fault(errno.EEXIST)
        cost = malloc_cost_mib(block_size * num_blocks)
        if self.memory_mib is not None and \
                SPDK_BASE_MIB + sum(self._malloc_mib.values()) + cost > self.memory_mib:
            self._log.append(MALLOC_ENOMEM_LOG)  # spdk_zmalloc found no hugepages for the buffer
            raise _fault(errno.ENOMEM)
        self._malloc_count += 1
        uuid = str(p["uuid"]) if p["uuid"] is not None else self._new_uuid()
        self.bdevs[name] = BaseBdev(name=name, uuid=uuid, driver="malloc", block_size=block_size,
                                    num_blocks=num_blocks, creation_time=self._now())
        self._malloc_mib[name] = cost
        return name

    def _delete_base(self, name: str, driver: str) -> object:
        bdev = self.bdevs.get(name)
        if bdev is None or bdev.driver != driver:
            self._log.append(f"bdev.c:8278:bdev_open_ext: *NOTICE*: Currently unable to find bdev with name: {name}")
            self._log.append(
                f"bdev.c:8095:spdk_bdev_unregister_by_name: *ERROR*: Failed to open bdev with name: {name}"
            )
            raise _no_device()
        if bdev.lvs_uuid is not None and bdev.lvs_uuid in self.stores:
            store = self.stores[bdev.lvs_uuid]
            if driver == "aio" and bdev.filename is not None:
                # The lvstore stays on the file: an aio bdev made on it again examines and loads it.
                self._on_disk[bdev.filename] = (store, self._layouts[store.uuid])
            self._drop_store(store)  # hot remove: the lvstore is unloaded
        del self.bdevs[name]
        self._malloc_mib.pop(name, None)
        return True

    def _examine(self, bdev: BaseBdev) -> None:
        """vbdev_lvs_examine: a bdev holding an lvstore (one this target unloaded from the same file) loads it."""
        if bdev.filename is None or bdev.filename not in self._on_disk:
            return
        store, layout = self._on_disk[bdev.filename]
        if store.uuid in self.stores or self._store_by_name(store.name) is not None:
            return  # spdk_lvs_load refuses a duplicate lvstore (same uuid or name): the bdev stays unclaimed
        del self._on_disk[bdev.filename]
        store.base_bdev = bdev.name
        store.reload()
        self.stores[store.uuid] = store
        self._layouts[store.uuid] = layout
        bdev.lvs_uuid = store.uuid

    def _m_bdev_malloc_delete(self, params: object) -> object:
        p = decode(params, (("name", STR, True),))
        return self._delete_base(str(p["name"]), "malloc")

    def _m_bdev_aio_create(self, params: object) -> object:
        p = decode(params, (
            ("filename", STR, True), ("name", STR, True), ("block_size", U32, False), ("readonly", BOOL, False),
            ("fallocate", BOOL, False),
        ))  # fmt: skip
        name, filename = str(p["name"]), str(p["filename"])
        block_size = int(p["block_size"] or 512)  # type: ignore[call-overload]
        if self._name_taken(name):
            raise _fault(errno.EEXIST)
        if block_size % 512:
            raise _fault(errno.EINVAL)
        try:
            size = os.stat(filename).st_size
        except OSError as exc:
            raise _fault(exc.errno or errno.ENOENT) from None
        self.bdevs[name] = BaseBdev(name=name, uuid=self._new_uuid(), driver="aio", block_size=block_size,
                                    num_blocks=size // block_size, filename=filename, creation_time=self._now(),
                                    block_size_override=p["block_size"] is not None)
        self._examine(self.bdevs[name])
        return name

    def _m_bdev_wait_for_examine(self, params: object) -> object:
        if params is not None:  # rpc_bdev_wait_for_examine
            raise RpcFault(ERROR_INVALID_PARAMS, "bdev_wait_for_examine requires no parameters")
        return True  # examine runs inside bdev_aio_create here

    def _m_bdev_aio_rescan(self, params: object) -> object:
        p = decode(params, (("name", STR, True),))
        bdev = self.bdevs.get(str(p["name"]))
        if bdev is None or bdev.driver != "aio" or bdev.filename is None:
            raise _no_device()
        try:
            bdev.num_blocks = os.stat(bdev.filename).st_size // bdev.block_size
        except OSError as exc:
            raise _fault(exc.errno or errno.EIO) from None
        return True

    def _m_bdev_aio_delete(self, params: object) -> object:
        p = decode(params, (("name", STR, True),))
        return self._delete_base(str(p["name"]), "aio")

    def _m_bdev_get_bdevs(self, params: object) -> object:
        name = None
        if params is not None:
            name = decode_for(BY_METHOD["bdev_get_bdevs"], params)["name"]
        if name is None:
            out: list[object] = [base_bdev_json(b) for b in self.bdevs.values()]
            for store in self.stores.values():
                out.extend(lvol_bdev_json(store, lv, self._log) for lv in store.lvols())
            return out
        if name in self.bdevs:
            return [base_bdev_json(self.bdevs[str(name)])]
        store_lv = self._find_lvol(str(name))
        if store_lv is None:
            raise _no_device()  # with a timeout SPDK would wait for the bdev first; nothing appears here later
        return [lvol_bdev_json(*store_lv, self._log)]
