"""`TargetTrials`: one try = a fresh target, a watchdog, the plan replayed, the crash title (or survival).

Every try starts its own target in its own work directory (a fresh log, so the previous try's lines can never
count as this one's evidence) and titles the death with the same `CrashReport` code a storm run uses, so a
title from a try compares equal to the title in crash.json. The reference target starts in a fraction of a
second, so hundreds of tries fit a minimization budget.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from harness.bdev import wipe_target
from harness.errors import HarnessError, TargetError
from harness.history import SETUP_WORKER
from harness.hosts.base import Host
from harness.minimize.config import MinimizeConfig
from harness.minimize.operations import Operation
from harness.minimize.plan import ReplayPlan
from harness.minimize.replayer import ReplayOutcome, replay_plan_sync
from harness.minimize.search import SETUP_REFUSED, TrialResult
from harness.report.core import CorePattern
from harness.rpc.errors import RpcConnectError
from harness.rpc.sync import SyncRpc
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig
from harness.watch.config import WatchConfig

DEFAULT_HANG_AFTER_S = 30.0


@contextmanager
def quiet_watchdogs() -> Iterator[None]:
    """Hundreds of tries each end in a crash the watchdog logs as an error: keep them out of the user's terminal
    while a search runs (each try's title is what the search reports)."""
    logger = logging.getLogger("harness.watch")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


def needs_of(ops: Iterable[Operation]) -> TargetNeeds:
    """The memory a fresh target must have to replay these calls: their malloc bdevs, as recorded."""
    return TargetNeeds.of_calls((op.method, op.params, op.result if op.ok else None) for op in ops)


def plan_needs(plan: ReplayPlan) -> TargetNeeds:
    """What a try's fresh target needs for this candidate (a smaller candidate may need less)."""
    return needs_of(plan.ops)


def environment_refusal(outcome: ReplayOutcome) -> str | None:
    """Why the fresh target could not replay the candidate as recorded, for a reason of this machine, not of
    the candidate: a setup call (worker -1: base bdev, lvstore) refused although it succeeded in the recording,
    or ENOMEM where the recording succeeded (other jobs hold the hugepages a malloc bdev needs). None if
    neither happened."""
    for answer in outcome.answers:
        if answer.error is None or not answer.op.ok or answer.error.get("lost") or answer.error.get("timeout"):
            continue
        errno_name = answer.error.get("errno") or f"code {answer.error.get('code')}"
        if answer.op.worker == SETUP_WORKER or errno_name == "ENOMEM":
            return f"{answer.op.method} answered {errno_name} on replay, ok in the recording"
    return None


class TargetTrials:
    """Runs plans against fresh targets on `host`; `last` keeps the newest try's details for reports."""

    def __init__(
        self,
        host: Host,
        target_config: TargetConfig,
        config: MinimizeConfig,
        *,
        work_root: str | None = None,
        cores: CorePattern | None = None,
        kernel_log: bool = True,
        hang_after_s: float = DEFAULT_HANG_AFTER_S,
        history_path: Callable[[int], Path | None] | None = None,
    ) -> None:
        self.host = host
        self.target_config = target_config
        self.config = config
        # Short and private: the socket path must fit AF_UNIX's 107 bytes wherever the crash dir lives.
        if work_root is None:
            work_root = tempfile.mkdtemp(prefix="lvs-min-") if host.is_local else host.private_dir("lvs-min")
        self.work_root = work_root
        self.evidence_root = Path(tempfile.mkdtemp(prefix="lvs-min-ev-")) if not host.is_local else Path(work_root)
        """Where a try's report is staged (local: inside the try's own work dir); nothing there is kept."""
        self.cores = cores
        self.kernel_log = kernel_log
        self.hang_after_s = hang_after_s
        self.history_path = history_path
        self._count = itertools.count(1)
        self.count = 0
        self.last_outcome: ReplayOutcome | None = None
        self.last_target_log: str = ""
        self._lock = threading.Lock()
        self._live: dict[int, TargetSession] = {}
        """Targets of tries in progress: `close()` kills any an interrupted search left behind."""
        self._idle: list[TargetSession] = []
        """Targets a survived try wiped clean, for the next tries (`_wipe`)."""
        self.reuse = config.reuse_targets and history_path is None
        self.starts = 0
        """Targets started (tries minus the ones that ran on a wiped target)."""

    def run(self, plan: ReplayPlan) -> TrialResult:
        n = self.count = next(self._count)
        t0 = time.monotonic()
        session, reused = self._session_for(n, plan)
        with self._lock:
            self._live[n] = session
        keep = False
        try:
            if not reused:
                try:
                    session.start()
                except TargetError as exc:  # a core another app claims, hugepages short: this machine, not the plan
                    first = str(exc).splitlines()[0]
                    return TrialResult(f"{SETUP_REFUSED}: the fresh target did not start: {first}",
                                       time.monotonic() - t0, 0, first)
                with self._lock:
                    self.starts += 1
            log_mark = self._log_size(session)
            title: str | None = None
            try:
                outcome = replay_plan_sync(self.host, session.sock_path, plan, history=session.history,
                                           op_timeout_s=self.config.op_timeout_s,
                                           crashed=session.watchdog.crashed if session.watchdog else None)
            except RpcConnectError as exc:
                outcome = ReplayOutcome(lost=str(exc))
            self.last_outcome = outcome
            # A death may follow the last reply (or the target may be dying as it closed our socket).
            if session.wait_for_death(lost_target=bool(outcome.lost), settle_s=self.config.settle_s):
                report = session.crash_report(history_tail=[])
                title = report.title if report is not None else None
            starved = environment_refusal(outcome)
            if starved is not None and title is None:
                # The candidate never ran as recorded: this try says nothing either way (search.indeterminate).
                title = f"{SETUP_REFUSED}: {starved}"
            detail = (f"{len(outcome.answers)} of {len(plan)} operations answered"
                      + (f"; connection lost: {outcome.lost}" if outcome.lost else "")
                      + ("; a call timed out" if outcome.timed_out else "")
                      + ("; on a wiped target" if reused else ""))
            keep = title is None and not outcome.lost and not outcome.timed_out and self._wipe(session, log_mark)
            return TrialResult(title, time.monotonic() - t0, len(outcome.answers), detail, reused=reused)
        finally:
            # Whatever failed above (a watchdog that could not start, an interrupt), the target goes, unless
            # it survived and was wiped clean for the next try.
            with self._lock:
                self._live.pop(n, None)
                if keep:
                    self._idle.append(session)
            self.last_target_log = session.target.log_tail(30)
            if not keep:
                self._discard(session)

    def _session_for(self, n: int, plan: ReplayPlan) -> tuple[TargetSession, bool]:
        """A wiped target a survived try left (with memory enough for this plan), else a new session."""
        needs = plan_needs(plan)
        with self._lock:
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            if idle.alive() and not idle.crashed and needs.malloc_mib <= idle.needs.malloc_mib:
                return idle, True
            self._discard(idle)
        hist_path = self.history_path(n) if self.history_path else None
        session = TargetSession(
            self.host, self.target_config, f"{self.work_root}/t{n}", needs=needs,
            watch=WatchConfig(kernel_log=self.kernel_log, hang_after_s=self.hang_after_s, core_dumps=False),
            cores=self.cores if self.cores is not None else False, evidence_dir=self.evidence_root / f"t{n}",
            history_path=hist_path, announce=lambda _msg: None, keep_evidence=False)
        return session, False

    def _log_size(self, session: TargetSession) -> int:
        try:
            return Path(session.target.log_path).stat().st_size if self.host.is_local else 0
        except OSError:
            return 0

    def _wipe(self, session: TargetSession, log_mark: int) -> bool:
        """Hand a target that survived a try to the next one: only a local one, only if the try made it log no
        error (a forced removal, a failed blob op: state a fresh target would not have), only if deleting every
        lvstore and bdev leaves it empty, and only if it is still alive and quiet after that."""
        if not self.reuse or not self.host.is_local or not session.alive():
            return False
        try:
            with open(session.target.log_path, "rb") as log:
                log.seek(log_mark)
                if b"*ERROR*" in log.read():
                    return False
            with SyncRpc(self.host, session.sock_path, timeout=self.config.op_timeout_s) as rpc:
                problems = wipe_target(rpc)
        except (OSError, HarnessError):
            return False
        return not problems and session.alive() and not session.wait_for_death(settle_s=0.05)

    def _discard(self, session: TargetSession) -> None:
        with contextlib.suppress(TargetError):
            session.close()
        self.host.run(["rm", "-rf", session.work_dir], timeout=30)
        shutil.rmtree(session.evidence_dir, ignore_errors=True)

    def run_many(self, plan: ReplayPlan, count: int) -> list[TrialResult]:
        """`count` tries of `plan` at once, each on its own fresh target (the k of k-of-n in one round)."""
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="minimize-try") as pool:
            return list(pool.map(lambda _i: self.run(plan), range(count)))

    def close(self) -> None:
        """Kill the targets of tries still running (an interrupt mid-try), stop the idle ones, then remove the
        work root."""
        with self._lock:
            live = list(self._live.values())
            idle, self._idle = self._idle, []
            self._live.clear()
        for session in idle:
            self._discard(session)
        for session in live:
            process = session.target.process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(5.0)
            self._discard(session)  # gives back its hugepages and mount too
        self.host.run(["rm", "-rf", self.work_root], timeout=30)
        shutil.rmtree(self.evidence_root, ignore_errors=True)
