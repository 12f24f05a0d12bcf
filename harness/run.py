"""`StormRun`: one run end to end: target session up, lvstore made, storm, checks, evidence saved, teardown.

The order is the point: crash evidence (kernel lines, target log, core, backtrace, last operations) is on disk
before anything is torn down, and teardown never hides a dead target by cleaning up after it. `summary.json`
is written before minimizing starts (a search may take minutes), and again after it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bdev import BaseBdev, Lvstore, verify_clean
from harness.config import RunConfig
from harness.crash_budget import CrashBudget
from harness.errors import HarnessError, Stopped
from harness.history import History
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.minimize.crash import minimize_crash
from harness.outcome import ExitCode, Verdict, exit_code_of, verdict_of
from harness.report.html import write_report_html
from harness.report.title import crash_key, killed_from_outside
from harness.rpc.errors import RpcAbandoned, RpcConnectionLost, RpcTimeout
from harness.rpc.sync import SyncRpc
from harness.rundir import RunDir
from harness.session import TargetNeeds, TargetSession
from harness.storm.config import check_against_lvstore
from harness.storm.engine import StormResult, run_storm_sync
from harness.summary import Summary, crash_counts
from harness.target import Target
from harness.watch.watchdog import Watchdog

Announce = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunOutcome:
    """What a run ended with: its summary (the verdict in it) and where its crash reports are."""

    run_dir: Path
    summary: Summary
    crash_dirs: list[Path] = field(default_factory=list)
    storm: StormResult | None = None
    offered: set[str] = field(default_factory=set)
    """What the target's rpc_get_methods listed."""

    @property
    def crash_titles(self) -> dict[str, int]:
        return self.summary.crash_titles()

    @property
    def findings(self) -> list[dict[str, Any]]:
        return self.summary.findings

    @property
    def verdict(self) -> Verdict:
        return Verdict(self.summary.verdict)

    @property
    def exit_code(self) -> ExitCode:
        return exit_code_of(self.verdict)


class StormRun:
    """Drives one target incarnation through a storm; `execute()` never leaves a process or socket behind."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: RunDir,
        host: Host | None = None,
        *,
        stop_event: threading.Event | None = None,
        announce: Announce = _stderr,
        progress: bool | None = None,
        work_dir: str | None = None,
        minimized_keys: set[str] | None = None,
        defer_minimize: bool = False,
        budget: CrashBudget | None = None,
    ) -> None:
        """`defer_minimize`: `execute()` returns with the evidence and the verdict, and the caller minimizes
        later with `minimize_new_crashes()` (a suite reports the failure first, then minimizes)."""
        self.config = config
        self.run_dir = run_dir
        self.host = host or LocalHost()
        self.stop_event = stop_event or threading.Event()
        self.announce = announce
        self.progress = progress
        self.work_dir = work_dir or str(run_dir.path)
        self.session: TargetSession | None = None
        self.notes: list[str] = []
        self.minimized_keys = minimized_keys if minimized_keys is not None else set()
        """Crash keys already minimized (share one set across incarnations: each bug is minimized once)."""
        self.defer_minimize = defer_minimize
        self.budget = budget
        """A long run's crash budget: a repeat of a key seen often enough keeps no core (harness.crash_budget)."""
        self.outcome: RunOutcome | None = None

    @property
    def target(self) -> Target | None:
        return self.session.target if self.session is not None else None

    @property
    def watchdog(self) -> Watchdog | None:
        return self.session.watchdog if self.session is not None else None

    @property
    def history(self) -> History | None:
        return self.session.history if self.session is not None else None

    # -- the run ----------------------------------------------------------------------------------------

    def execute(self) -> RunOutcome:
        cfg = self.config
        self.run_dir.config.write_text(cfg.dump_yaml())
        t0 = time.time()
        storm: StormResult | None = None
        findings: list[dict[str, Any]] = []
        crash_dirs: list[Path] = []
        session = self.session = TargetSession(
            self.host, cfg.target, self.work_dir,
            needs=TargetNeeds.of_run(cfg.bdev, cfg.storm, cfg.lvstore.cluster_size), watch=cfg.watch,
            evidence_dir=self.run_dir.path, history_path=self.run_dir.history_for(cfg.history.compress),
            announce=self.announce, notes=self.notes, stop=self.stop_event)
        try:
            with session:
                for warning in session.watchdog.warnings if session.watchdog is not None else []:
                    self.announce(f"watchdog: {warning}")
                try:
                    storm = self._storm(session)
                finally:
                    stop_reason = storm.stop_reason if storm else None
                    crash_dirs = self._save_evidence(session, stop_reason, wait_s=self._hang_wait_s
                                                     if stop_reason == "unresponsive" else 0.0)
                    if not crash_dirs:
                        problems, stalled = self._teardown(session)
                        if stalled:  # the target stopped answering in teardown: the watchdog says what it was
                            crash_dirs = self._save_evidence(session, "unresponsive", wait_s=self._hang_wait_s)
                        if not crash_dirs:
                            findings.extend(problems)
        except Stopped as exc:  # the first Ctrl-C came while the target started: interrupted, nothing ran
            self.notes.append(str(exc))
        if session.watchdog is not None:
            findings.extend({"kind": "target-log", "message": f.line, "pattern": f.pattern}
                            for f in session.watchdog.findings)
        if storm is not None:
            findings[:0] = [f.to_dict() for f in storm.findings]
        titles = {session.report.title: 1} if session.report is not None else {}
        summary = self._summary(t0, storm, findings, titles, crash_dirs)
        self.run_dir.write_json("summary.json", summary.to_json())  # before minimizing, which may take minutes
        self._write_report()
        self.outcome = RunOutcome(self.run_dir.path, summary, crash_dirs, storm, session.methods)
        if not self.defer_minimize:
            self.minimize_new_crashes()
        return self.outcome

    def minimize_new_crashes(self) -> list[dict[str, Any]]:
        """Cut each NEW crash key's history to a minimal reproducer (harness.minimize), after the evidence is
        saved and the run's target is gone; `minimize.enabled: false` (or --no-minimize) skips it, and so does
        a death from outside (SIGKILL by someone else: no bug to reproduce)."""
        outcome = self.outcome
        cfg = self.config.minimize
        if outcome is None or not outcome.crash_dirs or not cfg.enabled:
            return []
        done: list[dict[str, Any]] = []
        for path in outcome.crash_dirs:
            crash = json.loads((path / "crash.json").read_text())
            title = crash.get("title")
            if not title or crash.get("duplicate_of") or crash_key(title) in self.minimized_keys:
                continue
            if killed_from_outside(title):
                self.notes.append(f"minimize {path.name}: not minimized: {title} (nothing of the storm's to cut)")
                continue
            self.minimized_keys.add(crash_key(title))
            self.announce(f"minimizing {path.name} (budget {cfg.budget_s:g} s; --no-minimize to skip)")
            try:
                result = minimize_crash(path, self.config.target, cfg.budget_s, config=cfg, host=self.host,
                                        progress=self.announce, kernel_log=self.config.watch.kernel_log,
                                        hang_after_s=self.config.watch.hang_after_s, stop=self.stop_event)
            except HarnessError as exc:
                self.notes.append(f"minimize {path.name}: {exc}")
                continue
            done.append({"crash_dir": str(path), "ops_before": result.ops_before, "ops_after": result.ops_after,
                         "rate": f"{result.rate[0]}/{result.rate[1]}", "reproduced": result.reproduced,
                         "seconds": round(result.seconds, 1), "tries": result.tries_spent,
                         "stop_reason": result.stop_reason})
        if done or self.notes != outcome.summary.notes:
            extra = {"minimized": done} if done else {}
            outcome.summary = outcome.summary.model_copy(update={"notes": list(self.notes), **extra})
            self.run_dir.write_json("summary.json", outcome.summary.to_json())
            self._write_report()
        return done

    def _write_report(self) -> None:
        """report.html beside summary.json; a report that cannot be drawn is a note, never a lost run."""
        try:
            write_report_html(self.run_dir.path)
        except Exception as exc:  # the run's verdict and files stand without the page
            self.announce(f"report.html not written: {type(exc).__name__}: {exc}")

    def _storm(self, session: TargetSession) -> StormResult | None:
        cfg = self.config
        assert session.history is not None and session.watchdog is not None
        with SyncRpc(self.host, session.sock_path, history=session.history, timeout=cfg.target.rpc_timeout_s) as rpc:
            self.bdev = BaseBdev(self.host, cfg.bdev, self.work_dir)
            self.bdev.create(rpc)
            self.lvstore = Lvstore(cfg.lvstore, self.bdev.bdev_name)
            info = self.lvstore.create(rpc)
            check_against_lvstore(cfg.storm, cluster_size=info["cluster_size"],
                                  total_data_clusters=info["total_data_clusters"],
                                  free_clusters=info["free_clusters"])
        if self.stop_event.is_set():
            return None
        return run_storm_sync(
            cfg.storm, host=self.host, sock_path=session.sock_path, lvs_name=self.lvstore.name,
            history=session.history, stop_event=self.stop_event, capabilities=session.methods,
            run_dir=self.run_dir.path, crashed=session.watchdog.crashed, progress=self.progress, io=cfg.io,
        )

    @property
    def _hang_wait_s(self) -> float:
        """Long enough for the watchdog to call a silent target hung."""
        return self.config.watch.hang_after_s + self.config.watch.probe_interval_s + 1.0

    def _save_evidence(self, session: TargetSession, stop_reason: str | None = None,
                       wait_s: float = 0.0) -> list[Path]:
        """Write the crash report while everything is still there; before any teardown."""
        if not session.wait_for_death(lost_target=stop_reason in ("connection_lost", "unresponsive"),
                                      settle_s=wait_s):
            return []
        path = session.save_crash(budget=self.budget)
        if path is None or session.report is None:
            return []
        self.announce(f"CRASH: {session.report.title}\n  report: {path}")
        return [path]

    def _teardown(self, session: TargetSession) -> tuple[list[dict[str, Any]], bool]:
        """Delete lvols children-first, the lvstore and the bdev; leftovers are findings, not silence. Every
        call gives up the moment the watchdog calls the target dead or hung, and waits no longer than the hang
        threshold: `stalled` says the target stopped answering (the caller asks the watchdog what it was)."""
        problems: list[str] = []
        if not session.alive() or not hasattr(self, "lvstore"):
            return [], False
        stalled = False
        abort = session.watchdog.crashed if session.watchdog is not None else None
        try:
            with SyncRpc(self.host, session.sock_path, history=session.history, abort=abort,
                         timeout=min(30.0, self._hang_wait_s)) as rpc:
                problems += self.lvstore.teardown(rpc)
                self.bdev.delete(rpc)
                problems += verify_clean(rpc, self.bdev.bdev_name)
        except (RpcAbandoned, RpcTimeout, RpcConnectionLost) as exc:
            stalled = True
            problems.append(f"teardown failed: {exc}")
        except HarnessError as exc:
            problems.append(f"teardown failed: {exc}")
        return [{"kind": "teardown", "message": p} for p in problems], stalled

    def _summary(self, t0: float, storm: StormResult | None, findings: list[dict[str, Any]],
                 titles: dict[str, int], crash_dirs: list[Path]) -> Summary:
        session = self.session
        assert session is not None and session.history is not None
        hist = session.history.summary()
        ops_by_method = dict(hist.get("ops_by_method", {}))
        storm_ops = storm.ops if storm is not None else 0
        interrupted = self.stop_event.is_set()
        verdict = verdict_of(crashes=len(titles), findings=len(findings), ops=storm_ops,
                             interrupted=interrupted)
        return Summary(
            kind="run", verdict=verdict.value, passed=verdict is Verdict.CLEAN, profile=self.config.profile,
            seed=self.config.storm.seed,
            target={**session.info.to_dict(), "reference_target": session.is_sim, "methods": len(session.methods)},
            kernel_log=session.watchdog.kernel_source if session.watchdog else "not followed",
            started=t0, wall_s=round(time.time() - t0, 3), ops=sum(ops_by_method.values()),
            ops_per_s=storm.to_dict().get("ops_per_s", 0.0) if storm is not None else 0.0,
            ops_by_method=ops_by_method, errors_by_errno=dict(hist.get("errors_by_errno", {})),
            findings=findings, crashes=crash_counts(titles), crash_dirs=[str(p) for p in crash_dirs],
            notes=self.notes, config=self.config.model_dump(mode="json"),
            storm=storm.to_dict() if storm else None, interrupted=interrupted,
            io=storm.io if storm is not None else None,
        )
