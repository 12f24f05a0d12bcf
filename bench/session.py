"""`BenchTarget`: one target for a whole benchmark, set up the way a run sets it up, reused across measurements.

Throughput ratios are only fair when both sides hit the same target process in the same state, so the
benchmarks start the target once (reference target or `spdk_tgt`, through harness.target), make the base
bdev and lvstore as `StormRun` does, keep a watchdog on it, and wipe the lvstore between measurements.
The reference target can also poll its sockets on a timer (`--poll-interval-ms`), as spdk_tgt does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from harness.bdev import BaseBdev, BdevConfig, Lvstore, LvstoreConfig
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.target import Target, TargetConfig
from harness.watch.probe import version_probe
from harness.watch.watchdog import Watchdog


class _PolledTarget(Target):
    """The reference target with `--poll-interval-ms` (TargetConfig has no field for it: only benchmarks need it)."""

    poll_interval_ms: float = 0.0

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.is_sim and self.poll_interval_ms:
            argv += ["--poll-interval-ms", f"{self.poll_interval_ms:g}"]
        return argv


def short_work_dir(prefix: str = "lsb-") -> str:
    """A work dir whose socket path fits AF_UNIX's 107 bytes wherever the repository lives."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class BenchTarget:
    """A started target with an lvstore `lvs0` on a malloc bdev and (optionally) a watchdog."""

    def __init__(self, work_dir: str, *, kind: str = "sim", poll_interval_ms: float = 0.0,
                 sim_fault: str = "", sim_fault_after: int = 40, bdev_mib: int = 1024,
                 watchdog: bool = True, kernel_log: bool = True, hang_after_s: float = 30.0,
                 announce: Any = None) -> None:
        self.host = LocalHost()
        self.work_dir = work_dir
        cfg = TargetConfig(kind=kind, sim_fault=sim_fault, sim_fault_after=sim_fault_after)  # type: ignore[arg-type]
        self.target = _PolledTarget(self.host, cfg, work_dir, announce=announce or (lambda msg: None))
        self.target.poll_interval_ms = poll_interval_ms
        self.bdev_cfg = BdevConfig(kind="malloc", size_mib=bdev_mib)
        self.lvs_cfg = LvstoreConfig(name="lvs0")
        self.want_watchdog = watchdog
        self.kernel_log = kernel_log
        self.hang_after_s = hang_after_s
        self.watchdog: Watchdog | None = None
        self.lvstore: Lvstore | None = None

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
        self.target.start()
        if self.want_watchdog:
            self.watchdog = self._watchdog()
        with SyncRpc(self.host, self.sock_path) as rpc:
            bdev = BaseBdev(self.host, self.bdev_cfg, self.work_dir)
            name = bdev.create(rpc)
            self.lvstore = Lvstore(self.lvs_cfg, name)
            self.lvstore.create(rpc)
        return self

    def _watchdog(self) -> Watchdog:
        """As `StormRun._start_watchdog`: kernel log, target log, process, and an RPC probe every 2 s."""

        probe = version_probe(self.host, self.sock_path)
        assert self.target.process is not None
        return Watchdog(self.host, pid=self.target.process.pid, log_path=self.target.log_path,
                        binary_paths=[self.target.info.binary] if self.target.info.binary else [],
                        probe=probe, hang_after_s=self.hang_after_s, kmsg=self.kernel_log,
                        process=self.target.process).start()

    def wipe(self) -> list[str]:
        """Delete every lvol (leaves first) so the next measurement starts from an empty lvstore."""
        assert self.lvstore is not None
        with SyncRpc(self.host, self.sock_path, timeout=60.0) as rpc:
            return self.lvstore.delete_lvols(rpc, max_rounds=256)

    def alive(self) -> bool:
        return self.target.alive()

    def stop(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.target.stop()

    def __enter__(self) -> BenchTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spdk_tgt_path() -> str | None:
    """$SPDK_TGT when it names an existing file: only then do the benchmarks also run on a real spdk_tgt."""
    path = os.environ.get("SPDK_TGT")
    return path if path and Path(path).exists() else None
