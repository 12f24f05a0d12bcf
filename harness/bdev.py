"""The base bdev (malloc, aio, nvme) and the lvstore on it: create, and tear down children-first, verified.

Teardown that leaves nothing behind matters as much as setup: a leftover lvol or a leaked cluster is exactly
the kind of evidence a storm is looking for, so it must not come from the harness.
"""

from __future__ import annotations

import re
import time
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import ConfigError, TargetError
from harness.hosts.base import Host
from harness.rpc.errors import RpcError
from harness.rpc.sync import SyncRpc

PCI_ADDR = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")


class BdevConfig(BaseModel):
    """The base bdev the lvstore lives on. Longhorn's own CI uses aio on a file."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["malloc", "aio", "nvme"] = "malloc"
    name: str | None = None
    size_mib: int = Field(512, ge=8, description="malloc size, or size of the aio file we create")
    block_size: int = Field(4096, description="malloc/aio block size in bytes")
    aio_path: str | None = Field(None, description="a file or block device; default: a sparse file in the run dir")
    pci_addr: str | None = Field(None, description="NVMe PCIe address, e.g. 0000:00:04.0; a profile may leave it "
                                 "to each node (an inventory's bdevs, a Terraform module's nvme_pci_addrs)")

    @model_validator(mode="after")
    def _check(self) -> BdevConfig:
        if self.block_size not in (512, 4096):
            raise ValueError(f"block_size: expected 512 or 4096, got {self.block_size}")
        if self.pci_addr and not PCI_ADDR.match(self.pci_addr):
            raise ValueError(f"pci_addr: expected a PCI address like 0000:00:04.0, got {self.pci_addr!r}")
        return self


def missing_pci_addr(cfg: BdevConfig) -> str | None:
    """Why an NVMe bdev cannot be made yet (no PCI address came from the profile, the node or a flag), or None."""
    if cfg.kind != "nvme" or cfg.pci_addr:
        return None
    return ("bdev.pci_addr: required when bdev.kind is nvme: set it per node (an inventory's `bdevs: [{kind: nvme, "
            "pci_addr: ...}]`, or a Terraform module whose nodes output nvme_pci_addrs), or with "
            "--set bdev.pci_addr=0000:00:04.0; or use --bdev malloc|aio")


USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")


def check_nvme_driver(host: Host, addr: str) -> None:
    """The controller at `addr` exists and is bound to a driver SPDK can use from userspace; else one line that
    says how to bind it (SPDK's probe would skip it and the attach fail with a bare errno)."""
    link = host.run(["readlink", f"/sys/bus/pci/devices/{addr}/driver"])
    if not link.ok:
        if not host.exists(f"/sys/bus/pci/devices/{addr}"):
            raise ConfigError(f"bdev.pci_addr: no PCI device {addr} on {host.name} (see lspci -D)")
        raise TargetError(
            f"{host.name}: NVMe {addr} is bound to no driver: bind it to a userspace driver, e.g. "
            f"`echo {addr} > /sys/bus/pci/drivers/vfio-pci/bind` or SPDK's scripts/setup.sh"
        )
    driver = PurePosixPath(link.stdout.strip()).name
    if driver not in USERSPACE_DRIVERS:
        raise TargetError(
            f"{host.name}: NVMe {addr} is bound to the kernel driver {driver!r}, not a userspace one: "
            f"run SPDK's scripts/setup.sh (PCI_ALLOWED={addr}) or `driverctl set-override {addr} vfio-pci`"
        )


def clear_stale_lvstores(rpc: SyncRpc, host: Host, addr: str, name: str = "Nvme0",
                         detach_timeout_s: float = 30.0) -> list[str]:
    """Delete the lvstores a namespace of the NVMe at `addr` still holds, and say what they were.

    A drive keeps its lvstore when the target dies: the next target examines and loads it, and the run's
    `bdev_lvol_create_lvstore` then answers EPERM (the bdev is claimed). A run, a replay and each minimize try
    must start on an empty namespace, as a malloc bdev does. Attach, wait for examine, delete, detach and wait
    until the controller is gone, so the caller's own attach (recorded in its history) finds a clean drive.
    """
    check_nvme_driver(host, addr)
    found: list[str] = []
    namespaces = set(rpc.call("bdev_nvme_attach_controller", name=name, trtype="PCIe", traddr=addr) or [])
    try:
        rpc.call("bdev_wait_for_examine")
        lvols = rpc.call_read("bdev_lvol_get_lvols")
        for lvs in rpc.call_read("bdev_lvol_get_lvstores"):
            if lvs.get("base_bdev") not in namespaces:
                continue
            count = sum(1 for lv in lvols if (lv.get("lvs") or {}).get("uuid") == lvs["uuid"])
            rpc.call("bdev_lvol_delete_lvstore", uuid=lvs["uuid"])
            found.append(f"lvstore {lvs.get('name')} ({lvs['uuid']}, {count} lvols) on {lvs['base_bdev']}")
    finally:
        rpc.call("bdev_nvme_detach_controller", name=name)
        deadline = time.monotonic() + detach_timeout_s
        while any(c.get("name") == name for c in rpc.call("bdev_nvme_get_controllers") or []):
            if time.monotonic() > deadline:
                raise TargetError(f"{host.name}: NVMe {addr}: controller {name} still listed {detach_timeout_s:g} s "
                                  "after bdev_nvme_detach_controller")
            time.sleep(0.1)
    return found


class LvstoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "lvs0"
    cluster_size: int = Field(1024 * 1024, description="cluster_sz in bytes (power of two, >= 4 KiB)")
    clear_method: Literal["none", "unmap", "write_zeroes"] | None = None

    @model_validator(mode="after")
    def _check(self) -> LvstoreConfig:
        c = self.cluster_size
        if c < 4096 or c & (c - 1):
            raise ValueError(f"cluster_size: expected a power of two >= 4096, got {c}")
        return self


class BaseBdev:
    """Creates and deletes the base bdev through SPDK's own RPCs."""

    def __init__(self, host: Host, config: BdevConfig, work_dir: str) -> None:
        self.host = host
        self.config = config
        self.work_dir = work_dir
        self.name = config.name or {"malloc": "Malloc0", "aio": "AIO0", "nvme": "Nvme0"}[config.kind]
        self.bdev_name = self.name
        self._created_file: str | None = None

    def create(self, rpc: SyncRpc) -> str:
        cfg = self.config
        if cfg.kind == "malloc":
            num_blocks = cfg.size_mib * 1024 * 1024 // cfg.block_size
            try:
                self.bdev_name = rpc.call("bdev_malloc_create", name=self.name, num_blocks=num_blocks,
                                          block_size=cfg.block_size)
            except RpcError as exc:
                if exc.errno_name != "ENOMEM":
                    raise
                raise TargetError(
                    f"bdev_malloc_create: the target has no {cfg.size_mib} MiB of hugepage memory for the malloc "
                    f"bdev (ENOMEM; other SPDK apps on {self.host.name} may hold hugepages): lower bdev.size_mib, "
                    f"raise target.hugepages_mb, or use bdev.kind: aio") from exc
        elif cfg.kind == "aio":
            path = cfg.aio_path or str(PurePosixPath(self.work_dir) / "aio0.img")
            if not cfg.aio_path:
                self.host.run(["truncate", "-s", f"{cfg.size_mib}M", path]).check(self.host.name)
                self._created_file = path
            elif not self.host.exists(path):
                raise ConfigError(f"bdev.aio_path: {path} does not exist on {self.host.name}: create it or "
                                  "leave aio_path unset for a sparse file in the run directory")
            self.bdev_name = rpc.call("bdev_aio_create", filename=path, name=self.name,
                                      block_size=cfg.block_size)
        else:
            problem = missing_pci_addr(cfg)
            if problem:
                raise ConfigError(f"{self.host.name}: {problem}")
            self._check_nvme_driver()
            names = rpc.call("bdev_nvme_attach_controller", name=self.name, trtype="PCIe",
                             traddr=cfg.pci_addr)
            if not names:
                raise TargetError(f"bdev_nvme_attach_controller {cfg.pci_addr} returned no namespaces")
            self.bdev_name = names[0]
        return self.bdev_name

    def _check_nvme_driver(self) -> None:
        check_nvme_driver(self.host, str(self.config.pci_addr))

    def delete(self, rpc: SyncRpc) -> None:
        kind = self.config.kind
        try:
            if kind == "malloc":
                rpc.call("bdev_malloc_delete", name=self.bdev_name)
            elif kind == "aio":
                rpc.call("bdev_aio_delete", name=self.bdev_name)
            else:
                rpc.call("bdev_nvme_detach_controller", name=self.name)
        finally:
            if self._created_file:
                self.host.remove(self._created_file)
                self._created_file = None


class Lvstore:
    """The lvstore under test, and a teardown that deletes its lvols children-first and checks."""

    def __init__(self, config: LvstoreConfig, bdev_name: str) -> None:
        self.config = config
        self.bdev_name = bdev_name
        self.name = config.name
        self.uuid = ""
        self.start_free_clusters: int | None = None

    def create(self, rpc: SyncRpc) -> dict[str, Any]:
        params: dict[str, Any] = {"bdev_name": self.bdev_name, "lvs_name": self.name,
                                  "cluster_sz": self.config.cluster_size}
        if self.config.clear_method:
            params["clear_method"] = self.config.clear_method
        self.uuid = rpc.call("bdev_lvol_create_lvstore", **params)
        info = self.info(rpc)
        self.start_free_clusters = info["free_clusters"]
        return info

    def info(self, rpc: SyncRpc) -> dict[str, Any]:
        stores = rpc.call_read("bdev_lvol_get_lvstores", lvs_name=self.name)
        return stores[0]

    def delete_lvols(self, rpc: SyncRpc, *, max_rounds: int = 64) -> list[str]:
        """Delete every lvol, leaves first (clones before their snapshots). Returns what could not be deleted."""
        remaining: list[dict[str, Any]] = []
        for _ in range(max_rounds):
            lvols = rpc.call_read("bdev_lvol_get_lvols", lvs_name=self.name)
            if not lvols:
                return []
            bdevs = {b["name"]: b for b in rpc.call_read("bdev_get_bdevs")}
            progressed = False
            remaining = []
            for lvol in lvols:
                info = bdevs.get(lvol["uuid"], {}).get("driver_specific", {}).get("lvol", {})
                if info.get("clones"):
                    remaining.append(lvol)
                    continue
                try:
                    rpc.call("bdev_lvol_delete", name=lvol["uuid"])
                    progressed = True
                except RpcError:
                    remaining.append(lvol)
            if not progressed:
                break
        return [lv["alias"] for lv in remaining]

    def teardown(self, rpc: SyncRpc) -> list[str]:
        """Delete lvols, then the lvstore. Returns problems found (left-over lvols, leaked clusters)."""
        problems: list[str] = []
        left = self.delete_lvols(rpc)
        if left:
            problems.append(f"lvols that could not be deleted: {', '.join(sorted(left))}")
        else:
            free = self.info(rpc)["free_clusters"]
            if self.start_free_clusters is not None and free != self.start_free_clusters:
                problems.append(
                    f"leaked clusters: lvstore {self.name} has {free} free clusters after deleting every lvol, "
                    f"{self.start_free_clusters} at start"
                )
        rpc.call("bdev_lvol_delete_lvstore", lvs_name=self.name)
        return problems


def verify_clean(rpc: SyncRpc, bdev_name: str) -> list[str]:
    """What is left on the target after teardown that should not be (lvol bdevs, the base bdev)."""
    left = []
    for bdev in rpc.call_read("bdev_get_bdevs"):
        if bdev.get("product_name") == "Logical Volume" or bdev["name"] == bdev_name:
            left.append(bdev["name"])
    return [f"bdevs left after teardown: {', '.join(left)}"] if left else []


BASE_BDEV_DELETE = {"Malloc disk": "bdev_malloc_delete", "AIO disk": "bdev_aio_delete"}


def wipe_target(rpc: SyncRpc) -> list[str]:
    """Delete every lvstore and every malloc/aio bdev on the target, then check nothing is left; what could
    not be deleted (or remains) is the returned problem list. A minimize try that survived hands its target to
    the next try this way instead of a restart (only when this comes back empty)."""
    problems: list[str] = []
    for store in rpc.call_read("bdev_lvol_get_lvstores"):
        try:
            rpc.call("bdev_lvol_delete_lvstore", uuid=store["uuid"])
        except RpcError as exc:
            problems.append(f"lvstore {store.get('name')}: {exc}")
    for bdev in rpc.call_read("bdev_get_bdevs"):
        method = BASE_BDEV_DELETE.get(str(bdev.get("product_name")))
        if method is None:
            problems.append(f"bdev {bdev.get('name')} ({bdev.get('product_name')}) is not one a replay makes")
            continue
        try:
            rpc.call(method, name=bdev["name"])
        except RpcError as exc:
            problems.append(f"bdev {bdev.get('name')}: {exc}")
    left = [b["name"] for b in rpc.call_read("bdev_get_bdevs")] + [
        s["name"] for s in rpc.call_read("bdev_lvol_get_lvstores")]
    if left:
        problems.append(f"left after the wipe: {', '.join(left)}")
    return problems
