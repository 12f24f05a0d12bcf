"""A 10.213.<octet>.0/24 for one test's namespaces, claimed so that a second `make test` running beside this one
cannot pick it too.

Checking `ip addr` alone is check-then-use: two runs pick the same free octet before either applies, and one
node-up refuses the address ("already in use on this machine"). A claim is an exclusive flock on a file per
octet, held by this pytest process until it exits (the kernel drops it even on SIGKILL).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

CLAIMS = Path("/run/lvol-storm/test-octets")
_held: dict[tuple[Path, int], int] = {}  # (claims dir, octet) -> the open fd that holds its lock


def claim_octet(low: int, high: int, offset: int = 0, claims: Path = CLAIMS) -> int:
    """An octet in [low, high] no address on this machine uses and no other test process has claimed; this
    process keeps it (a later call in the same process gets another). `claims` is the lock directory (a test
    of this helper passes its own)."""
    claims.mkdir(parents=True, exist_ok=True)
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    span = high - low + 1
    for k in range(span):
        octet = low + (os.getpid() + offset + k) % span  # pid-chosen start: runs stay apart
        if (claims, octet) in _held or f" 10.213.{octet}." in used:
            continue
        fd = os.open(claims / f"{octet}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held[(claims, octet)] = fd
        return octet
    raise AssertionError(f"no free 10.213.x.0/24 between {low} and {high} (all in use or claimed by other tests)")
