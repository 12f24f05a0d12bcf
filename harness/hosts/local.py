"""`LocalHost`: the machine pytest runs on, through subprocess and plain files."""

from __future__ import annotations

import atexit
import ctypes
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

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


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # resolved now: nothing is looked up in a child between fork and exec


def _child_setup(parent: int, core_unlimited: bool) -> Callable[[], None]:
    """What a spawned target does before exec: die with the harness (PR_SET_PDEATHSIG; if the harness is gone
    already, exit), and dump cores of any size when asked."""
    def setup() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        if core_unlimited:
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return setup


class _Spawner:
    """One thread that lives as long as the harness forks every target. The kernel sends PR_SET_PDEATHSIG when
    the *thread* that forked the child ends, so a target forked from a storm's or a minimize try's thread would
    die with that thread; forked here, it dies with the harness (a SIGKILL of the harness too), and only then."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="lvol-storm-spawner", daemon=True)
                self._thread.start()
        done: Future[Any] = Future()
        self._jobs.put((job, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                done.set_result(job())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


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

    def private_dir(self, prefix: str = "lvol-storm") -> str:
        return tempfile.mkdtemp(prefix=f"{prefix}.", dir="/tmp")  # 0700, unpredictable, ours

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
        setup = _child_setup(os.getpid(), core_unlimited)
        with open(log_path, "ab", buffering=0) as log:
            try:
                popen = _SPAWNER.run(lambda: subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=setup,
                ))
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
