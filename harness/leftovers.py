"""Leftovers of a harness that died: what a SIGKILL of the harness leaves on this machine, recorded while each
target session runs and undone by the next session that starts.

A killed harness takes its targets with it (PR_SET_PDEATHSIG, harness.hosts.local), but not what it changed
on the machine for them: the hugepages it reserved, the hugetlbfs it mounted, the socket and its lock, and
the machine-wide core_pattern pointing into its run. Each session writes one record under
`/run/lvol-storm/sessions/` for as long as it runs; a session starting finds the records of harness
processes that are gone and undoes what they say, exactly as the dead session's own teardown would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.hugepages import NR_HUGEPAGES
from harness.report.core import reap_core_pattern

SESSIONS_DIR = Path("/run/lvol-storm/sessions")


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid it names one
    process, not whichever later reused its number."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def running(pid: int | None, start: int | None) -> bool:
    return pid is not None and process_start(pid) is not None and process_start(pid) == start


@dataclass
class SessionRecord:
    """What one local target session holds on the machine until its teardown gives it back."""

    harness_host: str
    harness_pid: int
    harness_start: int | None
    target_pid: int | None = None
    target_start: int | None = None
    sock_path: str | None = None
    mount_dir: str | None = None
    hugepages_added: int = 0
    hugepages_set_to: int | None = None
    created: float = 0.0

    @classmethod
    def mine(cls) -> SessionRecord:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()), created=time.time())

    def path(self, directory: Path = SESSIONS_DIR) -> Path:
        return directory / f"{self.harness_host}-{self.harness_pid}-{id(self):x}.json"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @property
    def harness_gone(self) -> bool:
        return self.harness_host == socket.gethostname() and not running(self.harness_pid, self.harness_start)

    def undo(self, nr_hugepages: str = NR_HUGEPAGES) -> list[str]:
        """Give back what the dead session held; what was done, one line each. `nr_hugepages` is the sysctl's
        file (a test passes its own: the machine's is shared by every harness running here)."""
        done: list[str] = []
        if running(self.target_pid, self.target_start) and self.target_pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.target_pid, signal.SIGKILL)
                done.append(f"killed its target (pid {self.target_pid})")
        for path in (self.sock_path, f"{self.sock_path}.lock" if self.sock_path else None):
            if path and os.path.exists(path):
                with contextlib.suppress(OSError):
                    os.remove(path)
                    done.append(f"removed {path}")
        if self.mount_dir and _mounted(self.mount_dir):
            if subprocess.run(["umount", self.mount_dir], capture_output=True, timeout=30).returncode == 0:
                done.append(f"unmounted {self.mount_dir}")
        if self.hugepages_added and self.hugepages_set_to is not None:
            with contextlib.suppress(OSError, ValueError):
                current = int(Path(nr_hugepages).read_text().strip() or 0)
                if current == self.hugepages_set_to:  # only if nobody changed it since
                    Path(nr_hugepages).write_text(str(current - self.hugepages_added))
                    done.append(f"gave back {self.hugepages_added} hugepages")
        return done


def _mounted(path: str) -> bool:
    with contextlib.suppress(OSError):
        return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines()
                   if len(line.split()) > 1)
    return False


def reap(directory: Path = SESSIONS_DIR, nr_hugepages: str = NR_HUGEPAGES) -> list[str]:
    """Undo the records of harness processes on this machine that are gone; what was done, one line each."""
    done: list[str] = []
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            try:
                record = SessionRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if record.harness_gone:
                done += [f"harness pid {record.harness_pid} (gone): {what}" for what in record.undo(nr_hugepages)]
                with contextlib.suppress(OSError):
                    path.unlink()
    restored = reap_core_pattern()
    if restored:
        done.append(restored)
    return done
