"""The `Host` interface: run a command, read/write files, start a long-lived process, follow output.

Everything that touches a machine (the target, bdev setup, the watchdog) is written against this
interface only, so the same code drives this machine, a netns test node, a lab box or a Terraform node.
"""

from __future__ import annotations

import queue
import shlex
import signal
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from harness.errors import HostError

Argv = Sequence[str] | str


def argv_text(argv: Argv) -> str:
    """A command as a user would paste it into a shell."""
    return argv if isinstance(argv, str) else shlex.join(argv)


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit code and its whole output."""

    argv: str
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self, host: str = "") -> CommandResult:
        """Raise a one-line HostError quoting the command and its stderr unless it succeeded."""
        if self.rc != 0:
            where = f"{host}: " if host else ""
            tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise HostError(f"{where}`{self.argv}` exited {self.rc}: {tail[0]}")
        return self


def describe_returncode(rc: int | None) -> str:
    """`exit 0`, `exit 3`, `signal SIGSEGV` or `running`: the same words everywhere in reports."""
    if rc is None:
        return "running"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    if rc > 128 and rc - 128 in {s.value for s in signal.Signals}:
        # A shell or ssh reports death by signal as 128+N.
        return f"signal {signal.Signals(rc - 128).name}"
    return f"exit {rc}"


class HostProcess(ABC):
    """A long-lived process on a host (the target), whose output goes to a log file on that host."""

    pid: int
    argv: str
    log_path: str

    @abstractmethod
    def poll(self) -> int | None:
        """Exit code, negative for death by signal (-11 for SIGSEGV), None while it runs."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds; the exit code, or None if it still runs."""

    @abstractmethod
    def send_signal(self, sig: int) -> None:
        """Deliver `sig` to the process; a no-op if it has already exited."""

    def describe_exit(self) -> str:
        return describe_returncode(self.poll())


class LineStream:
    """Lines from a byte stream, read by a daemon thread so a follower can wait with a timeout.

    Backends hand in any blocking binary reader (a pipe, a file, an SSH channel file).
    """

    _EOF = object()

    def __init__(self, reader: IO[bytes], name: str, on_close: object | None = None) -> None:
        self.name = name
        self._reader = reader
        self._on_close = on_close
        self._lines: queue.Queue[object] = queue.Queue()
        self.eof = False
        self._thread = threading.Thread(target=self._pump, name=f"follow:{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for raw in iter(self._reader.readline, b""):
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(self._EOF)

    def get(self, timeout: float | None = None) -> str | None:
        """The next line, or None when none came within `timeout` or the stream ended (see `eof`)."""
        if self.eof:
            return None
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._EOF:
            self.eof = True
            return None
        assert isinstance(item, str)
        return item

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.get()
            if line is None:
                return
            yield line

    def close(self) -> None:
        if callable(self._on_close):
            self._on_close()
        try:
            self._reader.close()
        except OSError:
            pass


class Host(ABC):
    """A machine the harness drives. Subclasses: `LocalHost`, `SshHost`."""

    name: str

    @property
    def is_local(self) -> bool:
        return False

    @abstractmethod
    def run(
        self,
        argv: Argv,
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> CommandResult:
        """Run a command to completion; a string runs through `sh -c`. Never raises on a non-zero exit."""

    @abstractmethod
    def read_file(self, path: str) -> bytes: ...

    @abstractmethod
    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None: ...

    @abstractmethod
    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        core_unlimited: bool = False,
    ) -> HostProcess:
        """Start a long-lived process with stdout and stderr appended, whole, to `log_path` on the host."""

    @abstractmethod
    def follow_command(self, argv: Argv) -> LineStream:
        """Run a command and stream its stdout line by line (e.g. `journalctl -k -f`)."""

    @abstractmethod
    def connect_unix(self, path: str, timeout: float = 5.0) -> socket.socket:
        """A connected stream socket to a Unix socket on the host (locally, or tunnelled over SSH)."""

    @abstractmethod
    def fetch_file(self, path: str, local_path: str) -> None:
        """Copy a file from the host to this machine (crash evidence: cores, logs)."""

    # Conveniences written only on top of `run`, so every backend has them.

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).rc == 0

    def makedirs(self, path: str) -> None:
        self.run(["mkdir", "-p", path]).check(self.name)

    def private_dir(self, prefix: str = "lvol-storm") -> str:
        """A fresh directory only the login user may enter, for a target's work (socket, log, cores): made by
        `mktemp -d` under /tmp, so its name cannot be guessed and it is 0700 and the login user's own, not a
        fixed /tmp path another user could make first (or root's, through sudo)."""
        result = self.run(["mktemp", "-d", f"/tmp/{prefix}.XXXXXXXXXX"]).check(self.name)
        return result.stdout.strip()

    def remove(self, path: str) -> None:
        self.run(["rm", "-f", path])

    def which(self, program: str) -> str | None:
        result = self.run(["sh", "-c", f"command -v {shlex.quote(program)}"])
        return result.stdout.strip() or None if result.ok else None

    def follow_file(self, path: str, from_start: bool = True) -> LineStream:
        """Follow a growing file (the target's log) like `tail -F`."""
        start = "+1" if from_start else "0"
        return self.follow_command(["tail", "-n", start, "-F", path])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
