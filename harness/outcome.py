"""How a run ended, as one word and one exit code: the only place that maps verdicts to exit codes.

Every face (the CLI, the pytest plugin, a crash dir's reproducer scripts) and every summary (a run, a fleet, a
long run) says the same thing with the same word: `summary.json`'s `verdict`, report.html's badge and the exit
status agree because they all come from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """`lvol-storm`'s exit status (documented in the README; scripts and CI jobs branch on it)."""

    OK = 0
    """Nothing found: no crash, no finding."""
    FINDINGS = 1
    """Wrong answers, leaked clusters, left-over lvols (or: minimize did not reproduce the crash)."""
    USAGE = 2
    """Bad input: a profile, flag, inventory, history file; nothing was started."""
    CRASH = 3
    """The target crashed (replay: the crash came back; a reproducer script: reproduced)."""
    TARGET = 4
    """The target could not be started or reached, or a node could not run."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C / SIGTERM before the run could say anything about the target."""


EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_CRASH, EXIT_TARGET, EXIT_INTERRUPTED = (
    ExitCode.OK, ExitCode.FINDINGS, ExitCode.USAGE, ExitCode.CRASH, ExitCode.TARGET, ExitCode.INTERRUPTED)
EXIT_REPRODUCED = ExitCode.CRASH
"""What every reproducer (repro.py, repro.min.py, repro.min.sh) exits with when the target died."""
EXIT_NOT_REPRODUCED = ExitCode.FINDINGS
"""`lvol-storm minimize` when the crash did not come back on replay."""


class Verdict(StrEnum):
    """One word per outcome, worst first in `SEVERITY`."""

    CLEAN = "clean"
    FINDINGS = "findings"
    CRASH = "crash"
    ERROR = "error"
    """The target (or a node) could not run: nothing can be said about the target."""
    INTERRUPTED = "interrupted"
    """Stopped before the storm sent anything: not clean, there was nothing to judge."""
    NOTHING_RAN = "nothing ran"
    """A selection or a long run that ran no storm at all (every test deselected, a zero-length run)."""
    RUNNING = "running"
    """A long run's rolling summary while it is still going."""


SEVERITY: tuple[Verdict, ...] = (Verdict.CRASH, Verdict.ERROR, Verdict.FINDINGS, Verdict.INTERRUPTED,
                                 Verdict.NOTHING_RAN, Verdict.CLEAN)
"""A merged verdict is the worst of its parts' (a crash on one node is the fleet's verdict)."""

_EXIT: dict[Verdict, ExitCode] = {
    Verdict.CLEAN: ExitCode.OK,
    Verdict.FINDINGS: ExitCode.FINDINGS,
    Verdict.CRASH: ExitCode.CRASH,
    Verdict.ERROR: ExitCode.TARGET,
    Verdict.INTERRUPTED: ExitCode.INTERRUPTED,
    Verdict.NOTHING_RAN: ExitCode.FINDINGS,
    Verdict.RUNNING: ExitCode.OK,
}


def verdict_of(*, crashes: int, findings: int, ops: int | None = None, error: bool = False,
               interrupted: bool = False) -> Verdict:
    """The verdict of one storm: a crash wins, then an error, then findings; a run that sent nothing because
    it was interrupted is `interrupted`, and one that sent nothing otherwise is `nothing ran`, never clean."""
    if crashes:
        return Verdict.CRASH
    if error:
        return Verdict.ERROR
    if findings:
        return Verdict.FINDINGS
    if ops is not None and ops <= 0:
        return Verdict.INTERRUPTED if interrupted else Verdict.NOTHING_RAN
    return Verdict.CLEAN


def worst(verdicts: Iterable[Verdict | str]) -> Verdict:
    """The merged verdict of several parts (nodes, incarnations, tests); no parts at all: nothing ran."""
    seen = {Verdict(v) for v in verdicts}
    if Verdict.RUNNING in seen:
        return Verdict.RUNNING
    for verdict in SEVERITY:
        if verdict in seen:
            return verdict
    return Verdict.NOTHING_RAN


def exit_code_of(verdict: Verdict | str, *, usage_error: bool = False) -> ExitCode:
    """The exit status for a verdict; an error caused by bad input (a node's config) is a usage error."""
    verdict = Verdict(verdict)
    if verdict is Verdict.ERROR and usage_error:
        return ExitCode.USAGE
    return _EXIT[verdict]


def passed(verdict: Verdict | str) -> bool:
    """What a CI badge shows green: only a clean run."""
    return Verdict(verdict) is Verdict.CLEAN
