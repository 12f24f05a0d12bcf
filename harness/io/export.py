"""Exporting the storm's lvols over NVMe/TCP with SPDK's own RPCs: one subsystem with a listener on the target
host, one namespace per exported lvol, added and removed as lvols come and go.

A deleted lvol's namespace goes by itself (spdk_tgt hot-removes it before the delete answers); the exporter
forgets it once no command to it is in flight. An nsid is given again only then: a command still on its way
to an old namespace can never land on a new lvol. Nothing is retried (the calls change the target).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from harness.rpc.client import RpcConnection
from harness.rpc.errors import RpcError

NQN = "nqn.2016-06.io.spdk:lvol-storm"
MAX_NAMESPACES = 1024


def free_port(address: str) -> int:
    """A TCP port nobody listens on at `address` now (the target binds it right after)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@dataclass(eq=False)
class Export:
    uuid: str
    nsid: int
    since: float
    live: bool = True
    """New commands may go to it; False once its lvol is gone or it is being unexported."""
    inflight: int = 0
    stale: bool = False
    """A delete of its lvol failed: its namespace may or may not be there (the exporter removes it)."""


class Exports:
    """The namespaces of the storm's subsystem, by nsid and by lvol."""

    def __init__(self) -> None:
        self.by_nsid: dict[int, Export] = {}
        self.by_uuid: dict[str, Export] = {}
        self._free: list[int] = []
        self._next = 1
        self.added = 0
        self.removed = 0
        self.refused = 0

    def live(self) -> list[Export]:
        return [e for e in self.by_nsid.values() if e.live]

    def next_nsid(self) -> int | None:
        if self._free:
            return self._free.pop()
        if self._next > MAX_NAMESPACES:
            return None
        self._next += 1
        return self._next - 1

    def give_back(self, nsid: int) -> None:
        self._free.append(nsid)

    def add(self, uuid: str, nsid: int) -> Export:
        e = Export(uuid, nsid, time.monotonic())
        self.by_nsid[nsid] = e
        self.by_uuid[uuid] = e
        self.added += 1
        return e

    def gone(self, uuid: str) -> None:
        """Its lvol is gone (or going): no new command; forgotten when the last one is back."""
        e = self.by_uuid.get(uuid)
        if e is not None:
            e.live = False
            self.reap(e)

    def reap(self, e: Export) -> None:
        if not e.live and e.inflight == 0 and self.by_nsid.get(e.nsid) is e:
            del self.by_nsid[e.nsid]
            if self.by_uuid.get(e.uuid) is e:
                del self.by_uuid[e.uuid]
            self.give_back(e.nsid)
            self.removed += 1


async def create_subsystem(conn: RpcConnection, address: str, port: int, timeout: float) -> None:
    """The TCP transport (one may exist already), the subsystem and its listener."""
    try:
        await conn.call("nvmf_create_transport", {"trtype": "TCP"}, timeout=timeout)
    except RpcError as exc:
        if "already exists" not in exc.message:
            raise
    await conn.call("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True,
                                              "max_namespaces": MAX_NAMESPACES}, timeout=timeout)
    await conn.call("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": address, "trsvcid": str(port)}}, timeout=timeout)


async def delete_subsystem(conn: RpcConnection, timeout: float) -> None:
    await conn.call("nvmf_delete_subsystem", {"nqn": NQN}, timeout=timeout)


async def add_namespace(conn: RpcConnection, uuid: str, nsid: int, timeout: float) -> bool:
    """False when the target refused (the lvol went meanwhile: a race, not a finding)."""
    try:
        got = await conn.call("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": uuid, "nsid": nsid}},
                              timeout=timeout)
    except RpcError:
        return False
    return bool(got == nsid)


async def remove_namespace(conn: RpcConnection, nsid: int, timeout: float) -> bool:
    try:
        await conn.call("nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": nsid}, timeout=timeout)
    except RpcError:
        return False
    return True
