"""What the reference target's method handlers hand back to its server besides a result.

`RpcFault` is an error reply exactly as `spdk_tgt` would send it; `SimulatedCrash` asks the server to die
for real, the way SPDK dies (a genuine SIGSEGV, SIGABRT, hang or exit), so the watchdog sees real evidence;
`DeferredReply` is a reply SPDK sends from a completion callback, after the RPC handler has returned.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

ERROR_INVALID_STATE = -1
ERROR_INVALID_PARAMS = -32602
ERROR_INTERNAL = -32603
ERROR_METHOD_NOT_FOUND = -32601


class RpcFault(Exception):
    """A JSON-RPC error reply: `{"code": code, "message": message}` (codes as the recordings show them)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def fault(err: int, code: int | None = None) -> RpcFault:
    """An error reply carrying strerror(err): code -err unless SPDK sends it with a JSON-RPC code."""
    return RpcFault(-err if code is None else code, os.strerror(err))


def no_device() -> RpcFault:
    return fault(errno.ENODEV)


@dataclass
class SimulatedCrash(Exception):
    """The handler reached a state where the real target dies.

    kind: `segv` (dereference `address` in a thread named `thread_name`), `abort` (print `stderr_text`,
    then SIGABRT), `hang` (stop answering every connection), `exit` (exit with `exit_code`).
    `log_lines` are written to the target log first, as SPDK would have printed them.
    """

    kind: str
    address: int = 8
    thread_name: str = "reactor_0"
    stderr_text: str = ""
    exit_code: int = 0
    log_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(f"simulated {self.kind}")


@dataclass
class DeferredReply:
    """A reply that waits for a background job: SPDK answers `bdev_lvol_register_snapshot_checksum` from the
    job's completion callback (vbdev_lvol_rpc.c), so a delete sent behind it is answered first. The server asks
    `ready()` once per poll and then sends `result()`, or the RpcFault it raises."""

    ready: Callable[[], bool]
    result: Callable[[], object]
