#!/usr/bin/env python3
"""Build (or reuse) the guest image of terraform/qemu: a kernel and an initramfs made from THIS machine's Debian
packages, cached by the hash of everything that goes into them.

The initramfs is the guest's whole root file system: the programs of a few packages (coreutils, dash, util-linux,
socat, openssh-server, kmod, ...) with every shared library `ldd` names, busybox for init and the rest, the
kernel modules a node needs (nvme, vfio-pci, uio_pci_generic, virtio-net, qemu_fw_cfg) and, with --python, the
host's python3 with its standard library. Nothing in it is per node: each guest's host key and authorized key
arrive through QEMU's fw_cfg, its name and hugepages on the kernel command line, so N guests share one image.

Standard library only, run by the host's python3: the module calls it from a private copy of itself.
  guest_image.py build [--cache-dir DIR] [--kernel-version VER] [--python]   -> one JSON line {kernel, initrd, ...}
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1  # bump when the layout below changes in a way the inputs' hashes would not show
DEFAULT_CACHE = "/var/cache/lvol-storm/guest"

# Package -> which of its files go in (regexes on the path dpkg lists). Every listed package must be installed;
# the error names the apt-get install. openssh-server's sftp subsystem is sshd's internal-sftp.
PACKAGES: dict[str, str] = {
    "coreutils": r"^/(usr/)?s?bin/",
    "dash": r"^/(usr/)?bin/",
    "bash": r"^/(usr/)?bin/bash$",
    "util-linux": r"^/(usr/)?s?bin/",
    "mount": r"^/(usr/)?s?bin/",
    "procps": r"^/(usr/)?s?bin/",
    "kmod": r"^/(usr/)?s?bin/",
    "grep": r"^/(usr/)?bin/",
    "sed": r"^/(usr/)?bin/",
    "mawk": r"^/usr/bin/mawk$",
    "findutils": r"^/(usr/)?bin/",
    "tar": r"^/(usr/)?bin/tar$",
    "gzip": r"^/(usr/)?bin/",
    "socat": r"^/usr/bin/socat$",
    "openssh-server": r"^/usr/sbin/sshd$",
}
# Optional packages: taken when installed (lspci helps whoever debugs a node's PCI layout).
OPTIONAL_PACKAGES: dict[str, str] = {
    "pciutils": r"^/usr/bin/lspci$|^/usr/share/misc/pci\.ids$",
}
# Kernel modules (with what modules.dep says they need) and the order init loads the boot-time ones in.
MODULES = ("virtio_pci", "virtio_net", "virtio_rng", "qemu_fw_cfg", "nvme", "uio_pci_generic", "vfio_pci",
           "vfio_iommu_type1")
BOOT_MODULES = ("virtio_pci", "virtio_net", "virtio_rng", "qemu_fw_cfg", "nvme")
# The parts of python3's standard library a node never needs.
PYTHON_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "__pycache__",
               "unittest", "distutils", "config-3.11-x86_64-linux-gnu"}

INIT = r"""#!/bin/sh
# lvol-storm guest init: mount the kernel's file systems, then hand PID 1 to busybox init (it reaps orphans:
# the harness starts its processes detached, through setsid -f).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
exec /usr/bin/busybox init
"""

INITTAB = """::sysinit:/etc/lvol-storm/rcS
::shutdown:/usr/bin/busybox killall sshd
::ctrlaltdel:/usr/bin/busybox poweroff -f
"""

RCS = r"""#!/bin/sh
# Bring the node up: modules, loopback and QEMU user networking (10.0.2.15/24), the node's name, host key and
# authorized key (QEMU fw_cfg), sshd, then its NVMe controller bound for SPDK (kernel command line:
# lvs.nvme=<pci address> lvs.nvme_driver=uio_pci_generic|vfio-pci|nvme). The outcome is one line in
# /run/lvol-storm/status (`ready: ...` or `failed: <reason>`), which node-up.sh reads over SSH, and in /dev/kmsg.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin  # busybox init sets its own
exec >/dev/console 2>&1
say() { echo "lvol-storm-guest: $*"; echo "lvol-storm-guest: $*" > /dev/kmsg 2>/dev/null || true; }
status() {
  mkdir -p /run/lvol-storm
  echo "$*" > /run/lvol-storm/status.tmp && mv /run/lvol-storm/status.tmp /run/lvol-storm/status
  say "$*"
}
for m in @BOOT_MODULES@; do modprobe "$m" || say "modprobe $m failed"; done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
name=$(arg lvs.name)
hostname "${name:-lvol-storm-guest}"
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
  || say "network: eth0 did not come up"
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/lvol-storm
mkdir -p /etc/ssh /root/.ssh /run/sshd /var/tmp /var/crash
chmod 700 /root/.ssh
if [ -r "$fw/host_key/raw" ] && [ -r "$fw/authorized_keys/raw" ]; then
  cat "$fw/host_key/raw" > /etc/ssh/ssh_host_ed25519_key
  chmod 600 /etc/ssh/ssh_host_ed25519_key
  cat "$fw/authorized_keys/raw" > /root/.ssh/authorized_keys
else
  say "no host key or authorized key in fw_cfg ($fw): start QEMU with" \
    "-fw_cfg name=opt/lvol-storm/host_key,file=... -fw_cfg name=opt/lvol-storm/authorized_keys,file=..."
fi
/usr/sbin/sshd -E /run/sshd.log && say "sshd started" || say "sshd failed: $(tail -n 3 /run/sshd.log)"
pages=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)
want=$(arg hugepages)
if [ "${want:-0}" -gt "$pages" ]; then
  status "failed: hugepages: the kernel reserved $pages of $want 2 MiB pages at boot:" \
    "give the guest more memory_mb or fewer hugepages_mb"
  exit 0
fi
addr=$(arg lvs.nvme) drv=$(arg lvs.nvme_driver)
if [ -n "$addr" ]; then
  drv=${drv:-nvme}
  why=$(lvol-storm-bind "$addr" "$drv" 2>&1) || { status "failed: nvme: $why"; exit 0; }
fi
status "ready: hugepages=$pages nvme=${addr:+$addr=$drv}"
"""

BIND = r"""#!/bin/sh
# lvol-storm-bind ADDR DRIVER: bind the NVMe controller at PCI address ADDR to DRIVER (uio_pci_generic, vfio-pci
# or nvme, the kernel's own) through driver_override, as SPDK's setup.sh does; true once the kernel says so.
set -u
addr=$1 drv=$2
dev=/sys/bus/pci/devices/$addr
driver_of() { l=$(readlink "$dev/driver" 2>/dev/null) && echo "${l##*/}"; }
if [ ! -e "$dev" ] || [ "$(cat "$dev/class")" != 0x010802 ]; then
  echo "no NVMe controller at $addr (PCI: $(ls /sys/bus/pci/devices | tr '\n' ' '))" >&2
  exit 1
fi
[ "$(driver_of)" = "$drv" ] && exit 0
modprobe "$drv" || { echo "modprobe $drv failed" >&2; exit 1; }
echo "$drv" > "$dev/driver_override"
[ -e "$dev/driver" ] && echo "$addr" > "$dev/driver/unbind"
echo "$addr" > /sys/bus/pci/drivers_probe 2>/dev/null
i=0
while [ "$(driver_of)" != "$drv" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ "$(driver_of)" != "$drv" ]; then
  echo "could not bind $addr to $drv (bound to: $(driver_of)); see dmesg" >&2
  exit 1
fi
"""

SSHD_CONFIG = """# lvol-storm guest: key login as root only; QEMU forwards one loopback port of the host here.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile /root/.ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
AllowTcpForwarding no
AllowStreamLocalForwarding yes
X11Forwarding no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
"""

ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/ld.so.conf": "/usr/local/lib\n/usr/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n",
    "etc/ssh/sshd_config": SSHD_CONFIG,
    "etc/inittab": INITTAB,
    "etc/profile": "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
}


class BuildError(Exception):
    """One line naming what is missing and how to get it."""


@dataclass
class Tree:
    """The image's file system as (path -> entry) before it is written: files by host source, symlinks by
    target, directories, and text written by this script."""

    files: dict[str, str] = field(default_factory=dict)  # image path -> host path
    texts: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # image path -> (content, mode)
    links: dict[str, str] = field(default_factory=dict)  # image path -> link target
    dirs: set[str] = field(default_factory=set)
    nodes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # image path -> (mode, major, minor)

    def taken(self, path: str) -> bool:
        return path in self.files or path in self.texts or path in self.links or path in self.dirs

    def add_dir(self, path: str) -> None:
        path = path.strip("/")
        while path and path not in self.dirs and path not in self.links:
            self.dirs.add(path)
            path = os.path.dirname(path)

    def add_host_path(self, host_path: str) -> str:
        """Add `host_path` as the host has it: every symlink on the way (the /bin -> usr/bin of merged /usr,
        ld-linux's chain) becomes the same symlink in the image. Returns the real file's image path."""
        parts = Path(host_path).parts[1:]
        current = ""
        for i, part in enumerate(parts):
            current = f"{current}/{part}"
            if os.path.islink(current):
                target = os.readlink(current)
                self.add_dir(os.path.dirname(current))
                self.links.setdefault(current.strip("/"), target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
                rest = "/".join(parts[i + 1:])
                return self.add_host_path(f"{resolved}/{rest}" if rest else resolved)
        if os.path.isdir(current):
            self.add_dir(current)
        else:
            self.add_dir(os.path.dirname(current))
            self.files.setdefault(current.strip("/"), current)
        return current

    def add_text(self, path: str, text: str | bytes, mode: int = 0o644) -> None:
        self.add_dir(os.path.dirname(path))
        self.texts[path.strip("/")] = (text.encode() if isinstance(text, str) else text, mode)


def run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"`{' '.join(argv)}` failed (exit {exc.returncode}): {exc.stderr.strip()[-300:]}") from exc


def package_files(package: str, pattern: str, optional: bool = False) -> list[str]:
    res = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        if optional:
            return []
        raise BuildError(f"package {package} is not installed: apt-get install -y {package}")
    rx = re.compile(pattern)
    return [p for p in res.stdout.splitlines() if rx.search(p) and os.path.isfile(p)]


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def shared_libraries(path: str) -> list[str]:
    """What `ldd` says `path` loads (none for a static binary); a library it cannot find is an error."""
    res = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in res.stdout.splitlines():
        if "not found" in line:
            raise BuildError(f"{path}: ldd cannot find {line.split()[0]}: reinstall the package that owns {path}")
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def kernel_version(requested: str | None) -> str:
    if requested:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", requested):
            raise BuildError(f"kernel version {requested!r}: expected a name like 6.1.0-57-amd64 (ls /boot/vmlinuz-*)")
        if not Path(f"/boot/vmlinuz-{requested}").is_file():
            raise BuildError(f"/boot/vmlinuz-{requested} not found: apt-get install -y linux-image-{requested}")
        return requested
    found = sorted((p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")
                    if Path(f"/lib/modules/{p.name.removeprefix('vmlinuz-')}/modules.dep").is_file()),
                   key=lambda v: [int(x) if x.isdigit() else x for x in re.split(r"[.-]", v)])
    if not found:
        raise BuildError("no Debian kernel with modules in /boot and /lib/modules: "
                         "apt-get install -y linux-image-amd64")
    return found[-1]


def module_closure(version: str, names: Iterable[str]) -> list[str]:
    """Paths (relative to /lib/modules/VERSION) of `names` and everything modules.dep says they need."""
    base = Path(f"/lib/modules/{version}")
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        stem = Path(mod).name.split(".ko")[0].replace("-", "_")
        by_name[stem] = mod
    listed = (base / "modules.builtin").read_text().split() if (base / "modules.builtin").exists() else []
    builtin = {Path(x).name.split(".ko")[0].replace("-", "_") for x in listed}
    out: list[str] = []
    for name in names:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in by_name:
            raise BuildError(f"kernel {version} has no module {name} (not in {base}/modules.dep)")
        for mod in [by_name[key], *deps[by_name[key]]]:
            if mod not in out:
                out.append(mod)
    return out


def gather(version: str, with_python: bool) -> Tree:
    tree = Tree()
    for d in ("dev", "proc", "sys", "run", "tmp", "root", "var/tmp", "etc/lvol-storm", "mnt"):
        tree.add_dir(d)
    # Merged /usr, as on the host: /bin, /sbin, /lib, /lib64 are symlinks into /usr.
    for top in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{top}"):
            tree.links[top] = os.readlink(f"/{top}")
    programs: list[str] = []
    for package, pattern in PACKAGES.items():
        found = package_files(package, pattern)
        if not found:
            raise BuildError(f"package {package} has no files matching {pattern}: reinstall it")
        programs += found
    for package, pattern in OPTIONAL_PACKAGES.items():
        programs += package_files(package, pattern, optional=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not is_elf(busybox):
        raise BuildError("busybox not found: apt-get install -y busybox-static")
    programs.append(busybox)
    if with_python:
        python = os.path.realpath("/usr/bin/python3")
        if not is_elf(python):
            raise BuildError("/usr/bin/python3 not found: apt-get install -y python3")
        programs.append(python)
        tree.add_host_path("/usr/bin/python3")
        stdlib = Path(python.replace("/bin/", "/lib/"))  # /usr/bin/python3.11 -> /usr/lib/python3.11
        for root, dirs, files in os.walk(stdlib):
            dirs[:] = sorted(d for d in dirs if d not in PYTHON_SKIP and d != "site-packages"
                             and d != "dist-packages")
            for f in sorted(files):
                if not f.endswith(".pyc"):
                    programs.append(os.path.join(root, f))
    for path in programs:
        tree.add_host_path(path)
    libs: set[str] = set()
    for path in list(tree.files.values()):
        if is_elf(path):
            libs.update(shared_libraries(path))
    for lib in sorted(libs):
        tree.add_host_path(lib)
    # glibc loads the NSS modules by name at run time (ldd cannot see them).
    for nss in sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libnss_files.so*")):
        tree.add_host_path(str(nss))
    # busybox for whatever the packages above do not provide (init, ip, hostname, ...).
    tree.links.setdefault("usr/bin/sh", "dash")
    tree.links.setdefault("usr/sbin/nologin", "../bin/false")
    to_busybox = os.path.relpath(tree.add_host_path(busybox), "/usr/bin")
    for applet in run([busybox, "--list"]).split():
        if not any(tree.taken(f"{d}/{applet}") for d in ("usr/bin", "usr/sbin", "bin", "sbin")):
            tree.links[f"usr/bin/{applet}"] = to_busybox
    for mod in module_closure(version, MODULES):
        tree.add_host_path(f"/lib/modules/{version}/{mod}")
    for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if Path(f"/lib/modules/{version}/{extra}").exists():
            tree.add_host_path(f"/lib/modules/{version}/{extra}")
    tree.add_text("init", INIT, 0o755)
    tree.add_text("etc/lvol-storm/rcS", RCS.replace("@BOOT_MODULES@", " ".join(BOOT_MODULES)), 0o755)
    tree.add_text("usr/sbin/lvol-storm-bind", BIND, 0o755)
    for path, text in ETC.items():
        tree.add_text(path, text, 0o600 if path == "etc/shadow" else 0o644)
    tree.nodes["dev/console"] = (stat.S_IFCHR | 0o600, 5, 1)
    tree.nodes["dev/null"] = (stat.S_IFCHR | 0o666, 1, 3)
    return tree


def inputs_hash(tree: Tree, version: str) -> str:
    """The cache key: this script, the kernel, and every path, mode and content that goes into the image."""
    h = hashlib.sha256()
    h.update(f"format {FORMAT}\n".encode())
    h.update(Path(__file__).read_bytes())
    for path in (f"/boot/vmlinuz-{version}",):
        h.update(_file_digest(path).encode())
    for path, src in sorted(tree.files.items()):
        h.update(f"F {path} {os.stat(src).st_mode:o} {_file_digest(src)}\n".encode())
    for path, (text, mode) in sorted(tree.texts.items()):
        h.update(f"T {path} {mode:o} {hashlib.sha256(text).hexdigest()}\n".encode())
    for path, target in sorted(tree.links.items()):
        h.update(f"L {path} {target}\n".encode())
    for path in sorted(tree.dirs):
        h.update(f"D {path}\n".encode())
    return h.hexdigest()[:16]


_digests: dict[str, str] = {}


def _file_digest(path: str) -> str:
    if path not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _digests[path] = h.hexdigest()
    return _digests[path]


class Cpio:
    """A newc ("070701") archive, as the kernel unpacks an initramfs: no cpio binary and no root needed (device
    nodes are just header fields)."""

    def __init__(self, out: gzip.GzipFile) -> None:
        self.out = out
        self.ino = 1
        self.size = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.ino += 1
        chunk = header + name.encode() + b"\0"
        chunk += b"\0" * (-len(chunk) % 4) + data + b"\0" * (-len(data) % 4)
        self.out.write(chunk)
        self.size += len(chunk)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, stat.S_IFREG | (mode & 0o7777), data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def node(self, name: str, mode: int, major: int, minor: int) -> None:
        self._entry(name, mode, rdev=(major, minor))

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0)


def write_initramfs(tree: Tree, version: str, dest: Path, scratch: Path) -> None:
    """Write the tree as a gzip'd newc cpio; modules.dep and ld.so.cache are made for exactly what is in it."""
    # depmod and ldconfig need the files on disk: stage the modules and libraries, run them, read back.
    stage = scratch / "stage"
    for path, src in tree.files.items():
        if path.startswith(f"usr/lib/modules/{version}/") or path.startswith(f"lib/modules/{version}/") \
                or ".so" in path:
            copy = stage / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy)
    for path, target in tree.links.items():
        if ".so" in path or path in ("lib", "lib64"):
            link = stage / path
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink() and not link.exists():
                link.symlink_to(target)
    (stage / "etc").mkdir(parents=True, exist_ok=True)
    (stage / "etc/ld.so.conf").write_text(ETC["etc/ld.so.conf"])
    run([shutil.which("depmod") or "/sbin/depmod", "-b", str(stage), version])
    run([shutil.which("ldconfig") or "/sbin/ldconfig", "-r", str(stage)])
    mod_dir = next(p for p in (f"usr/lib/modules/{version}", f"lib/modules/{version}")
                   if (stage / p / "modules.dep").exists())
    for idx in sorted((stage / mod_dir).glob("modules.*")):
        rel = f"{mod_dir}/{idx.name}"
        if rel not in tree.files:
            tree.texts[rel] = (idx.read_bytes(), 0o644)
    tree.texts["etc/ld.so.cache"] = ((stage / "etc/ld.so.cache").read_bytes(), 0o644)
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        cpio = Cpio(gz)
        for d in sorted(tree.dirs):
            cpio.dir(d)
        for path, target in sorted(tree.links.items()):
            cpio.symlink(path, target)
        for path, (mode, major, minor) in sorted(tree.nodes.items()):
            cpio.node(path, mode, major, minor)
        for path, src in sorted(tree.files.items()):
            cpio.file(path, Path(src).read_bytes(), os.stat(src).st_mode)
        for path, (text, mode) in sorted(tree.texts.items()):
            cpio.file(path, text, mode)
        cpio.trailer()


KEEP_NEWEST = 3
PRUNE_AFTER_S = 24 * 3600


def prune(root: Path, keep: Path) -> None:
    """After a build: drop images no input matches any more (a package or this script changed), keeping the
    newest few and anything used in the last day (a guest of another run may be about to boot from it)."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file() and p != keep),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    now = time.time()
    for old in entries[KEEP_NEWEST - 1:]:
        if now - old.stat().st_mtime > PRUNE_AFTER_S:
            shutil.rmtree(old, ignore_errors=True)


def cache_root(requested: str | None) -> Path:
    """The cache directory: the one asked for, else /var/cache/lvol-storm/guest when writable, else the user's."""
    if requested:
        return Path(requested)
    default = Path(DEFAULT_CACHE)
    try:
        default.mkdir(parents=True, exist_ok=True)
        if os.access(default, os.W_OK):
            return default
    except OSError:
        pass
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lvol-storm" / "guest"


def build(cache_dir: str | None, version: str | None, with_python: bool) -> dict[str, object]:
    """The image for these inputs: reused from the cache when its hash is there, else built and put there."""
    version = kernel_version(version)
    tree = gather(version, with_python)
    key = inputs_hash(tree, version)
    root = cache_root(cache_dir)
    entry = root / key
    manifest = entry / "manifest.json"
    if manifest.is_file():
        with contextlib.suppress(OSError):  # another user's cache entry: theirs to keep fresh
            os.utime(entry)  # used now: pruning keeps what was used recently
        return {**json.loads(manifest.read_text()), "cached": True}
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=root) as tmp:
        scratch = Path(tmp)
        out = scratch / "out"
        out.mkdir()
        shutil.copy2(f"/boot/vmlinuz-{version}", out / "vmlinuz")
        write_initramfs(tree, version, out / "initrd.img", scratch)
        made: dict[str, object] = {
            "hash": key, "kernel_version": version, "kernel": str(entry / "vmlinuz"),
            "initrd": str(entry / "initrd.img"), "python": with_python,
            "initrd_bytes": (out / "initrd.img").stat().st_size, "files": len(tree.files) + len(tree.texts),
        }
        (out / "manifest.json").write_text(json.dumps(made, indent=2) + "\n")
        for made_file in out.iterdir():
            made_file.chmod(0o644)  # nothing secret in it, and a cache another user may share
        out.chmod(0o755)
        try:
            out.rename(entry)  # atomic: a concurrent build of the same key either wins or finds ours
        except OSError:
            if not manifest.is_file():
                raise
    prune(root, keep=entry)
    return {**json.loads(manifest.read_text()), "cached": False}


def link_into(directory: Path, info: dict[str, object]) -> None:
    """DIR/vmlinuz and DIR/initrd.img pointing at the cached image (replaced if there)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("kernel", "initrd"):
        link = directory / ("vmlinuz" if name == "kernel" else "initrd.img")
        tmp = link.with_name(link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(str(info[name]))
        tmp.replace(link)


def main(argv: Iterator[str] | list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guest_image.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    b = sub.add_parser("build", help="build or reuse the image; print {kernel, initrd, ...} as one JSON line")
    b.add_argument("--cache-dir", help=f"default {DEFAULT_CACHE} (or ~/.cache/lvol-storm/guest if not writable)")
    b.add_argument("--kernel-version", help="a /boot/vmlinuz-VERSION with /lib/modules/VERSION (default: newest)")
    b.add_argument("--python", action="store_true", help="include the host's python3 and its standard library")
    b.add_argument("--link-into", metavar="DIR", help="also make DIR/vmlinuz and DIR/initrd.img symlinks to the image")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        info = build(args.cache_dir, args.kernel_version, args.python)
        if args.link_into:
            link_into(Path(args.link_into), info)
    except BuildError as exc:
        print(f"guest_image: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
