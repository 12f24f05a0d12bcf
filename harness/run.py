"""One run, end to end: target up, watchdog on, lvstore made, storm, checks, evidence saved, then teardown.

The order is the point: crash evidence (kernel lines, target log, core, backtrace, last operations) is on disk
before anything is torn down, and teardown never hides a dead target by cleaning up after it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import harness
from harness.bdev import BaseBdev, Lvstore, verify_clean
from harness.config import RunConfig, load_config
from harness.errors import HarnessError, TargetError
from harness.history import History
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.rundir import RunDir, default_run_dir
from harness.session import TargetNeeds, TargetSession
from harness.storm.config import check_against_lvstore
from harness.storm.engine import StormResult, run_storm_sync
from harness.target import SIM_BANNER, Target
from harness.watch.watchdog import Watchdog

Announce = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunOutcome:
    """What a run ended with; `exit_code` follows the CLI's convention."""

    run_dir: Path
    summary: dict[str, Any]
    crash_titles: dict[str, int] = field(default_factory=dict)
    crash_dirs: list[Path] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    storm: StormResult | None = None

    @property
    def exit_code(self) -> int:
        from harness.cli import EXIT_CRASH, EXIT_FINDINGS, EXIT_OK

        if self.crash_titles:
            return EXIT_CRASH
        return EXIT_FINDINGS if self.findings else EXIT_OK


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
        minimized_titles: set[str] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.host = host or LocalHost()
        self.stop_event = stop_event or threading.Event()
        self.announce = announce
        self.progress = progress
        self.work_dir = work_dir or str(run_dir.path)
        self.session: TargetSession | None = None
        self.notes: list[str] = []
        self.minimized_titles = minimized_titles if minimized_titles is not None else set()
        """Titles already minimized (share one set across incarnations: each title is minimized once)."""

    # -- the run ----------------------------------------------------------------------------------------

    @property
    def target(self) -> Target | None:
        return self.session.target if self.session is not None else None

    @property
    def watchdog(self) -> Watchdog | None:
        return self.session.watchdog if self.session is not None else None

    @property
    def history(self) -> History | None:
        return self.session.history if self.session is not None else None

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
            announce=self.announce, notes=self.notes)
        with session:
            for warning in session.watchdog.warnings if session.watchdog is not None else []:
                self.announce(f"watchdog: {warning}")
            try:
                storm = self._storm(session)
            finally:
                crash_dirs = self._save_evidence(session, storm.stop_reason if storm else None)
                if not crash_dirs:
                    findings.extend(self._teardown(session))
        if session.watchdog is not None:
            findings.extend({"kind": "target-log", "message": f.line, "pattern": f.pattern}
                            for f in session.watchdog.findings)
        if storm is not None:
            findings[:0] = [f.to_dict() for f in storm.findings]
        titles: dict[str, int] = {}
        if session.report is not None:
            titles[session.report.title] = 1
        summary = self._summary(t0, storm, findings, titles, crash_dirs)
        self.run_dir.write_json("summary.json", summary)  # on disk before minimizing, which may take minutes
        self._write_report()
        minimized = self._minimize(crash_dirs)
        if minimized:
            summary["minimized"] = minimized
            self.run_dir.write_json("summary.json", summary)
            self._write_report()
        return RunOutcome(self.run_dir.path, summary, titles, crash_dirs, findings, storm)

    def _minimize(self, crash_dirs: list[Path]) -> list[dict[str, Any]]:
        """Cut each NEW crash title's history to a minimal reproducer (harness.minimize), after the evidence is
        saved and the run's target is gone; `minimize.enabled: false` (or --no-minimize) skips it."""
        cfg = self.config.minimize
        if not crash_dirs or not cfg.enabled:
            return []
        from harness.minimize.crash import minimize_crash

        done: list[dict[str, Any]] = []
        for path in crash_dirs:
            crash = json.loads((path / "crash.json").read_text())
            title = crash.get("title")
            if not title or crash.get("duplicate_of") or title in self.minimized_titles:
                continue
            self.minimized_titles.add(title)
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
                         "seconds": round(result.seconds, 1)})
        return done

    def _write_report(self) -> None:
        """report.html beside summary.json; a report that cannot be drawn is a note, never a lost run."""
        from harness.report.html import write_report_html

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
            run_dir=self.run_dir.path, crashed=session.watchdog.crashed, progress=self.progress,
        )

    def _save_evidence(self, session: TargetSession, stop_reason: str | None = None) -> list[Path]:
        """Write the crash report while everything is still there; before any teardown."""
        if not session.wait_for_death(lost_target=stop_reason in ("connection_lost", "unresponsive")):
            return []
        path = session.save_crash()
        if path is None or session.report is None:
            return []
        self.announce(f"CRASH: {session.report.title}\n  report: {path}")
        return [path]

    def _teardown(self, session: TargetSession) -> list[dict[str, Any]]:
        """Delete lvols children-first, the lvstore and the bdev; leftovers are findings, not silence."""
        problems: list[str] = []
        if not session.alive() or not hasattr(self, "lvstore"):
            return []
        try:
            with SyncRpc(self.host, session.sock_path, history=session.history, timeout=30.0) as rpc:
                problems += self.lvstore.teardown(rpc)
                self.bdev.delete(rpc)
                problems += verify_clean(rpc, self.bdev.bdev_name)
        except HarnessError as exc:
            problems.append(f"teardown failed: {exc}")
        return [{"kind": "teardown", "message": p} for p in problems]

    def _summary(self, t0: float, storm: StormResult | None, findings: list[dict[str, Any]],
                 titles: dict[str, int], crash_dirs: list[Path]) -> dict[str, Any]:
        target = self.target
        assert target is not None and self.history is not None
        hist = self.history.summary()
        return {
            "harness_version": harness.__version__,
            "profile": self.config.profile,
            "seed": self.config.storm.seed,
            "target": {**target.info.to_dict(), "reference_target": target.is_sim,
                       "methods": len(target.info.methods)},
            "kernel_log": self.watchdog.kernel_source if self.watchdog else "not followed",
            "wall_s": round(time.time() - t0, 3),
            "storm": storm.to_dict() if storm else None,
            "ops_by_method": hist.get("ops_by_method", {}),
            "errors_by_errno": hist.get("errors_by_errno", {}),
            "findings": findings,
            "crashes": [{"title": t, "count": n} for t, n in titles.items()],
            "crash_dirs": [str(p) for p in crash_dirs],
            "notes": self.notes,
            "config": self.config.model_dump(mode="json"),
        }


@contextmanager
def interrupt_sets(event: threading.Event) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) asks the storm to drain and check; a second one interrupts at once."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        _stderr(f"lvol-storm: {signal.Signals(signum).name}: stopping the storm, draining, checking, saving "
                "(again to abort)")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def print_summary(outcome: RunOutcome) -> None:
    """The table `make storm` ends with; the same numbers as summary.json."""
    from rich.console import Console
    from rich.table import Table

    s = outcome.summary
    console = Console(stderr=False)
    tgt = s["target"]
    if tgt.get("reference_target"):
        console.print(f"[bold yellow]{SIM_BANNER}[/]")
    storm = s.get("storm") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("target", f"{tgt['kind']} {tgt.get('version', '')} ({tgt.get('exit')})")
    head.add_row("run dir", str(outcome.run_dir))
    head.add_row("seed", str(s["seed"]))
    head.add_row("wall time", f"{s['wall_s']:.1f} s")
    head.add_row("ops", f"{storm.get('ops', 0)} ({storm.get('ops_per_s', 0)} ops/s), stop: {storm.get('stop_reason')}")
    head.add_row("kernel log", s["kernel_log"])
    console.print(head)
    methods = Table(title="operations by method", show_edge=False)
    methods.add_column("method")
    methods.add_column("ops", justify="right")
    for m, n in sorted(s["ops_by_method"].items(), key=lambda kv: -kv[1]):
        methods.add_row(m, str(n))
    console.print(methods)
    if s["errors_by_errno"]:
        errs = Table(title="errors by errno", show_edge=False)
        errs.add_column("errno")
        errs.add_column("count", justify="right")
        for e, n in sorted(s["errors_by_errno"].items(), key=lambda kv: -kv[1]):
            errs.add_row(e, str(n))
        console.print(errs)
    for crash in s["crashes"]:
        console.print(f"[bold red]CRASH[/] {crash['title']} x{crash['count']}")
    for f in s["findings"][:20]:
        console.print(f"[bold red]FINDING[/] {f.get('kind')}: {f.get('message')}")
    if len(s["findings"]) > 20:
        console.print(f"... and {len(s['findings']) - 20} more findings in summary.json")
    verdict = {0: "[green]clean[/]", 1: "[red]findings[/]", 3: "[bold red]crash[/]"}[outcome.exit_code]
    console.print(f"verdict: {verdict}")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    from harness.pytest_plugin import cli_overrides

    return load_config(args.profile or "default", overrides=args.lvs_set,
                       cli=cli_overrides(lambda name: getattr(args, name, None)))


def main_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # --no-minimize arrives as minimize.enabled=false
    run_dir = RunDir(args.run_dir or default_run_dir(config.profile))
    stop = threading.Event()
    with interrupt_sets(stop):
        try:
            outcome = StormRun(config, run_dir, stop_event=stop).execute()
        except TargetError as exc:
            _stderr(f"lvol-storm: {exc}")
            from harness.cli import EXIT_TARGET

            return EXIT_TARGET
    print_summary(outcome)
    return outcome.exit_code
