"""Hugepages for `spdk_tgt`: reserve what is short, mount a hugetlbfs if none is, give back only what we took.

Written against `Host` so a lab node gets the same treatment as this machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import TargetError
from harness.hosts.base import Host

NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"


def _meminfo(host: Host) -> dict[str, int]:
    text = host.read_file("/proc/meminfo").decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def hugetlbfs_mount(host: Host) -> str | None:
    """The first mounted hugetlbfs, or None."""
    for line in host.read_file("/proc/mounts").decode().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "hugetlbfs":
            return fields[1]
    return None


@dataclass
class HugepageReservation:
    """Make `need_mb` of hugepages free on `host` for the target's lifetime.

    `huge_dir` is what to pass as `--huge-dir` (a mount we made, or an existing one).
    `release()` undoes exactly what `reserve()` did, and is safe to call twice.
    """

    host: Host
    need_mb: int
    mount_dir: str
    added_pages: int = 0
    set_to: int | None = None
    mounted: str | None = None
    huge_dir: str | None = None

    def reserve(self) -> None:
        info = _meminfo(self.host)
        page_kb = info.get("Hugepagesize", 2048)
        need_pages = -(-self.need_mb * 1024 // page_kb)
        free = info.get("HugePages_Free", 0)
        if free < need_pages:
            short_kb = (need_pages - free) * page_kb
            if short_kb > info.get("MemAvailable", 0):
                raise TargetError(
                    f"{self.host.name}: hugepages: need {need_pages - free} more {page_kb} kB pages "
                    f"({short_kb // 1024} MiB) but only {info.get('MemAvailable', 0) // 1024} MiB is available: "
                    "free memory, lower target.hugepages_mb, or run with --target-arg=--no-huge"
                )
            current = int(self.host.read_file(NR_HUGEPAGES).decode().strip() or 0)
            want = current + (need_pages - free)
            res = self.host.run(["sh", "-c", f"echo {want} > {NR_HUGEPAGES}"])
            got = int(self.host.read_file(NR_HUGEPAGES).decode().strip() or 0)
            if got > current:
                self.added_pages = got - current
                self.set_to = got
            if not res.ok or got < want:
                self.release()
                raise TargetError(
                    f"{self.host.name}: hugepages: need {need_pages} free {page_kb} kB pages "
                    f"({self.need_mb} MiB), {NR_HUGEPAGES} only reached {got} (free memory is fragmented "
                    "or short): free memory, lower target.mem_size_mb, or run with --target-arg=--no-huge"
                )
        self.huge_dir = hugetlbfs_mount(self.host)
        if self.huge_dir is None:
            self.host.makedirs(self.mount_dir)
            res = self.host.run(["mount", "-t", "hugetlbfs", "nodev", self.mount_dir])
            if not res.ok:
                self.release()
                raise TargetError(
                    f"{self.host.name}: no hugetlbfs is mounted and `mount -t hugetlbfs nodev "
                    f"{self.mount_dir}` failed: {res.stderr.strip()}: mount one (e.g. /dev/hugepages) "
                    "or run with --target-arg=--no-huge"
                )
            self.mounted = self.mount_dir
            self.huge_dir = self.mount_dir

    def release(self) -> None:
        if self.mounted:
            self.host.run(["umount", self.mounted])
            self.mounted = None
        if self.added_pages and self.set_to is not None:
            current = int(self.host.read_file(NR_HUGEPAGES).decode().strip() or 0)
            # Give back only our pages, and only if nobody changed the setting since.
            if current == self.set_to:
                self.host.run(["sh", "-c", f"echo {current - self.added_pages} > {NR_HUGEPAGES}"])
            self.added_pages = 0
            self.set_to = None
