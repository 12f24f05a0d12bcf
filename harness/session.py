"""`TargetSession`: the one way a target is started, for a run, a pytest fixture, a replay, each minimize try and
each benchmark.

Whatever starts a target needs the same things in the same order, and each was once forgotten somewhere:
hugepages for SPDK plus every malloc bdev the caller will create (a minimize try without them met ENOMEM on a
real spdk_tgt, and the strict reference target refuses the same way), core_pattern pointed at the run, the
process, a watchdog from its first line, the history, and on a death the crash report written to disk before
anything is torn down. `TargetSession` does them; nothing else constructs `Target`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from harness.bdev import BdevConfig, clear_stale_lvstores
from harness.crash_budget import CrashBudget, Keep
from harness.errors import TargetError
from harness.history import History
from harness.hosts.base import Host
from harness.leftovers import SessionRecord, process_start, reap
from harness.report.core import CorePattern
from harness.report.crash import CrashReport
from harness.report.title import crash_key, indeterminate_title
from harness.rpc.sync import SyncRpc
from harness.spdk_memory import malloc_total_mib, peak_malloc_mib
from harness.storm.config import StormConfig, copy_destination_mib, esnap_bdev_mibs
from harness.target import Target, TargetConfig, TargetInfo
from harness.watch.config import WatchConfig
from harness.watch.probe import version_probe
from harness.watch.watchdog import Watchdog

Announce = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TargetNeeds:
    """What the caller will ask of the target, known before it starts: the hugepages its malloc bdevs take
    (`spdk_memory`'s rule) and whether it binds a PCI device."""

    malloc_mib: int = 0
    pci: bool = False
    nvme: tuple[str, ...] = ()
    """PCI addresses of the NVMe controllers it attaches: each namespace is emptied of lvstores first
    (`harness.bdev.clear_stale_lvstores`)."""

    @classmethod
    def of_run(cls, bdev: BdevConfig, storm: StormConfig | None = None, cluster_size: int = 1024 * 1024,
               ) -> TargetNeeds:
        """A storm run: its base bdev (when malloc), and the shallow copies' destination and the external
        snapshots the storm makes."""
        sizes = [bdev.size_mib if bdev.kind == "malloc" else 0]
        if storm is not None:
            sizes.append(copy_destination_mib(storm, cluster_size))
            sizes.extend(esnap_bdev_mibs(storm, cluster_size))
        nvme = (bdev.pci_addr,) if bdev.kind == "nvme" and bdev.pci_addr else ()
        return cls(malloc_mib=malloc_total_mib(sizes), pci=bdev.kind == "nvme", nvme=nvme)

    @classmethod
    def of_calls(cls, calls: Iterable[tuple[str, Mapping[str, Any] | None, Any]]) -> TargetNeeds:
        """A replay: the most the recorded malloc bdevs held at once (`(method, params, result)` in order), and
        the PCIe NVMe controllers it attaches."""
        calls = list(calls)
        nvme = tuple(dict.fromkeys(
            str(p["traddr"]) for method, p, _ in calls
            if method == "bdev_nvme_attach_controller" and p and str(p.get("trtype", "")).lower() == "pcie"
            and p.get("traddr")))
        return cls(malloc_mib=peak_malloc_mib(calls), pci=bool(nvme), nvme=nvme)


class TargetSession:
    """One target's life: memory and cores set up, process started, watchdog on, evidence taken, torn down.

    `start()` / `close()` (or `with`). A death while the session is open is written as a crash report under
    `evidence_dir/crashes/` by `save_crash()`, and `close()` does that itself if nobody did, before it stops
    anything: a caller that forgets cannot lose the evidence.
    """

    def __init__(
        self,
        host: Host,
        config: TargetConfig,
        work_dir: str,
        *,
        needs: TargetNeeds | None = None,
        watch: WatchConfig | None = None,
        cores: CorePattern | bool | None = None,
        evidence_dir: str | Path | None = None,
        history_path: Path | None = None,
        announce: Announce | None = None,
        notes: list[str] | None = None,
        keep_evidence: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        """`watch` None: no watchdog (a benchmark's bare target). `cores`: True = point core_pattern at
        `work_dir/cores` for the session (default when watching, from `watch.core_dumps`), a CorePattern = one
        the caller shares across sessions, False = none. `evidence_dir`: the local directory crash reports go
        to (default: `work_dir` on a local host). `keep_evidence` False: a death is reported only to whoever
        asks (`crash_report()`), nothing is written unasked (a minimize try: its title is all it keeps). `stop`
        set while the target starts: `start()` undoes what it did and raises `Stopped`."""
        self.host = host
        self.config = config
        self.work_dir = work_dir
        self.needs = needs or TargetNeeds()
        self.watch = watch
        self.announce = announce or _stderr
        self.notes: list[str] = notes if notes is not None else []
        self.target = Target(host, config, work_dir, needs_pci=self.needs.pci, bdev_memory_mb=self.needs.malloc_mib,
                             announce=self.announce, stop=stop)
        if cores is None:
            cores = bool(watch is not None and watch.core_dumps)
        self._own_cores = cores is True
        self.cores: CorePattern | None = (
            CorePattern(host, str(PurePosixPath(work_dir) / "cores")) if cores is True
            else cores if isinstance(cores, CorePattern) else None)
        if evidence_dir is None and not host.is_local:
            raise TargetError(f"{host.name}: a remote target session needs a local evidence_dir for its reports")
        self.evidence_dir = Path(evidence_dir if evidence_dir is not None else work_dir)
        self.history: History | None = History(history_path) if history_path is not None else None
        self.watchdog: Watchdog | None = None
        self.report: CrashReport | None = None
        self.report_path: Path | None = None
        self.keep_evidence = keep_evidence
        self._record_path: Path | None = None
        self._cores_entered = False
        self._started = False

    # -- what callers read ----------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.target.kind

    @property
    def is_sim(self) -> bool:
        return self.target.is_sim

    @property
    def sock_path(self) -> str:
        return self.target.sock_path

    @property
    def info(self) -> TargetInfo:
        return self.target.info

    @property
    def methods(self) -> set[str]:
        return set(self.target.info.methods)

    def alive(self) -> bool:
        return self.target.alive()

    @property
    def crashed(self) -> bool:
        return self.watchdog is not None and self.watchdog.crashed.is_set()

    # -- start ------------------------------------------------------------------------------------------------

    def start(self) -> TargetSession:
        """Cores, then the process (hugepages first), then the watchdog; anything that fails undoes the rest."""
        try:
            if self.host.is_local:
                self.notes += [f"leftovers of a killed harness: {line}" for line in reap()]
            if self.cores is not None and self._own_cores:
                self.cores.__enter__()
                self._cores_entered = True
                if not self.cores.active:
                    self.notes.append(f"core dumps: {self.cores.reason}")
            self.target.start(on_spawn=self.cores.adopt if self.cores is not None else None)
            self._started = True
            self._record_holdings()
            if self.watch is not None:
                self.watchdog = self._start_watchdog()
            self._clear_namespaces()
        except BaseException:
            self.close()
            raise
        return self

    def _clear_namespaces(self) -> None:
        """Each NVMe namespace the caller will use starts without lvstores; what a dead target left is a note.
        Outside the history: the caller's own attach comes next and is what a reproducer replays."""
        if not self.needs.nvme or "bdev_nvme_attach_controller" not in self.methods:
            return
        with SyncRpc(self.host, self.sock_path, timeout=self.config.rpc_timeout_s) as rpc:
            for addr in self.needs.nvme:
                for what in clear_stale_lvstores(rpc, self.host, addr):
                    self.notes.append(f"nvme {addr}: deleted the {what} an earlier target left on the drive")
                    self.announce(f"{self.host.name}: nvme {addr}: deleted the {what} an earlier target left")

    def _record_holdings(self) -> None:
        """What this session holds on the machine, on disk until close(), for the next session to undo should
        the harness be killed (harness.leftovers)."""
        if not self.host.is_local or self.target.process is None:
            return
        record = SessionRecord.mine()
        reservation = self.target.hugepages
        record.target_pid = self.target.process.pid
        record.target_start = process_start(self.target.process.pid)
        record.sock_path = self.sock_path
        if reservation is not None:
            record.mount_dir = reservation.mounted
            record.hugepages_added, record.hugepages_set_to = reservation.added_pages, reservation.set_to
        self._record_path = record.path()
        with contextlib.suppress(OSError):
            record.write(self._record_path)

    def _forget_record(self) -> None:
        """Everything given back (process gone, hugepages and mount released): nothing left to undo. Until
        then the record stays, for the next session to finish the job."""
        if self._record_path is not None and not self.alive() and self.target.hugepages is None:
            self._record_path.unlink(missing_ok=True)
            self._record_path = None

    def _start_watchdog(self) -> Watchdog:
        cfg = self.watch
        assert cfg is not None and self.target.process is not None
        info = self.target.info
        watchdog = Watchdog(
            self.host, pid=self.target.process.pid, log_path=self.target.log_path,
            binary_paths=[info.binary] if info.binary else [], probe=version_probe(self.host, self.sock_path),
            hang_after_s=cfg.hang_after_s, probe_interval_s=cfg.probe_interval_s,
            error_patterns=cfg.error_patterns, kmsg=cfg.kernel_log,
            process=self.target.process,
        ).start()
        for warning in watchdog.warnings:
            self.notes.append(f"watchdog: {warning}")
        return watchdog

    # -- a death ----------------------------------------------------------------------------------------------

    def wait_for_death(self, *, lost_target: bool = False, settle_s: float = 0.0) -> bool:
        """Did the target die (or hang)? A caller that lost its connections asks with `lost_target`: a dying
        process closes its sockets before its parent can reap it (a loaded machine stretches that to seconds),
        so the watchers hear of the death a moment after the storm did. `settle_s`: wait that long for a death
        that may follow a last reply."""
        watchdog = self.watchdog
        if watchdog is None:
            return False
        if watchdog.crashed.is_set():
            return True
        if lost_target or not self.alive():
            watchdog.wait(watchdog.death_grace_s + 1.0)
        elif settle_s > 0:
            watchdog.wait(settle_s)
        return watchdog.crashed.is_set()

    def crash_report(self, *, history_tail: list[Any] | None = None, notes: Iterable[str] = ()) -> CrashReport | None:
        """The report of the death the watchdog saw (settled: the exit after a fault line, the Code: line), or
        None if it saw none. Built once; later calls return the same report."""
        if self.report is None:
            self.report = self._build_report(history_tail, notes, with_core=True)
        return self.report

    def _build_report(self, history_tail: list[Any] | None, notes: Iterable[str], *,
                      with_core: bool) -> CrashReport | None:
        watchdog = self.watchdog
        if watchdog is None or not watchdog.crashed.is_set():
            return None
        evidence = watchdog.settle(timeout=5.0)
        if not evidence:
            return None
        if history_tail is None and self.history is not None:
            self.history.flush()
            history_tail = self.history.tail()
        info = self.target.info
        return CrashReport.build(
            evidence, self.host, self.evidence_dir, list(history_tail or []),
            {**info.to_dict(), "pid": info.pid, "executable": info.binary or None},
            cores=self.cores if with_core else None, binary_paths=[info.binary] if info.binary else [],
            mirrored=self.target.bundle.root if self.target.bundle is not None else None,
            notes=[*self.notes, *notes, *(f"watchdog: {w}" for w in watchdog.warnings
                                          if f"watchdog: {w}" not in self.notes)],
        )

    def save_crash(self, *, history_tail: list[Any] | None = None, notes: Iterable[str] = (),
                   budget: CrashBudget | None = None) -> Path | None:
        """Write the crash report under `evidence_dir/crashes/` (once); its directory, or None if no death.
        With a `budget` (a long run's), a repeat of a key seen often enough is titled without its core (no
        gdb, no compression: the restart comes sooner) and written without core, backtrace or reproducer."""
        if self.report_path is not None:
            return self.report_path
        if budget is None:
            report = self.crash_report(history_tail=history_tail, notes=notes)
            keep = Keep.ALL
        else:
            quick = self._build_report(history_tail, notes, with_core=False)
            if quick is None:
                return None
            key = crash_key(quick.title)
            keep = budget.claim(key)
            if keep is Keep.ALL:
                report = self.crash_report(history_tail=history_tail, notes=notes)
                if report is not None and not indeterminate_title(quick.title):
                    report.title = quick.title  # one title per key, whether or not a core came with it
            else:
                report = self.report = quick
                self._drop_core()
            note = budget.note(keep, key)
            if report is not None and note:
                report.notes.append(note)
        if report is None:
            return None
        self.report_path = report.write(self.evidence_dir / "crashes", keep=keep)
        return self.report_path

    def _drop_core(self) -> None:
        """A repeat's core is not kept: remove the one the kernel wrote (waiting until it is whole)."""
        if self.cores is None or not self.cores.active or self.target.info.pid is None:
            return
        found = self.cores.find_core(int(self.target.info.pid), timeout=5.0)
        if found is not None:
            with contextlib.suppress(Exception):
                self.host.remove(found)

    # -- stop -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Evidence first (a death nobody reported is written now), then the watchdog, the process, the cores,
        the history; every step runs even if one before it failed."""
        with contextlib.ExitStack() as stack:
            stack.callback(self._forget_record)
            if self.history is not None:
                stack.callback(self.history.close)
            if self._cores_entered and self.cores is not None:
                stack.callback(self.cores.__exit__, None, None, None)
                self._cores_entered = False
            if not self.host.is_local and self._started:
                stack.callback(self._fetch_log)
            if self.cores is not None and self.target.info.pid is not None:
                stack.callback(self.cores.forget, self.target.info.pid)
            stack.callback(lambda: self.target.stop(hung=self._hung()))
            if self.watchdog is not None:
                stack.callback(self.watchdog.stop)
            if self.keep_evidence and self.crashed and self.report_path is None:
                self.save_crash()

    def _hung(self) -> bool:
        """The watchdog called the target hung (its evidence is a hang, and the process is still there)."""
        return self.watchdog is not None and self.alive() and any(ev.kind == "hang" for ev in self.watchdog.evidence)

    def _fetch_log(self) -> None:
        """A remote target's log, whole, beside the local evidence (the node's work dir may be removed)."""
        with contextlib.suppress(Exception):
            self.host.fetch_file(self.target.log_path, str(self.evidence_dir / "target.log"))

    def __enter__(self) -> TargetSession:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

