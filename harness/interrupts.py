"""Ctrl-C and SIGTERM, for the faces: the first asks the run to drain, check and save; the second aborts.

Only a face installs this (the CLI for a command, the pytest plugin for a long run): the library below never
touches signal handlers, it only watches the `threading.Event` the first signal sets. The handler is the
run's for the whole run, through every phase (start-up, storm, checks, crash report, teardown, minimize), so
a second signal always aborts and the previous handler is always restored.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The second signal: abort now (teardown still runs as the stack unwinds); or, with `during_run` False,
    the first one outside a run, where there is nothing to drain."""

    def __init__(self, signum: int, *, during_run: bool = True) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.during_run = during_run


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def signals_end_the_command(*, process_exits_after: bool = False) -> Iterator[None]:
    """For a face's whole command: outside a run (parsing, loading the config, printing the summary) the first
    SIGINT/SIGTERM raises `Interrupted` at once, so the command ends as one line and exit 130, never a
    traceback or a silent death by SIGTERM; a run's `interrupt_sets` takes over inside and gives it back.

    `process_exits_after`: the command is the process's (not a caller's in-process call), so once it has
    answered a signal has nothing left to stop: it is ignored, and cannot cost the output still buffered or
    the exit status."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum, during_run=False)

    old = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN if process_exits_after else h)


@contextmanager
def interrupt_sets(event: threading.Event, *, say: Callable[[str], None] = _stderr,
                   what: str = "stopping the storm, draining, checking, saving") -> Iterator[threading.Event]:
    """Inside: the first SIGINT/SIGTERM sets `event` (and says so); the next raises `Interrupted`.

    Outside the main thread (where Python allows no handler) it only hands back the event."""
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():
            raise Interrupted(signum)
        event.set()
        say(f"lvol-storm: {signal.Signals(signum).name}: {what} (again to abort)")

    old = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield event
    finally:
        for s, h in old.items():
            signal.signal(s, h)

