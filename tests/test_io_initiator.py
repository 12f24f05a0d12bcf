"""The NVMe/TCP initiator against the reference target and a real spdk_tgt (set SPDK_TGT; marker `spdk_tgt`):
the same expectations for both, so the reference target's NVMe/TCP side is held to what the real one does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts.local import LocalHost
from harness.nvme_tcp.initiator import Controller, NvmeError
from harness.rpc.errors import RpcError
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig, find_spdk_tgt
from tests.io_helpers import NQN, export_lvol, free_port

KINDS = ["sim", pytest.param("spdk", marks=pytest.mark.spdk_tgt)]


def target_config(kind: str) -> TargetConfig:
    if kind == "sim":
        return TargetConfig(kind="sim")
    # Another SPDK app may hold core 0's lock on a shared machine; these tests do not need a core of their own.
    return TargetConfig(kind="spdk", spdk_tgt=find_spdk_tgt(LocalHost(), os.environ.get("SPDK_TGT")),
                        cpumask="0x2", extra_args=["--disable-cpumask-locks"])


@pytest.fixture(params=KINDS)
def exported(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SyncRpc, str, int]]:
    """A target exporting one thin 8 MiB lvol as nsid 3 of NQN on a free loopback port."""
    with TargetSession(LocalHost(), target_config(request.param), str(tmp_path / "t"),
                       needs=TargetNeeds(malloc_mib=130)) as s, SyncRpc(s.host, s.sock_path) as rpc:
        port = free_port()
        uuid = export_lvol(rpc, port, nsid=3)
        yield rpc, uuid, port


def test_initiator_connects_identifies_reads_and_writes_an_lvol(exported: tuple[SyncRpc, str, int]) -> None:
    _rpc, uuid, port = exported

    async def go() -> None:
        ctrl = await Controller.connect("127.0.0.1", port, NQN, io_queues=2, queue_depth=8)
        try:
            assert ctrl.data is not None and ctrl.data.subnqn == NQN and ctrl.cntlid >= 1
            assert ctrl.data.in_capsule_bytes == 4096  # SPDK's default in_capsule_data_size
            assert await ctrl.active_namespaces() == [3]
            ns = await ctrl.namespace(3)
            assert (ns.blocks, ns.block_size) == (2048, 4096)
            assert ns.data.nguid.hex() == uuid.replace("-", "")
            assert await ns.read(5, 1) == bytes(4096)  # thin, never written: zeroes
            one = b"A" * 4096  # in-capsule
            big = bytes(range(256)) * 128  # 32 KiB: R2T + H2CData
            await ns.write(0, one)
            await ns.write(64, big, queue=1)
            results = await asyncio.gather(ns.read(0, 1), ns.read(64, 8, queue=1), ns.read(72, 1))
            assert results == [one, big, bytes(4096)]
            assert ctrl.io[1].stats.r2ts == 1
            await ns.flush()
            with pytest.raises(NvmeError, match="LBA_OUT_OF_RANGE"):
                await ns.read(2048, 1)
            with pytest.raises(NvmeError, match="INVALID_NAMESPACE_OR_FORMAT"):
                await ctrl.read(4, 0, 1, 4096)
        finally:
            await ctrl.close()

    asyncio.run(go())


def test_a_deleted_lvols_namespace_goes_and_its_reads_fail(exported: tuple[SyncRpc, str, int]) -> None:
    """bdev_lvol_delete unregisters the bdev; the subsystem hot-removes the namespace before the reply."""
    rpc, uuid, port = exported

    async def go() -> None:
        ctrl = await Controller.connect("127.0.0.1", port, NQN, io_queues=1, queue_depth=4)
        try:
            ns = await ctrl.namespace(3)
            await ns.write(0, b"Z" * 4096)
            await asyncio.get_running_loop().run_in_executor(None, lambda: rpc.call("bdev_lvol_delete", name=uuid))
            with pytest.raises(NvmeError, match="INVALID_NAMESPACE_OR_FORMAT"):
                await ns.read(0, 1)
            assert await ctrl.active_namespaces() == []
        finally:
            await ctrl.close()

    asyncio.run(go())
    subsystems = {s["nqn"]: s for s in rpc.call("nvmf_get_subsystems")}
    assert subsystems[NQN]["namespaces"] == []
    with pytest.raises(RpcError):
        rpc.call("nvmf_subsystem_remove_ns", nqn=NQN, nsid=3)
