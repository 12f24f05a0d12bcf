"""What an lvol's blocks show across snapshot, clone, resize, delete and inflate, read over NVMe/TCP: one
scenario, the same expectations for the reference target and a real spdk_tgt (SPDK_TGT, marker `spdk_tgt`).

The expectations are SPDK's blobstore semantics: a snapshot is frozen; its origin and its clones show it until
written; a write allocates (and copies) one cluster; a thin clone shrunk and grown again reads its parent past
the cut, not zeroes; deleting a snapshot with one clone keeps the clone's data; inflate keeps data."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from harness.hosts.local import LocalHost
from harness.nvme_tcp.initiator import Controller, NvmeError
from harness.rpc.errors import RpcError
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from tests.io_helpers import NQN, export_lvol, free_port
from tests.test_io_initiator import KINDS, target_config

BS = 4096


def _block(ch: str) -> bytes:
    return ch.encode() * BS


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_follow_snapshot_clone_resize_delete_inflate(kind: str, tmp_path: Path) -> None:
    with TargetSession(LocalHost(), target_config(kind), str(tmp_path / "t"), needs=TargetNeeds(malloc_mib=130)) as s, \
            SyncRpc(s.host, s.sock_path) as rpc:
        port = free_port()
        v1 = export_lvol(rpc, port, nsid=1)

        def free() -> int:
            return int(rpc.call("bdev_lvol_get_lvstores", lvs_name="lvs0")[0]["free_clusters"])

        def allocated(name: str) -> int:
            return int(rpc.call("bdev_get_bdevs", name=name)[0]["driver_specific"]["lvol"]["num_allocated_clusters"])

        def add_ns(bdev: str, nsid: int) -> None:
            assert rpc.call("nvmf_subsystem_add_ns", nqn=NQN, namespace={"bdev_name": bdev, "nsid": nsid}) == nsid

        async def go() -> None:
            loop = asyncio.get_running_loop()

            async def call(method: str, **params: object) -> object:
                return await loop.run_in_executor(None, lambda: rpc.call(method, **params))

            ctrl = await Controller.connect("127.0.0.1", port, NQN, io_queues=1, queue_depth=8)
            try:
                ns1 = await ctrl.namespace(1)
                start = free()
                await ns1.write(0, _block("A"))
                await ns1.write(300, _block("B"))  # cluster 1
                assert free() == start - 2 and allocated(v1) == 2
                claim = rpc.call("bdev_get_bdevs", name=v1)[0]
                assert (claim["claimed"], claim["claim_type"]) == (True, "exclusive_write")
                s1 = str(await call("bdev_lvol_snapshot", lvol_name=v1, snapshot_name="s1"))
                add_ns(s1, 2)
                ns2 = await ctrl.namespace(2)
                await ns1.write(0, _block("C"))  # copy-on-write of cluster 0 into v1
                assert free() == start - 3 and allocated(v1) == 1 and allocated(s1) == 2
                assert await ns2.read(0, 1) == _block("A")  # the snapshot is frozen
                assert await ns1.read(0, 1) == _block("C")
                assert await ns1.read(300, 1) == _block("B")  # v1 shows s1 where it has not written
                assert await ns1.read(1, 1) == bytes(BS)
                with pytest.raises(NvmeError, match="INTERNAL_DEVICE_ERROR"):
                    await ns2.write(5, _block("X"))  # a snapshot is read-only
                c1 = str(await call("bdev_lvol_clone", snapshot_name=s1, clone_name="c1"))
                add_ns(c1, 3)
                ns3 = await ctrl.namespace(3)
                assert await ns3.read(0, 2) == _block("A") + bytes(BS)
                await ns3.write(301, _block("D"))
                assert await ns3.read(300, 2) == _block("B") + _block("D")
                assert await ns1.read(301, 1) == bytes(BS)  # a clone's write is its own
                # Shrinking an exported lvol: spdk_bdev_notify_blockcnt_change refuses (open descriptors), the
                # call answers EBUSY, but the blob was shrunk first: the bdev keeps 2048 blocks, past the cut
                # its I/O fails, and the data there is gone. Grown again, past the cut v1 reads its parent.
                with pytest.raises(RpcError, match="EBUSY"):
                    await call("bdev_lvol_resize", name=v1, size_in_mib=1)
                assert rpc.call("bdev_get_bdevs", name=v1)[0]["num_blocks"] == 2048
                assert (await ctrl.identify_namespace(1)).nsze == 2048
                with pytest.raises(NvmeError, match="INTERNAL_DEVICE_ERROR"):
                    await ns1.read(300, 1)
                await call("bdev_lvol_resize", name=v1, size_in_mib=8)
                assert await ns1.read(300, 1) == _block("B") and await ns1.read(0, 1) == _block("C")
                with pytest.raises(RpcError, match="Operation not permitted"):
                    await call("bdev_lvol_delete", name=s1)  # two clones
                await call("bdev_lvol_delete", name=c1)
                await call("bdev_lvol_delete", name=s1)  # one clone: v1 takes its clusters
                assert sorted(await ctrl.active_namespaces()) == [1]
                assert await ns1.read(0, 1) == _block("C") and await ns1.read(300, 1) == _block("B")
                await call("bdev_lvol_inflate", name=v1)
                assert allocated(v1) == 8
                assert await ns1.read(0, 1) == _block("C") and await ns1.read(300, 1) == _block("B")
                assert await ns1.read(1000, 1) == bytes(BS)
            finally:
                await ctrl.close()

        asyncio.run(go())
