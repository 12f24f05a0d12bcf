"""Base bdevs as spdk_tgt's malloc and aio modules serve them, and bdev_get_bdevs.

Deleting an aio bdev unloads the lvstore on it (hot remove) and keeps what its file holds; making an aio bdev
on that file again loads it (vbdev_lvs_examine). Deleting a bdev esnap clones read takes it out of every listing
at once and answers only when the last of them lets it go (a DeferredReply; recorded); a bdev that registers
with the UUID a loaded lvstore's degraded esnap clones miss brings them back (hotplug).
"""

from __future__ import annotations

import errno
import os

from harness.model.lvstore import Lvol, LvolStore
from harness.rpc_rules.table import BY_METHOD
from harness.sim.bdevs import BaseBdev
from harness.sim.decoding import BOOL, STR, U32, U64, decode, decode_for
from harness.sim.json_writer import PlainList
from harness.sim.protocol import ERROR_INVALID_PARAMS, DeferredReply, RpcFault
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
        if p["uuid"] is not None and any(b.uuid == p["uuid"] for b in self.bdevs.values()):
            raise _fault(errno.EEXIST)  # bdev_register: its UUID alias is taken (a bdev still being deleted too)
        self._malloc_count += 1
        uuid = str(p["uuid"]) if p["uuid"] is not None else self._new_uuid()
        self.bdevs[name] = BaseBdev(name=name, uuid=uuid, driver="malloc", block_size=block_size,
                                    num_blocks=num_blocks, creation_time="")  # malloc bdevs report ""
        self._malloc_mib[name] = cost
        self._register([name])
        return name

    def _delete_base(self, name: str, driver: str) -> object:
        bdev = self.bdevs.get(name)
        if bdev is None or bdev.driver != driver or bdev.deleting:
            self._log.append(f"bdev.c:8278:bdev_open_ext: *NOTICE*: Currently unable to find bdev with name: {name}")
            self._log.append(
                f"bdev.c:8095:spdk_bdev_unregister_by_name: *ERROR*: Failed to open bdev with name: {name}"
            )
            raise _no_device()
        if bdev.lvs_uuid is not None and bdev.lvs_uuid in self.stores:
            # Hot remove: the lvstore is unloaded. On an aio file it stays: an aio bdev made on it again
            # examines and loads it.
            self._unload(self.stores[bdev.lvs_uuid], bdev.filename if driver == "aio" else None)
        if self._esnap_holders().get(bdev.uuid):
            # Esnap clones hold it open: gone from listings now, the reply when the last one lets go (SPDK's
            # unregister waits for every open descriptor; vbdev_lvol ignores the remove event).
            bdev.deleting = True
            self._log.append(f"vbdev_lvol.c:2130:vbdev_lvol_esnap_bdev_event_cb: *NOTICE*: bdev name ({name}) "
                             "received unsupported event type 0")
            return DeferredReply(ready=lambda: self.bdevs.get(name) is not bdev, result=lambda: True)
        self._remove_base(bdev)
        return True

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
                                    num_blocks=size // block_size, filename=filename, creation_time="",
                                    block_size_override=p["block_size"] is not None)
        self._register([name])
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
        holders = self._esnap_holders()
        if name is None:
            return PlainList(self._bdev_json(bname, base, store, lv, holders)
                             for bname, base, store, lv in self._listed_bdevs())
        ref = self._bdev_ref(str(name))
        if ref is None:
            raise _no_device()  # with a timeout SPDK would wait for the bdev first; nothing appears here later
        return [self._bdev_json(ref.name, ref.base, ref.store, ref.lvol, holders)]

    def _bdev_json(self, name: str, base: BaseBdev | None, store: LvolStore | None, lv: Lvol | None,
                   holders: dict[str, int]) -> dict[str, object]:
        if base is not None:
            return base_bdev_json(base, self._claim(name, base.uuid, holders))
        assert store is not None and lv is not None
        return lvol_bdev_json(store, lv, self._log, claim=self._claim(name, lv.uuid, holders),
                              memory_domains=self._memory_domains(store, lv))
