"""`LocalHost`: the machine pytest runs on, through subprocess and plain files."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import HostError
from harness.hosts.base import Argv, CommandResult, Host, HostProcess, LineStream, argv_text

_LIVE: weakref.WeakSet[LocalProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """A harness that exits (an error, a timeout, a second Ctrl-C) must not leave targets running behind it."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


class LocalProcess(HostProcess):
    """A child process of the harness; it gets its own process group so teardown can reap helpers too."""

    def __init__(self, popen: subprocess.Popen[bytes], argv: str, log_path: str) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.argv = argv
        self.log_path = log_path
        _LIVE.add(self)

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            try:
                self._popen.send_signal(sig)
            except ProcessLookupError:
                pass


def _unlimited_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class LocalHost(Host):
    """This machine. `is_local` lets the watchdog read /proc and /dev/kmsg directly."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    @property
    def is_local(self) -> bool:
        return True

    def run(
        self,
        argv: Argv,
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> CommandResult:
        full_env = {**os.environ, **env} if env else None
        try:
            proc = subprocess.run(
                argv,
                shell=isinstance(argv, str),
                capture_output=True,
                timeout=timeout,
                env=full_env,
                input=input,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HostError(f"{self.name}: `{argv_text(argv)}` did not finish within {timeout:g} s") from exc
        except FileNotFoundError as exc:
            return CommandResult(argv_text(argv), 127, "", str(exc))
        return CommandResult(
            argv_text(argv),
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    def read_file(self, path: str) -> bytes:
        return Path(path).read_bytes()

    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            p.chmod(mode)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        core_unlimited: bool = False,
    ) -> HostProcess:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with open(log_path, "ab", buffering=0) as log:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_unlimited_core if core_unlimited else None,
                )
            except OSError as exc:
                raise HostError(f"{self.name}: cannot start `{argv_text(argv)}`: {exc}") from exc
        return LocalProcess(popen, argv_text(argv), log_path)

    def follow_command(self, argv: Argv) -> LineStream:
        popen = subprocess.Popen(
            argv,
            shell=isinstance(argv, str),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert popen.stdout is not None

        def stop() -> None:
            if popen.poll() is None:
                popen.kill()
            popen.wait()

        return LineStream(popen.stdout, argv_text(argv), on_close=stop)

    def connect_unix(self, path: str, timeout: float = 5.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def fetch_file(self, path: str, local_path: str) -> None:
        if os.path.abspath(path) != os.path.abspath(local_path):
            Path(local_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, local_path)
