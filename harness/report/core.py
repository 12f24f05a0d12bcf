"""Core dumps: every core of a target lands in its own run's directory, whatever else runs on the machine.

The kernel's core_pattern is machine-wide, and two runs that each pointed it at their own directory stole
each other's cores (two `make test` at once, xdist workers, fleet nodes on one kernel). So every lvol-storm run
sets the same pattern, a pipe to a small handler (`|<handler> %P %e %c ...`), and registers the pid of each
target it starts with its core directory; the handler writes a registered pid's core there and hands any other
process's core to what the machine's own pattern says. The first run in keeps the machine's original, the last
one out restores it, and the pattern never changes while any run is in (harness/leftovers.py puts it back
after a killed one). Say clearly when it cannot be set (not root, a read-only /proc/sys): cores then land
wherever the old pattern says.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import shlex
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType

from harness.hosts.base import CommandResult, Host

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
REGISTRY = "/run/lvol-storm/core_pattern"

# The kernel runs this with the core on stdin (core(5), "Piping core dumps to a program"), as root, for every
# process that dumps while an lvol-storm run is in. A registered pid's core goes to its run's directory; any
# other's goes where the machine's own pattern (the registry's `original`) says: a path (relative ones in the
# process's cwd), or a pipe of its own (systemd-coredump, apport) run with the same arguments. A process whose
# core limit is 0 gets none, as without a pipe.
_HANDLER = r"""#!/bin/sh
# lvol-storm core handler (harness/report/core.py): core_pattern = |this %P %e %c %s %t %u %g %h
pid=$1; exe=$(printf '%s' "$2" | tr '/' '!'); limit=$3; sig=$4; t=$5; uid=$6; gid=$7; host=$8
dir=$(cat "{pids}/$pid" 2>/dev/null)
if [ -n "$dir" ] && [ -d "$dir" ]; then exec cat > "$dir/core.$pid.$exe"; fi
[ "$limit" = 0 ] && exit 0
orig=$(cat "{registry}/original" 2>/dev/null)
[ -n "$orig" ] || exit 0
expanded=$(printf '%s' "$orig" | sed -e "s/%p/$pid/g; s/%P/$pid/g; s/%i/$pid/g; s/%I/$pid/g; s/%e/$exe/g" \
  -e "s/%c/$limit/g; s/%s/$sig/g; s/%t/$t/g; s/%u/$uid/g; s/%g/$gid/g; s/%h/$host/g; s/%%/%/g")
case "$expanded" in
  "|"*) exec ${{expanded#|}} ;;
  /*) exec cat > "$expanded" ;;
  *) exec cat > "/proc/$pid/cwd/$expanded" ;;
esac
"""

# Run under `flock` on the host. Users register their pattern; the first one keeps the machine's original;
# the last one out restores it; one leaving while others run hands the pattern to the newest of them.
_ENTER = r"""
set -e
R={registry}; P={pattern}; T={token}; F={proc}
mkdir -p "$R/users"
cur=$(cat "$F")
touch "$R/written"
if [ -z "$(ls -A "$R/users")" ] && ! grep -qxF -- "$cur" "$R/written"; then
  printf '%s' "$cur" > "$R/original"
fi
[ -f "$R/original" ] || printf '%s' "$cur" > "$R/original"
printf '%s' "$P" > "$F"
printf '%s\n' "$P" >> "$R/written"
printf '%s' "$P" > "$R/users/$T"
printf '%s' "$cur"
"""
_LEAVE = r"""
R={registry}; P={pattern}; T={token}; F={proc}
rm -f "$R/users/$T"
cur=$(cat "$F")
next=$(ls -t "$R/users" 2>/dev/null | head -n 1)
if [ "$cur" = "$P" ] || grep -qxF -- "$cur" "$R/written" 2>/dev/null; then
  if [ -n "$next" ]; then cat "$R/users/$next" > "$F"; echo "handed to $next"
  else cat "$R/original" > "$F" && rm -f "$R/original" "$R/written"; echo restored
  fi
else
  [ -n "$next" ] || rm -f "$R/original" "$R/written"
  echo "changed by someone else: $cur"
fi
"""


class CorePattern:
    """Context manager: `core_pattern` = `<core_dir>/core.%p.%e` inside, the machine's own value after.

    `active` says whether cores will land in `core_dir`; `reason` says why not otherwise. Overlapping runs
    on one host (pytest-xdist workers, two storms) register in `registry` (under flock): the first keeps
    the original value, one leaving early hands the pattern to a run still going, the last restores it.
    A run whose harness died is dropped from the registry when this machine sees its pid gone.
    """

    def __init__(self, host: Host, core_dir: str, *, proc_path: str = CORE_PATTERN,
                 registry: str = REGISTRY) -> None:
        self.host = host
        self.core_dir = core_dir.rstrip("/")
        self.proc_path = proc_path
        self.registry = registry.rstrip("/")
        base = self.registry.rsplit("/", 1)[0] or "/"
        self.handler = f"{base}/core-handler"
        self.pids_dir = f"{base}/core-pids"
        self.pattern = f"|{self.handler} %P %e %c %s %t %u %g %h"
        """The same for every run on the machine: none can take another's cores by setting its own."""
        self.token = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.previous: str | None = None
        self.active = False
        self.reason: str | None = None
        self.restored: str | None = None

    def _read(self) -> str | None:
        res = self.host.run(["cat", self.proc_path], timeout=20)
        return res.stdout.strip() if res.ok else None

    def _locked(self, template: str) -> CommandResult:
        script = template.format(registry=shlex.quote(self.registry), pattern=shlex.quote(self.pattern),
                                 token=shlex.quote(self.token), proc=shlex.quote(self.proc_path))
        parent = self.registry.rsplit("/", 1)[0] or "/"
        self.host.run(["mkdir", "-p", parent], timeout=20)
        if self.host.which("flock") is None:
            return self.host.run(["sh", "-c", script], timeout=30)
        return self.host.run(["flock", "-w", "20", f"{self.registry}.lock", "sh", "-c", script], timeout=30)

    def _prune_dead_users(self) -> None:
        """Registrations of harness processes on this machine that are gone (killed before __exit__)."""
        listing = self.host.run(["ls", f"{self.registry}/users"], timeout=20)
        me = socket.gethostname()
        for token in listing.stdout.split() if listing.ok else []:
            host, pid = _token_pid(token)
            if host != me or pid is None:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self.host.run(["rm", "-f", f"{self.registry}/users/{token}"], timeout=20)
            except PermissionError:
                pass

    def _install_handler(self) -> None:
        """The handler script and the pid registry, written fresh each time (atomically: a core being piped
        now must find a whole script)."""
        self.host.makedirs(self.pids_dir)
        tmp = f"{self.handler}.{os.getpid()}.tmp"
        self.host.write_file(tmp, _HANDLER.format(pids=self.pids_dir, registry=self.registry).encode())
        self.host.run(["sh", "-c", f"chmod 755 {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} "
                                   f"{shlex.quote(self.handler)}"], timeout=20)

    def adopt(self, pid: int) -> None:
        """Cores of `pid` go to this run's core_dir (call it as soon as the target is spawned)."""
        if self.active:
            self.host.write_file(f"{self.pids_dir}/{pid}", self.core_dir.encode())

    def forget(self, pid: int) -> None:
        self.host.run(["rm", "-f", f"{self.pids_dir}/{pid}"], timeout=20)

    def __enter__(self) -> CorePattern:
        before = self._read()
        if before is None:
            self.reason = f"{self.proc_path} is not readable on {self.host.name}; cores not collected"
            return self
        self.host.makedirs(self.core_dir)
        self._install_handler()
        self._prune_dead_users()
        res = self._locked(_ENTER)
        if not res.ok:
            error = (res.stderr.strip().splitlines() or [f"exit {res.rc}"])[-1]
            self.previous = before
            self.reason = (f"{self.proc_path} is not writable on {self.host.name} ({error}; needs root outside a "
                           f"read-only container): cores go where '{before}' sends them, not to {self.core_dir}")
            self.host.run(["rm", "-f", f"{self.registry}/users/{self.token}"], timeout=20)
            return self
        self.previous = res.stdout
        if self._read() != self.pattern:
            self.reason = f"{self.proc_path} did not take '{self.pattern}'; cores go where '{self.previous}' says"
            self._locked(_LEAVE)
            return self
        self.active = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.active:
            return
        self.active = False
        self._prune_dead_users()  # a run that was killed does not keep the pattern in
        res = self._locked(_LEAVE)
        self.restored = res.stdout.strip() or None
        if self.restored and self.restored.startswith("changed by someone else"):
            self.reason = f"{self.proc_path} was {self.restored}; left as is"
        elif not res.ok:
            raise OSError(f"could not restore {self.proc_path}: {res.stderr.strip() or res.rc}")

    def still_ours(self) -> bool:
        """False when another run changed the machine-wide pattern after we set it (cores then go there)."""
        return self.active and self._read() == self.pattern

    def find_core(self, pid: int, timeout: float = 10.0) -> str | None:
        """The core of `pid`, once the kernel has finished writing it (size stable): in `core_dir`, or in the
        core dir of another lvol-storm run on this machine that held the machine-wide pattern at the crash
        (overlapping runs hand it to each other; the registry lists every pattern they wrote)."""
        dirs = [shlex.quote(d) for d in (self.core_dir, *self._other_core_dirs())]
        listing = "ls -1d " + " ".join(f"{d}/core.{pid}.* {d}/core.{pid}" for d in dirs) + " 2>/dev/null"
        deadline = time.time() + timeout
        last_size = -1
        path: str | None = None
        while time.time() < deadline:
            names = self.host.run(["sh", "-c", listing], timeout=20).stdout.splitlines()
            if names:
                path = names[0]
                size_res = self.host.run(["stat", "-c", "%s", path], timeout=20)
                size = int(size_res.stdout.strip() or -1) if size_res.ok else -1
                if size > 0 and size == last_size:
                    return path
                last_size = size
            time.sleep(0.2)
        return path

    def _other_core_dirs(self) -> list[str]:
        """Directories of the other patterns lvol-storm runs wrote on this machine (the registry's list)."""
        res = self.host.run(["cat", f"{self.registry}/written"], timeout=20)
        dirs = [line.rsplit("/", 1)[0] for line in res.stdout.splitlines() if res.ok and line.startswith("/")]
        return [d for d in dict.fromkeys(dirs) if d and d != self.core_dir]


def _token_pid(token: str) -> tuple[str, int | None]:
    """(host, pid) of a registry token `<host>-<pid>-<id>`."""
    host, _, pid = token.rpartition("-")[0].rpartition("-")
    return host, int(pid) if pid.isdigit() else None


def reap_core_pattern(registry: str = REGISTRY, proc_path: str = CORE_PATTERN) -> str | None:
    """On this machine: drop the registrations of harness processes that are gone, and when no live one is
    left while core_pattern still points where one of them set it, put the machine's original back (what the
    last one out would have done, had it not been killed). What was done, or None."""
    users = Path(registry) / "users"
    if not users.is_dir():
        return None
    me = socket.gethostname()
    with open(f"{registry}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for entry in list(users.iterdir()):
            host, pid = _token_pid(entry.name)
            if host == me and pid is not None and not Path(f"/proc/{pid}").exists():
                entry.unlink(missing_ok=True)
        if any(users.iterdir()):
            return None
        original, written = Path(registry) / "original", Path(registry) / "written"
        try:
            current = Path(proc_path).read_text().strip()
            ours = current in written.read_text().splitlines() if written.exists() else False
            if not ours or not original.exists():
                return None
            value = original.read_text()
            Path(proc_path).write_text(value)
        except OSError:
            return None
        original.unlink(missing_ok=True)
        written.unlink(missing_ok=True)
        return f"restored {proc_path} to {value!r} (the run that set it was killed)"


def fetch_core(host: Host, core_path: str, dest_dir: Path) -> Path:
    """A remote core copied here, whole, and removed from the node (a guest's /tmp is its memory)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    plain = dest_dir / core_path.rsplit("/", 1)[-1]
    host.fetch_file(core_path, str(plain))
    host.remove(core_path)
    return plain


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


_DELETED_MAPPING = re.compile(r"^warning: Can't open file (?P<path>.*) \(deleted\) during file-backed mapping")


def _without_deleted_mappings(stderr: str) -> str:
    """gdb's stderr without its one warning per deleted file the core maps: spdk_tgt maps every hugepage file
    (`spdk_pid<N>map_<i>`) and unlinks it, so gdb printed a thousand of them (96% of a 160 kB backtrace.txt,
    in every crash dir of a nightly); one line says how many were left out."""
    kept: list[str] = []
    dropped = 0
    for line in stderr.splitlines():
        if _DELETED_MAPPING.match(line):
            dropped += 1
        elif line.strip():
            kept.append(line)
    if dropped:
        kept.append(f"({dropped} gdb warnings \"Can't open file ... (deleted)\" left out: the target's unlinked "
                    "hugepage files)")
    return "\n".join(kept) + ("\n" if kept else "")


def gdb_backtrace(host: Host, executable: str | None, core_path: str, timeout: float = 120.0) -> tuple[str | None, str]:
    """`gdb -batch -ex bt -ex 'thread apply all bt'` over the core on its host: (text, note)."""
    if host.which("gdb") is None:
        return None, f"gdb is not installed on {host.name} (apt install gdb): report has no backtrace"
    argv = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "bt", "-ex", "thread apply all bt"]
    argv += [executable, core_path] if executable else ["-c", core_path]
    res = host.run(argv, timeout=timeout)
    stderr = _without_deleted_mappings(res.stderr)
    text = res.stdout + (("\n" + stderr) if stderr.strip() else "")
    if "#0" not in res.stdout:
        return text or None, f"`{shlex.join(argv)}` printed no frames (exit {res.rc})"
    return text, f"`{shlex.join(argv)}`"
