"""The watchdog's hang probe: `spdk_get_version` on a connection of its own, reopened after any failure.

A target that answers nothing for `hang_after_s` is hung; the probe keeps one connection (a new one per call
would measure connection setup, and an SPDK poller that stopped may still accept), and a failed call drops it
so the next try reconnects.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.hosts.base import Host
from harness.rpc.sync import SyncRpc


def version_probe(host: Host, sock_path: str) -> Callable[[], bool]:
    """A probe for `Watchdog(probe=...)`: True when the target answered `spdk_get_version`."""
    held: list[SyncRpc] = []

    def probe() -> bool:
        try:
            if not held:
                held.append(SyncRpc(host, sock_path, timeout=5.0, connect_timeout=2.0))
            held[0].call("spdk_get_version")
            return True
        except Exception:
            if held:
                held.pop().close()
            return False

    return probe
