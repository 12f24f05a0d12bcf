"""An lvstore on one of the storm's lvols (a nested lvstore), judged by a model of its own.

The storm's checker models the storm's lvstore; calls that name a nested lvstore would be judged against the
wrong one, so an episode sends them plainly and judges each with a `ModelMirror` of the nested lvstore (the
same rows, the same transitions), and compares that lvstore's listing with it at the end. What the outer
lvstore sees (the lvol claimed, the nested lvstore gone with it) the episode checks against the target.
"""

from __future__ import annotations

from typing import Any

from harness.rpc.errors import RpcError
from harness.storm.control import StormControl, Worker
from harness.storm.findings import Finding
from harness.storm.listing import read_listing
from harness.storm.listing_checks import listing_diff
from harness.storm.mirror import LvstoreInfo, ModelMirror
from harness.storm.operations import Op


class NestedLvstore:
    """A nested lvstore the episode made, its mirror, and the calls it sends to it."""

    def __init__(self, storm: StormControl, worker: Worker, info: LvstoreInfo, label: str) -> None:
        self.storm = storm
        self.worker = worker
        self.info = info
        self.label = label
        self.mirror = ModelMirror(info)

    @property
    def name(self) -> str:
        return self.info.name

    async def do(self, method: str, params: dict[str, Any]) -> Op:
        """Send one call naming the nested lvstore or its lvols, and judge it against its own model."""
        op = Op(method, params, self.worker.index, label=self.label)
        await self.storm.plain(op, self.worker.conn)
        expected, _ = self.mirror.apply(op)
        if expected != op.outcome:
            self.storm.checker.add(Finding(
                "unexpected-reply", f"{op.describe()} (nested lvstore {self.name}): the model expects {expected}"
                f"{self.mirror.context(op)}", op.record()))
            self.mirror = ModelMirror(self.info)  # judged no further: it no longer knows what is there
        return op

    async def gone_with_its_lvol(self) -> None:
        """Its lvol was deleted: the lvstore on it must be gone too (vbdev_lvs_hotremove_cb)."""
        op = Op("bdev_lvol_get_lvstores", {"lvs_name": self.name}, self.worker.index, label=self.label)
        await self.storm.plain(op, self.worker.conn)
        if op.ok:
            self.storm.checker.add(Finding("nested-lvstore-left", f"nested lvstore {self.name} is still listed "
                                           "after the lvol it sits on was deleted", op.record()))
            await self.storm.plain(Op("bdev_lvol_delete_lvstore", {"lvs_name": self.name}, self.worker.index,
                                      label=self.label), self.worker.conn)

    async def compare(self) -> None:
        """The nested lvstore's listing against its model."""
        try:
            listing = await read_listing(self.worker.conn, self.name, self.storm.cfg.op_timeout)
        except RpcError as exc:
            self.storm.checker.add(Finding("nested-lvstore-lost", f"nested lvstore {self.name}: {exc}"))
            return
        for finding in listing_diff(listing.lvols, listing.bdevs, listing.store, self.mirror.model):
            finding.message = f"nested lvstore {self.name}: {finding.message}"
            self.storm.checker.add(finding)
