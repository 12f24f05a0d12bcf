"""Set-up the I/O tests share: one lvol exported over NVMe/TCP on a free loopback port, with SPDK's own RPCs."""

from __future__ import annotations

import socket

from harness.rpc.sync import SyncRpc

NQN = "nqn.2016-06.io.spdk:lvol-storm-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def export_lvol(rpc: SyncRpc, port: int, *, nsid: int, size_mib: int = 8) -> str:
    """Malloc0 (128 MiB) -> lvs0 -> a thin lvol `v1`, exported as `nsid` of NQN on 127.0.0.1:port; its UUID."""
    rpc.call("bdev_malloc_create", name="Malloc0", num_blocks=128 * 256, block_size=4096)
    rpc.call("bdev_lvol_create_lvstore", bdev_name="Malloc0", lvs_name="lvs0", cluster_sz=1 << 20)
    uuid = str(rpc.call("bdev_lvol_create", lvs_name="lvs0", lvol_name="v1", size_in_mib=size_mib,
                        thin_provision=True))
    rpc.call("nvmf_create_transport", trtype="TCP")
    rpc.call("nvmf_create_subsystem", nqn=NQN, allow_any_host=True, max_namespaces=64)
    assert rpc.call("nvmf_subsystem_add_ns", nqn=NQN, namespace={"bdev_name": uuid, "nsid": nsid}) == nsid
    rpc.call("nvmf_subsystem_add_listener", nqn=NQN, listen_address={
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)})
    return uuid
