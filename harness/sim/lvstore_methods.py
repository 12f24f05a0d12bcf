"""The lvstore RPCs as spdk_tgt serves them: create (spdk_lvs_init's and spdk_bs_init's checks and layout, on a
base bdev or on an lvol's bdev: a nested lvstore), rename, delete (every lvol goes, busy or not), grow, and the two
listings."""

from __future__ import annotations

import errno

from harness.model.lvstore import ModelError
from harness.rpc_rules.table import BY_METHOD
from harness.sim.bdevs import (
    BS_PAGE_SIZE,
    DEFAULT_CLUSTER_SZ,
    DEFAULT_MD_PAGES_RATIO,
    BlobstoreLayout,
    InitError,
    blobstore_layout,
    mask_pages,
)
from harness.sim.decoding import check_choices, decode_for
from harness.sim.json_writer import PlainList
from harness.sim.protocol import ERROR_INVALID_PARAMS, RpcFault, fault, no_device
from harness.sim.shapes import lvol_entry, lvstore_json
from harness.sim.state import LVS_NAME_MAX, TargetState


class LvstoreMethods(TargetState):
    """bdev_lvol_create_lvstore, _rename_lvstore, _delete_lvstore, _grow_lvstore, _get_lvstores, _get_lvols."""

    def _m_bdev_lvol_create_lvstore(self, params: object) -> object:
        rule = BY_METHOD["bdev_lvol_create_lvstore"]
        p = decode_for(rule, params)
        check_choices(rule, p)
        # vbdev_lvs_create, then spdk_lvs_init (both answer -errno), then spdk_bs_init (its callback: -32602).
        name = str(p["lvs_name"])
        cluster_sz = int(p["cluster_sz"] or DEFAULT_CLUSTER_SZ)  # type: ignore[call-overload]
        if not name or len(name) > LVS_NAME_MAX:
            raise fault(errno.EINVAL)  # recorded: an empty name is -22 even on a claimed bdev
        bdev = self._bdev_ref(str(p["bdev_name"]))
        if bdev is None:
            raise no_device()
        if self._claim(bdev.name, bdev.uuid) is not None:
            raise fault(errno.EPERM)  # claimed: cannot be opened for writing
        if cluster_sz < bdev.block_size:
            raise fault(errno.EINVAL)  # spdk_lvs_init: "Cluster size ... is smaller than blocklen"
        if self._store_by_name(name) is not None:
            raise fault(errno.EEXIST)
        ratio = int(p["num_md_pages_per_cluster_ratio"] or DEFAULT_MD_PAGES_RATIO)  # type: ignore[call-overload]
        try:
            layout = blobstore_layout(bdev.size_bytes, cluster_sz, ratio, bdev.block_size)
        except InitError as exc:
            raise fault(exc.errno, ERROR_INVALID_PARAMS) from None  # spdk_bs_init's callback
        if bdev.lvol is not None and bdev.store is not None:
            # The blobstore writes its metadata at the start of the device: a thin lvol allocates clusters.
            try:
                bdev.store.write(bdev.lvol.uuid, 0, layout.md_pages * BS_PAGE_SIZE)
            except ModelError as exc:
                raise fault(exc.errno, ERROR_INVALID_PARAMS) from None
        uuid = self._new_uuid()
        self.stores[uuid] = self._new_store(name, uuid, bdev, layout.total_clusters - layout.md_clusters, cluster_sz)
        self._layouts[uuid] = layout
        if bdev.base is not None:
            bdev.base.lvs_uuid = uuid
        else:
            self._nested[bdev.uuid] = uuid
        return uuid

    def _m_bdev_lvol_rename_lvstore(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_rename_lvstore"], params)
        old, new = str(p["old_name"]), str(p["new_name"])
        store = self._store_by_name(old)
        if store is None:
            raise RpcFault(-errno.ENOENT, f"Lvol store {old} not found")
        if new == old:
            return True
        # spdk_lvs_rename checks only for a clash; the name is truncated to fit (no length or empty check).
        new = new[:LVS_NAME_MAX]
        if self._store_by_name(new) is not None:
            raise fault(errno.EEXIST, ERROR_INVALID_PARAMS)
        store.rename_store(new)
        return True

    def _m_bdev_lvol_delete_lvstore(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_delete_lvstore"], params)
        store = self._store_xor(p["uuid"], p["lvs_name"])
        self._model_call(store.destroy, ERROR_INVALID_PARAMS)
        self._drop_store(store)
        return True

    def _m_bdev_lvol_grow_lvstore(self, params: object) -> object:
        p = decode_for(BY_METHOD["bdev_lvol_grow_lvstore"], params)
        store = self._store_xor(p["uuid"], p["lvs_name"])
        size, layout = self._bdev_size(store.base_bdev), self._layouts.get(store.uuid)
        if size is None or layout is None or size == layout.size_bytes:
            return True  # bs_grow_live: same device size, nothing to do
        total = size // store.cluster_size
        if size < layout.size_bytes or mask_pages(total) > layout.cluster_mask_pages:
            raise fault(errno.ENOSPC, ERROR_INVALID_PARAMS)  # cannot shrink; mask has no room
        store.grow(total - layout.md_clusters)
        self._layouts[store.uuid] = BlobstoreLayout(total, layout.md_clusters, layout.cluster_mask_pages, size,
                                                    layout.md_pages)
        return True

    def _m_bdev_lvol_get_lvstores(self, params: object) -> object:
        if params is None:
            return [lvstore_json(s) for s in self.stores.values()]
        p = decode_for(BY_METHOD["bdev_lvol_get_lvstores"], params)
        return [lvstore_json(self._store_xor(p["uuid"], p["lvs_name"]))]

    def _m_bdev_lvol_get_lvols(self, params: object) -> object:
        stores = list(self.stores.values())
        if params is not None:
            p = decode_for(BY_METHOD["bdev_lvol_get_lvols"], params)
            stores = [self._store_xor(p["lvs_uuid"], p["lvs_name"])]
        return PlainList(lvol_entry(s, lv) for s in stores for lv in s.lvols())
