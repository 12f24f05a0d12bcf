"""`BenchTarget`: one target for a whole benchmark, set up the way a run sets it up, reused across measurements.

Throughput ratios are only fair when both sides hit the same target process in the same state, so the
benchmarks start the target once (reference target or `spdk_tgt`, through the same `TargetSession` a run
uses: the hugepages its malloc bdev needs reserved and given back), make the base bdev and lvstore as
`StormRun` does, keep a watchdog on it, and wipe the lvstore between measurements. The reference target can
also poll its sockets on a timer (`target.sim_poll_interval_ms`), as spdk_tgt does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from harness.bdev import BaseBdev, BdevConfig, Lvstore, LvstoreConfig
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig
from harness.watch.config import WatchConfig
from harness.watch.watchdog import Watchdog


def short_work_dir(prefix: str = "lsb-") -> str:
    """A work dir whose socket path fits AF_UNIX's 107 bytes wherever the repository lives."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class BenchTarget:
    """A started target with an lvstore `lvs0` on a malloc bdev and (optionally) a watchdog."""

    def __init__(self, work_dir: str, *, kind: str = "sim", poll_interval_ms: float = 0.0,
                 sim_fault: str = "", sim_fault_after: int = 40, bdev_mib: int = 1024,
                 watchdog: bool = True, kernel_log: bool = True, hang_after_s: float = 30.0,
                 announce: Any = None, keep_evidence: bool = True) -> None:
        self.host = LocalHost()
        self.work_dir = work_dir
        cfg = TargetConfig(kind=kind, sim_fault=sim_fault, sim_fault_after=sim_fault_after,  # type: ignore[arg-type]
                           sim_poll_interval_ms=poll_interval_ms)
        self.bdev_cfg = BdevConfig(kind="malloc", size_mib=bdev_mib)
        self.lvs_cfg = LvstoreConfig(name="lvs0")
        self.session = TargetSession(
            self.host, cfg, work_dir, needs=TargetNeeds.of_run(self.bdev_cfg),
            watch=WatchConfig(kernel_log=kernel_log, hang_after_s=hang_after_s, core_dumps=False) if watchdog
            else None, announce=announce or (lambda msg: None), keep_evidence=keep_evidence)
        self.target = self.session.target
        self.lvstore: Lvstore | None = None

    @property
    def watchdog(self) -> Watchdog | None:
        return self.session.watchdog

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def sock_path(self) -> str:
        return self.target.sock_path

    @property
    def lvs_name(self) -> str:
        return self.lvs_cfg.name

    @property
    def pid(self) -> int:
        assert self.target.process is not None
        return self.target.process.pid

    @property
    def methods(self) -> set[str]:
        return set(self.target.info.methods)

    def start(self) -> BenchTarget:
        self.session.start()
        try:
            with SyncRpc(self.host, self.sock_path) as rpc:
                bdev = BaseBdev(self.host, self.bdev_cfg, self.work_dir)
                name = bdev.create(rpc)
                self.lvstore = Lvstore(self.lvs_cfg, name)
                self.lvstore.create(rpc)
        except BaseException:
            self.session.close()
            raise
        return self

    def wipe(self) -> list[str]:
        """Delete every lvol (leaves first) so the next measurement starts from an empty lvstore."""
        assert self.lvstore is not None
        with SyncRpc(self.host, self.sock_path, timeout=60.0) as rpc:
            return self.lvstore.delete_lvols(rpc, max_rounds=256)

    def alive(self) -> bool:
        return self.target.alive()

    def stop(self) -> None:
        self.session.close()

    def __enter__(self) -> BenchTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spdk_tgt_path() -> str | None:
    """$SPDK_TGT when it names an existing file: only then do the benchmarks also run on a real spdk_tgt."""
    path = os.environ.get("SPDK_TGT")
    return path if path and Path(path).exists() else None
