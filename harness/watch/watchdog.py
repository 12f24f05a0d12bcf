"""`Watchdog`: kernel log + target log + the process, composed; sets `crashed` at the first evidence.

It only observes and signals: the storm and fixtures poll `crashed` (a threading.Event) and read
`evidence`; nothing here calls into them. Each watcher blocks on its own source with a short timeout, so
the event is set within milliseconds of the evidence while an idle watchdog costs almost no CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from harness.hosts.base import Host, HostProcess, describe_returncode
from harness.watch.attribution import TargetIdentity, Verdict, confirm_by_death, target_kernel_lines
from harness.watch.evidence import AbortMessage, CrashEvidence, Finding
from harness.watch.kernel import LOST_WITHOUT_KERNEL_LOG, SOURCES, KernelLogWatch
from harness.watch.kmsg import KernelRecord, UserFault, parse_code_line, parse_fault, parse_suppressed
from harness.watch.process import ProcessWatch
from harness.watch.targetlog import DEFAULT_ERROR_PATTERNS, TargetLogWatch

log = logging.getLogger(__name__)

KERNEL_LINES = 200
"""How far back a crash report looks in the kernel log for the target's lines."""
# Deaths the kernel prints a line for (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV; SIGKILL for the OOM killer).
_KERNEL_SIGNALS = {-4, -5, -7, -8, -11}


class Watchdog:
    """Observes one target process; `crashed` is set within ~100 ms of the first evidence of its death.

    Call `stop()` before stopping the target on purpose: any exit while the watchdog runs is a crash.
    """

    def __init__(
        self,
        host: Host,
        *,
        pid: int,
        log_path: str | None,
        binary_paths: Sequence[str] = (),
        probe: Callable[[], bool] | None = None,
        hang_after_s: float = 30.0,
        probe_interval_s: float = 2.0,
        error_patterns: Iterable[str] = DEFAULT_ERROR_PATTERNS,
        kmsg: bool = True,
        kernel_sources: Sequence[str] = SOURCES,
        process: HostProcess | None = None,
        track_interval_s: float = 1.0,
        death_grace_s: float = 1.0,
    ) -> None:
        self.host = host
        self.pid = pid
        self.crashed = threading.Event()
        self.detected_at: float | None = None
        self.identity = TargetIdentity(host, pid, binary_paths)
        self.unrelated: list[tuple[UserFault, str]] = []
        self._own_lines: set[str] = set()  # kernel messages of faults judged the target's
        self._foreign_lines: set[str] = set()  # ... and judged another process's
        self.suppressed: list[tuple[str, int]] = []
        self.warnings: list[str] = []
        self.death_grace_s = death_grace_s
        self._evidence: list[CrashEvidence] = []
        self._findings: list[Finding] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._track_interval_s = track_interval_s
        self._last_fault: UserFault | None = None
        self._stopped = False
        self.kernel: KernelLogWatch | None = (
            KernelLogWatch(host, on_record=self._on_kernel_record, sources=kernel_sources) if kmsg else None
        )
        self.target_log: TargetLogWatch | None = (
            TargetLogWatch(host, log_path, on_abort=self._on_abort, on_finding=self._on_finding,
                           error_patterns=error_patterns)
            if log_path else None
        )
        self.process = ProcessWatch(
            host, pid, on_exit=self._on_exit, on_hang=self._on_hang, process=process, probe=probe,
            hang_after_s=hang_after_s, probe_interval_s=probe_interval_s,
        )
        self._tracker: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Watchdog:
        """Start every watcher; call it right after the target was spawned (kernel records from now on)."""
        if self.kernel is not None:
            source = self.kernel.start()
            if source == "none":
                self.warnings.append(f"{LOST_WITHOUT_KERNEL_LOG} (tried: {'; '.join(self.kernel.problems)})")
        else:
            self.warnings.append("kernel log not followed (kmsg=False): " + LOST_WITHOUT_KERNEL_LOG)
        self.identity.refresh()
        if self.target_log is not None:
            self.target_log.start()
        self.process.start()
        self._tracker = threading.Thread(target=self._track, name="watch:identity", daemon=True)
        self._tracker.start()
        return self

    @property
    def kernel_source(self) -> str:
        return self.kernel.describe_source() if self.kernel is not None else "not followed"

    def stop(self) -> None:
        """Stop observing (before a deliberate shutdown, or after a crash was handled)."""
        self._stopped = True
        self._stop.set()
        # each stop wakes its own thread at once (wake pipes, closed streams), so this takes milliseconds
        self.process.stop()
        if self.target_log is not None:
            self.target_log.stop()
        if self.kernel is not None:
            self.kernel.stop()
        if self._tracker is not None:
            self._tracker.join(timeout=2)

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _track(self) -> None:
        """Keep the thread and mapping record current while the target runs (SPDK adds threads late)."""
        while not self._stop.wait(self._track_interval_s):
            if self.process.exited.is_set() or not self.identity.refresh():
                return

    # --- what callers read ------------------------------------------------------------------------

    @property
    def evidence(self) -> list[CrashEvidence]:
        with self._lock:
            return list(self._evidence)

    @property
    def findings(self) -> list[Finding]:
        with self._lock:
            return list(self._findings)

    def wait(self, timeout: float) -> bool:
        return self.crashed.wait(timeout)

    def settle(self, timeout: float = 5.0) -> list[CrashEvidence]:
        """After `crashed`: wait (bounded) for the rest of the evidence (the exit after a fault line, the
        fault line and its `Code:` after an exit) and refresh the log snapshots, so a report sees it all."""
        deadline = time.time() + timeout

        def left() -> float:
            return max(0.0, deadline - time.time())

        if not any(ev.kind == "hang" for ev in self.evidence):
            self.process.exited.wait(left())
        if self.kernel is not None and self.kernel.source != "none" and self.process.exit_rc in _KERNEL_SIGNALS:
            while left() > 0 and not any(ev.kind in {"fault", "oom"} for ev in self.evidence):
                time.sleep(0.01)
        if self.target_log is not None:
            # the follower (tail -F) may lag the death by a few ms: wait for the log to go quiet, and for
            # the message a SIGABRT death printed
            quiet_since = time.time()
            while left() > 0:
                last = self.target_log.last_line_at or 0.0
                want_abort = self.process.exit_rc == -6 and not any(ev.kind == "abort" for ev in self.evidence)
                if time.time() - max(last, quiet_since) >= (1.0 if want_abort else 0.2):
                    break
                time.sleep(0.02)
        time.sleep(min(0.05, left()))  # a `Code:` line
        kernel = self._kernel_slice()
        tail = self.target_log.tail(100) if self.target_log is not None else []
        with self._lock:
            for ev in self._evidence:
                ev.kernel_lines = kernel or ev.kernel_lines
                ev.log_tail = tail or ev.log_tail
        return self.evidence

    def notice_exit(self, rc: int | None) -> None:
        """The owner saw the target exit (e.g. its own `wait()` returned): record the code if still unknown."""
        with self._lock:
            for ev in self._evidence:
                if ev.kind == "exit":
                    if ev.exit_rc is None and rc is not None:
                        ev.exit_rc = rc
                        ev.summary = f"target exited: {describe_returncode(rc)}"
                    return
        self._on_exit(rc)

    # --- evidence ---------------------------------------------------------------------------------

    def _add(self, ev: CrashEvidence) -> None:
        if self._stopped:
            return  # a late verdict or line after a deliberate stop is no crash
        ev.maps = self.identity.snapshot_maps()
        if self.kernel is not None:
            ev.kernel_lines = self._kernel_slice()
        if self.target_log is not None:
            ev.log_tail = self.target_log.tail(100)
        with self._lock:
            self._evidence.append(ev)
            first = not self.crashed.is_set()
            if first:
                self.detected_at = time.time()
                self.crashed.set()
        level = logging.ERROR if first else logging.INFO
        log.log(level, "%s: target pid %d: %s (%s)", self.host.name, self.pid, ev.summary, ev.source)

    def _on_kernel_record(self, rec: KernelRecord) -> None:
        code = parse_code_line(rec)
        if code is not None:
            if self._last_fault is not None and self._last_fault.code is None:
                self._last_fault.code = code
            return
        supp = parse_suppressed(rec)
        if supp is not None:
            self.suppressed.append(supp)
            if supp[0] == "show_signal_msg":
                self.warnings.append(f"the kernel dropped {supp[1]} fault lines (show_signal_msg ratelimit): "
                                     "a fault of the target may have no kernel line")
            return
        fault = parse_fault(rec)
        if fault is None:
            return
        self._last_fault = fault
        verdict = self.identity.judge(fault)
        if verdict.ours is None:
            # Settle it off the kernel thread so the next record (a Code: line, our own fault) is not delayed.
            threading.Thread(target=self._settle, args=(fault, verdict), name="watch:attribute", daemon=True).start()
            return
        self._judged(fault, verdict)

    def _settle(self, fault: UserFault, verdict: Verdict) -> None:
        def exit_rc() -> int | None:
            # the exit code follows the death by a few ms (pidfd, then waitpid)
            self.process.exited.wait(0.5)
            return self.process.exit_rc

        self._judged(fault, confirm_by_death(verdict, self.process.wait_exit, self.death_grace_s,
                                             fault_signal=fault.signal, exit_rc=exit_rc))

    def _kernel_slice(self) -> list[str]:
        """The target's lines among the last kernel lines, and what surrounds them (`target_kernel_lines`)."""
        if self.kernel is None:
            return []
        with self._lock:
            own, foreign = set(self._own_lines), set(self._foreign_lines)
        return target_kernel_lines(self.kernel.lines()[-KERNEL_LINES:], self.identity.known_tids(), own=own,
                                   foreign=foreign)

    def _judged(self, fault: UserFault, verdict: Verdict) -> None:
        with self._lock:
            (self._own_lines if verdict.ours else self._foreign_lines).add(fault.message)
        if not verdict.ours:
            self.unrelated.append((fault, verdict.reason))
            log.info("%s: unrelated fault, not ours: %s (%s)", self.host.name, fault.describe(), verdict.reason)
            return
        kind = "oom" if fault.kind == "oom-kill" else "fault"
        self._add(CrashEvidence(kind, fault.describe(), f"kernel log ({self.kernel_source})", fault=fault,
                                attribution=verdict.reason))

    def _on_abort(self, abort: AbortMessage) -> None:
        self._add(CrashEvidence("abort", f"{abort.kind}: {abort.text}", "target log", abort=abort,
                                attribution="printed by the target on its way to SIGABRT"))

    def _on_finding(self, finding: Finding) -> None:
        with self._lock:
            self._findings.append(finding)
        log.warning("%s: finding in target log (%s): %s", self.host.name, finding.pattern, finding.line)

    def _on_exit(self, rc: int | None) -> None:
        if self._stopped:
            return
        self._add(CrashEvidence("exit", f"target exited: {describe_returncode(rc)}" if rc is not None
                                else "target exited (exit code unknown)", "process", exit_rc=rc))

    def _on_hang(self, silent_s: float) -> None:
        hang_s = self.process.hang_after_s
        self._add(CrashEvidence("hang", f"no probe answer for {silent_s:.1f} s", "probe", hang_s=hang_s,
                                attribution=f"{self.process.probe_failures} probes failed or timed out"))
