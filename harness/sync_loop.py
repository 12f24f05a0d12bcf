"""`run_sync`: a coroutine (a storm, a replay) run from synchronous code on a loop of its own, as
`asyncio.run` does, except that an interrupt leaves the interrupt behind it and not asyncio's own error.

The face's second Ctrl-C/SIGTERM raises `Interrupted` wherever the main thread is, inside the loop too. When it
lands just as the main task finishes, that task has already queued the callback that stops the loop; then
`asyncio.run`'s clean-up (cancel what is left, and wait for it) is stopped by that stale callback and raises
`RuntimeError: Event loop stopped before Future completed` over the interrupt: a traceback and exit 1 instead
of the one line and exit 130. Here the wait for the cancelled tasks simply runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a fresh event loop; every task it left is cancelled and awaited, and the loop
    closed, however it ended."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_left_over(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_left_over(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    for _ in range(2):  # the first wait may be ended by a stop() the interrupted run left queued
        try:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            return
        except RuntimeError as exc:
            if "stopped before Future completed" not in str(exc):
                raise
