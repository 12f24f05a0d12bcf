"""Core dumps: point the kernel's core_pattern into the run directory for the run, then collect the core.

SPDK's CI does the same (it sets /proc/sys/kernel/core_pattern to its output directory and restores it).
The pattern is machine-wide: restore it even when the run fails, and say clearly when it cannot be set
(not root, a container with a read-only /proc/sys), since then cores land wherever the old pattern says.
"""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import time
from pathlib import Path
from types import TracebackType

from harness.hosts.base import Host

CORE_PATTERN = "/proc/sys/kernel/core_pattern"


class CorePattern:
    """Context manager: `core_pattern` = `<core_dir>/core.%p.%e` inside, the previous value after.

    `active` says whether cores will land in `core_dir`; `reason` says why not otherwise.
    """

    def __init__(self, host: Host, core_dir: str, name: str = "core.%p.%e") -> None:
        self.host = host
        self.core_dir = core_dir.rstrip("/")
        self.pattern = f"{self.core_dir}/{name}"
        self.previous: str | None = None
        self.active = False
        self.reason: str | None = None

    def _read(self) -> str | None:
        try:
            return self.host.read_file(CORE_PATTERN).decode().strip() if self.host.is_local else (
                self.host.run(["cat", CORE_PATTERN]).stdout.strip() or None)
        except OSError:
            return None

    def _write(self, value: str) -> str | None:
        """None on success, else the error text."""
        if self.host.is_local:
            try:
                with open(CORE_PATTERN, "w", encoding="utf-8") as f:
                    f.write(value)
                return None
            except OSError as exc:
                return exc.strerror or str(exc)
        res = self.host.run(["sh", "-c", f"printf %s {shlex.quote(value)} > {CORE_PATTERN}"])
        return None if res.ok else (res.stderr.strip() or f"exit {res.rc}")

    def __enter__(self) -> CorePattern:
        self.previous = self._read()
        if self.previous is None:
            self.reason = f"{CORE_PATTERN} is not readable on {self.host.name}; cores not collected"
            return self
        self.host.makedirs(self.core_dir)
        error = self._write(self.pattern)
        if error is not None:
            self.reason = (f"{CORE_PATTERN} is not writable on {self.host.name} ({error}; needs root outside a "
                           f"read-only container): cores go where '{self.previous}' sends them, not to "
                           f"{self.core_dir}")
            return self
        if self._read() != self.pattern:
            self.reason = f"{CORE_PATTERN} did not take '{self.pattern}'; cores go where '{self.previous}' says"
            self._restore()
            return self
        self.active = True
        return self

    def _restore(self) -> None:
        """Put the previous value back, but only while the pattern is still ours: if another run changed it
        meanwhile, that run is using it now (the setting is machine-wide; SPDK CI runs one job per machine)."""
        current = self._read()
        if self.previous is None or current == self.previous:
            return
        if current != self.pattern:
            self.reason = f"{CORE_PATTERN} was changed to '{current}' by someone else during the run; left as is"
            return
        error = self._write(self.previous)
        if error is not None:
            raise OSError(f"could not restore {CORE_PATTERN} to '{self.previous}': {error}")

    def still_ours(self) -> bool:
        """False when another run changed the machine-wide pattern after we set it (cores then go there)."""
        return self.active and self._read() == self.pattern

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.active:
            self._restore()
            self.active = False

    def find_core(self, pid: int, timeout: float = 10.0) -> str | None:
        """The core of `pid` in `core_dir`, once the kernel has finished writing it (size stable)."""
        deadline = time.time() + timeout
        last_size = -1
        path: str | None = None
        while time.time() < deadline:
            res = self.host.run(["sh", "-c", f"ls -1 {shlex.quote(self.core_dir)} 2>/dev/null"], timeout=20)
            names = [n for n in res.stdout.split() if n.startswith(f"core.{pid}.") or n == f"core.{pid}"]
            if names:
                path = f"{self.core_dir}/{names[0]}"
                size_res = self.host.run(["stat", "-c", "%s", path], timeout=20)
                size = int(size_res.stdout.strip() or -1) if size_res.ok else -1
                if size > 0 and size == last_size:
                    return path
                last_size = size
            time.sleep(0.2)
        return path


def compress_core(host: Host, core_path: str, dest_dir: Path) -> Path:
    """Fetch the core here and gzip it (level 1: cores are big, speed matters); the plain copy is removed."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = core_path.rsplit("/", 1)[-1]
    plain = dest_dir / name
    if host.is_local:
        source = Path(core_path)
    else:
        host.fetch_file(core_path, str(plain))
        source = plain
    out = dest_dir / f"{name}.gz"
    with open(source, "rb") as src, gzip.open(out, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
    if source == plain:
        plain.unlink(missing_ok=True)
    elif host.is_local:
        os.unlink(source)
    return out


def gdb_backtrace(host: Host, executable: str | None, core_path: str, timeout: float = 120.0) -> tuple[str | None, str]:
    """`gdb -batch -ex bt -ex 'thread apply all bt'` over the core on its host: (text, note)."""
    if host.which("gdb") is None:
        return None, f"gdb is not installed on {host.name} (apt install gdb): report has no backtrace"
    argv = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "bt", "-ex", "thread apply all bt"]
    argv += [executable, core_path] if executable else ["-c", core_path]
    res = host.run(argv, timeout=timeout)
    text = res.stdout + (("\n" + res.stderr) if res.stderr.strip() else "")
    if "#0" not in res.stdout:
        return text or None, f"`{shlex.join(argv)}` printed no frames (exit {res.rc})"
    return text, f"`{shlex.join(argv)}`"
