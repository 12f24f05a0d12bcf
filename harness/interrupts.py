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
    """The second signal: abort now (teardown still runs as the stack unwinds)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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

