"""The `spdk_tgt` under test, carried to a node that has none: the binary and every shared library it loads
here, installed on the node and mirrored on this machine under one path named by their content.

A QEMU guest or a fresh lab node has no SPDK build, and building one per node is the wrong test: the run
must exercise the very build the user pointed at. So the files `ldd` names here (glibc's own excepted: the
node's C library runs them, and a node too old for them is refused at install) go into
`/var/tmp/lvol-storm/spdk-<digest>/{bin,lib,etc}` on the node, once per content. The same directory is kept
on this machine, so a fault's `libspdk_lvol.so...` path and a fetched core's library list name files that
`addr2line` and `gdb` can open here, where the debugging tools are (a guest has none).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.errors import TargetError
from harness.hosts.base import Host
from harness.hosts.local import LocalHost

BUNDLES_DIR = "/var/tmp/lvol-storm"
COMPLETE = ".complete"
OPENSSL_CONF = "/usr/lib/ssl/openssl.cnf"
"""libssl reads it at start-up; without it spdk_tgt stops with `Failed to initialize OpenSSL`."""

_GLIBC = re.compile(r"^(libc|libm|libpthread|libdl|librt|libresolv|libutil|libanl|ld-linux[-\w.]*)\.so")
"""The C library's own parts: the node's must be the one they run against (its loader loads them)."""
_LDD_LINE = re.compile(r"^\s*(?P<name>\S+) => (?P<path>/\S+) \(0x[0-9a-f]+\)$")
_LDD_MISSING = re.compile(r"^\s*(?P<name>\S+) => not found$")


@dataclass(frozen=True)
class TargetBundle:
    """A `spdk_tgt` build's files on this machine, by their path inside the bundle."""

    source: str
    """The binary the user named (`--spdk-tgt`, `$SPDK_TGT`, ...), on this machine."""
    files: tuple[tuple[str, str], ...]
    """(path in the bundle, e.g. `lib/libspdk_lvol.so.10.0`; the file here it is a copy of)."""
    digest: str

    @property
    def root(self) -> str:
        return f"{BUNDLES_DIR}/spdk-{self.digest[:16]}"

    @property
    def executable(self) -> str:
        return f"{self.root}/bin/{PurePosixPath(self.source).name}"

    @property
    def size(self) -> int:
        return sum(os.path.getsize(src) for _, src in self.files)

    def environment(self) -> dict[str, str]:
        env = {"LD_LIBRARY_PATH": f"{self.root}/lib"}
        if any(name == "etc/openssl.cnf" for name, _ in self.files):
            env["OPENSSL_CONF"] = f"{self.root}/etc/openssl.cnf"
        return env

    def tarball(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for name, src in self.files:
                tar.add(src, arcname=name, recursive=False)
        return buf.getvalue()


def library_dirs(host: Host, binary: str) -> list[str]:
    """A build with shared libraries keeps them in `build/lib` (and DPDK's beside it) next to `build/bin`."""
    root = PurePosixPath(binary).parent.parent.parent  # <spdk>/build/bin/spdk_tgt -> <spdk>
    dirs = [str(root / "build/lib"), str(root / "dpdk/build/lib")]
    return [d for d in dirs if host.exists(d)]


def gather(binary: str) -> TargetBundle:
    """The binary and the non-glibc libraries it loads on this machine (`ldd`, with the build's own library
    dirs first, as the harness starts it), plus libssl's configuration file."""
    if not os.access(binary, os.X_OK):
        raise TargetError(f"spdk_tgt to install on a node: {binary} is not an executable file on this machine: "
                          "point --spdk-tgt or $SPDK_TGT at a build here")
    env = dict(os.environ)
    dirs = library_dirs(LocalHost(), str(Path(binary).resolve()))
    env["LD_LIBRARY_PATH"] = ":".join([*dirs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    try:
        res = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env, timeout=60)
    except FileNotFoundError:
        raise TargetError("installing spdk_tgt on a node needs ldd on this machine (apt install libc-bin)") from None
    missing = [m["name"] for line in res.stdout.splitlines() if (m := _LDD_MISSING.match(line))]
    if res.returncode != 0 or missing:
        raise TargetError(f"spdk_tgt to install on a node: `ldd {binary}` here "
                          f"{'cannot find ' + ', '.join(missing) if missing else 'failed: ' + res.stderr.strip()}: "
                          "the build must run on this machine first (its libraries installed)")
    files: list[tuple[str, str]] = [(f"bin/{PurePosixPath(binary).name}", str(Path(binary).resolve()))]
    for line in res.stdout.splitlines():
        m = _LDD_LINE.match(line)
        if m and not _GLIBC.match(m["name"]):
            files.append((f"lib/{m['name']}", str(Path(m["path"]).resolve())))
    if Path(OPENSSL_CONF).exists():
        files.append(("etc/openssl.cnf", str(Path(OPENSSL_CONF).resolve())))
    digest = hashlib.sha256()
    for name, src in files:
        digest.update(f"{name}\0{_file_digest(src)}\0".encode())
    return TargetBundle(source=binary, files=tuple(files), digest=digest.hexdigest())


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    """sha256 of a file, remembered by (path, size, mtime): a target restarts hundreds of times a night."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def mirror_here(bundle: TargetBundle) -> str:
    """The bundle's directory on this machine too (copies, so a rebuilt build dir does not change what a core
    from the node is read against); its root."""
    root = Path(bundle.root)
    if (root / COMPLETE).exists():
        return bundle.root
    tmp = Path(f"{bundle.root}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, src in bundle.files:
        dest = tmp / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
    (tmp / COMPLETE).write_text(bundle.source + "\n")
    try:
        tmp.rename(root)
    except OSError:  # another run mirrored it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return bundle.root


def install(bundle: TargetBundle, host: Host, announce: Callable[[str], None] | None = None) -> str:
    """The bundle on `host` (unless already there, whole), checked to start there; its executable's path."""
    if host.exists(f"{bundle.root}/{COMPLETE}"):
        return bundle.executable
    started = time.monotonic()
    tmp = f"{bundle.root}.tmp{os.getpid()}"
    q_tmp, q_root = shlex.quote(tmp), shlex.quote(bundle.root)
    # A half-written root (an install killed mid-way) is replaced; a whole one another run made meanwhile is kept.
    script = (f"rm -rf {q_tmp} && mkdir -p {q_tmp} && tar -xz -C {q_tmp} && touch {q_tmp}/{COMPLETE} && "
              f"{{ [ -f {q_root}/{COMPLETE} ] || rm -rf {q_root}; mv -T {q_tmp} {q_root} 2>/dev/null || "
              f"rm -rf {q_tmp}; }}")
    res = host.run(["sh", "-c", script], input=bundle.tarball(), timeout=600)
    if not res.ok or not host.exists(f"{bundle.root}/{COMPLETE}"):
        raise TargetError(f"{host.name}: installing spdk_tgt under {bundle.root} failed: "
                          f"{(res.stderr.strip().splitlines() or [f'exit {res.rc}'])[-1]}")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in bundle.environment().items())
    check = host.run(["sh", "-c", f"{env} {shlex.quote(bundle.executable)} -h >/dev/null"], timeout=120)
    if not check.ok:
        why = (check.stderr.strip().splitlines() or [f"exit {check.rc}"])[0]
        host.run(["rm", "-rf", bundle.root], timeout=60)
        raise TargetError(f"{host.name}: this machine's spdk_tgt does not run there ({why}): the node's C library "
                          "is older than this machine's; build spdk_tgt for the node's OS and pass --spdk-tgt, or "
                          "install one there")
    if announce is not None:
        announce(f"{host.name}: spdk_tgt is not on the node: installed {bundle.source} and its "
                 f"{len(bundle.files) - 1} libraries as {bundle.root} ({bundle.size / 2**20:.0f} MiB, "
                 f"{time.monotonic() - started:.1f} s)")
    return bundle.executable
