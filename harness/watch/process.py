"""Watch the target process itself: its exit (by signal or code) and whether it still answers.

Exit is seen at once: locally through a pidfd (readable the moment the process becomes a zombie), on a
remote host through a small shell loop. Liveness comes from a caller-supplied `probe() -> bool` (an RPC
ping), run every few seconds in its own thread; if no probe succeeded for `hang_after_s`, that is a hang.
The probe is a plain callable so this module never imports the RPC layer.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable

from harness.hosts.base import Host, HostProcess, LineStream

log = logging.getLogger(__name__)


class ProcessWatch:
    """Calls `on_exit(rc or None)` once when the process ends and `on_hang(seconds)` once when it stops answering."""

    def __init__(
        self,
        host: Host,
        pid: int,
        *,
        on_exit: Callable[[int | None], None],
        on_hang: Callable[[float], None],
        process: HostProcess | None = None,
        probe: Callable[[], bool] | None = None,
        hang_after_s: float = 30.0,
        probe_interval_s: float = 2.0,
    ) -> None:
        self.host = host
        self.pid = pid
        self.process = process
        self.probe = probe
        self.hang_after_s = hang_after_s
        self.probe_interval_s = probe_interval_s
        self._on_exit = on_exit
        self._on_hang = on_hang
        self.exited = threading.Event()
        self.exit_rc: int | None = None
        self.last_answer = time.time()
        self.probe_failures = 0
        self._hang_reported = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: LineStream | None = None
        self._pidfd: int | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    def start(self) -> None:
        self.last_answer = time.time()
        self._wake_r, self._wake_w = os.pipe()  # stop() writes here so a blocked select returns at once
        if self.host.is_local:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except (OSError, AttributeError):
                self._pidfd = None
        if self._pidfd is None and not self.host.is_local:
            script = (f"while kill -0 {self.pid} 2>/dev/null && ! grep -qs '^State:.*Z' /proc/{self.pid}/status;"
                      " do sleep 0.1; done; echo exited")
            self._stream = self.host.follow_command(["sh", "-c", script])
        self._spawn(self._watch_exit, "watch:process")
        if self.probe is not None:
            self._spawn(self._probe_loop, "watch:probe")

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _gone_locally(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", encoding="utf-8") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        return state in {"Z", "X"}

    def _wait_exit_once(self, timeout: float) -> bool:
        """Block up to `timeout` s; True once the process has ended."""
        pidfd, wake = self._pidfd, self._wake_r
        if pidfd is not None and wake is not None:
            ready, _, _ = select.select([pidfd, wake], [], [], timeout)
            return pidfd in ready
        if self._stream is not None:
            line = self._stream.get(timeout=timeout)
            return line == "exited" or self._stream.eof
        time.sleep(min(timeout, 0.05))
        return self._gone_locally()

    def _watch_exit(self) -> None:
        while not self._stop.is_set():
            if self._wait_exit_once(0.25):
                if not self._stop.is_set():  # a closed follower on stop() is not an exit
                    self._exited()
                return
            if self.probe is not None and not self._hang_reported:
                silent = time.time() - self.last_answer
                if silent >= self.hang_after_s:
                    self._hang_reported = True
                    self._on_hang(silent)

    def _exited(self) -> None:
        rc = None
        if self.process is not None:
            deadline = time.time() + 2.0
            while rc is None and time.time() < deadline:
                rc = self.process.poll()
                if rc is None:
                    time.sleep(0.01)
        self.exit_rc = rc
        self.exited.set()
        self._on_exit(rc)

    def _probe_loop(self) -> None:
        assert self.probe is not None
        while not self._stop.is_set() and not self.exited.is_set():
            try:
                ok = bool(self.probe())
            except Exception as exc:  # a probe that raises is a probe that got no answer
                log.debug("probe raised %s", exc)
                ok = False
            if ok:
                self.last_answer = time.time()
            else:
                self.probe_failures += 1
            self._stop.wait(self.probe_interval_s)

    def wait_exit(self, timeout: float) -> bool:
        """True when the process ended within `timeout` s or is already dumping core (it is dead then)."""
        deadline = time.time() + timeout
        while True:
            if self.exited.is_set() or self._dying():
                return True
            left = deadline - time.time()
            if left <= 0:
                return False
            self.exited.wait(min(left, 0.02 if self.host.is_local else 0.1))

    def _dying(self) -> bool:
        """Gone, a zombie, or dumping core (writing a big core takes seconds before the exit is visible)."""
        if self.host.is_local:
            try:
                with open(f"/proc/{self.pid}/status", encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                return True
        else:
            result = self.host.run(["cat", f"/proc/{self.pid}/status"], timeout=10)
            if not result.ok:
                return True
            text = result.stdout
        return "CoreDumping:\t1" in text or "\nState:\tZ" in text

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._stream is not None:
            self._stream.close()
        for t in self._threads:
            t.join(timeout=2)
        for fd in (self._pidfd, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._pidfd = self._wake_r = self._wake_w = None
