"""Is this kernel fault line ours? The target's threads and mappings, tracked while it runs.

In `comm[N]` the comm is a thread name and N a thread id, so a fault counts against the target when N is
one of its threads (tracked from /proc/PID/task, or /proc/N/status names the target as its Tgid), or when
it names a file the target had mapped at that address, or an SPDK thread name, and the target dies at
that moment. A fault in any other process is logged and never a failure.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from harness.hosts.base import Host
from harness.watch.evidence import MapEntry, parse_maps
from harness.watch.kmsg import UserFault, parse_code_line, parse_record, parse_suppressed

KERNEL_CONTEXT = 2
"""Lines kept on each side of one of the target's kernel lines in a crash report (what the kernel printed
with it: a register dump, `potentially unexpected fatal signal`), other processes' faults left out."""
_NAMED_ID = re.compile(r"\[(\d+)\]|\b(?:pid|PID)[:=]? ?(\d+)|\bprocess (\d+)\b")
SPDK_THREAD_NAMES = re.compile(
    r"^(?:reactor_\d+|spdk_tgt|nvmf_tgt|vhost|iscsi_tgt|app_thread|eal-intr-thread|rte_mp_handle|"
    r"rte-worker-\d+|telemetry-v\d|dpdk-\w+|spdk_\w+|lcore-worker-\d+)$"
)


def read_host_text(host: Host, path: str) -> str | None:
    """A /proc file: directly when local, through `cat` over the host otherwise (SFTP stat says size 0)."""
    if host.is_local:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None
    result = host.run(["cat", path], timeout=10)
    return result.stdout if result.ok else None


def list_tasks(host: Host, pid: int) -> set[int] | None:
    """Thread ids of `pid`, None when it is gone."""
    if host.is_local:
        try:
            return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            return None
    result = host.run(["ls", f"/proc/{pid}/task"], timeout=10)
    if not result.ok:
        return None
    return {int(t) for t in result.stdout.split() if t.isdigit()}


def thread_group(host: Host, tid: int) -> int | None:
    """The process (Tgid) a thread id belongs to right now, None when no such thread exists."""
    text = read_host_text(host, f"/proc/{tid}/status")
    if not text:
        return None
    m = re.search(r"^Tgid:\s*(\d+)", text, re.M)
    return int(m.group(1)) if m else None


def core_dumping(host: Host, pid: int) -> bool | None:
    """True while the kernel writes the process's core (it is already dead), None when it is gone."""
    text = read_host_text(host, f"/proc/{pid}/status")
    if not text:
        return None
    return bool(re.search(r"^CoreDumping:\s*1", text, re.M)) or bool(re.search(r"^State:\s*Z", text, re.M))


@dataclass(frozen=True)
class Verdict:
    """`ours` True/False, or None for "ours only if the target dies now" (decided by the caller)."""

    ours: bool | None
    reason: str


class TargetIdentity:
    """What the target looked like while it ran: its thread ids, file mappings and executable."""

    def __init__(self, host: Host, pid: int, binary_paths: Iterable[str] = ()) -> None:
        self.host = host
        self.pid = pid
        self.binary_paths = tuple(binary_paths)
        self.tids: set[int] = {pid}
        self.maps: list[MapEntry] = []
        self.exe: str | None = None
        self._maps_at = 0.0
        self._lock = threading.Lock()

    def refresh(self, maps_every_s: float = 10.0) -> bool:
        """Record the current threads (every call) and mappings (at start, when threads change, and every
        `maps_every_s`: libraries are loaded at start, and /proc/PID/maps is large); False when it is gone."""
        tasks = list_tasks(self.host, self.pid)
        if tasks is None:
            return False
        now = time.monotonic()
        maps_text = None
        if not tasks <= self.tids or not self.maps or now - self._maps_at >= maps_every_s:
            maps_text = read_host_text(self.host, f"/proc/{self.pid}/maps")
            self._maps_at = now
        exe = None
        if self.exe is None:
            if self.host.is_local:
                try:
                    exe = os.readlink(f"/proc/{self.pid}/exe")
                except OSError:
                    exe = None
            else:
                res = self.host.run(["readlink", f"/proc/{self.pid}/exe"], timeout=10)
                exe = res.stdout.strip() or None if res.ok else None
        with self._lock:
            self.tids |= tasks
            if maps_text:
                seen = {(m.start, m.path) for m in self.maps}
                self.maps.extend(m for m in parse_maps(maps_text) if (m.start, m.path) not in seen)
            if exe:
                self.exe = exe.removesuffix(" (deleted)")
        return True

    def known_tids(self) -> set[int]:
        with self._lock:
            return set(self.tids)

    def snapshot_maps(self) -> list[MapEntry]:
        with self._lock:
            return list(self.maps)

    def _file_names(self) -> set[str]:
        names = {p.rsplit("/", 1)[-1] for p in self.binary_paths}
        if self.exe:
            names.add(self.exe.rsplit("/", 1)[-1])
        return names

    def judge(self, fault: UserFault) -> Verdict:
        """A verdict from what is known now; `ours=None` asks the caller to check whether the target died."""
        if fault.kind == "oom-kill":
            if fault.tid == self.pid:
                return Verdict(True, f"the OOM killer chose pid {fault.tid}, the target")
            return Verdict(False, f"the OOM killer chose pid {fault.tid}, not the target ({self.pid})")
        with self._lock:
            if fault.tid in self.tids:
                return Verdict(True, f"tid {fault.tid} is a thread of the target (pid {self.pid})")
            maps = list(self.maps)
        tgid = thread_group(self.host, fault.tid)
        if tgid == self.pid:
            return Verdict(True, f"tid {fault.tid} belongs to the target (Tgid {tgid})")
        if tgid is not None:
            return Verdict(False, f"tid {fault.tid} belongs to pid {tgid}, not the target ({self.pid})")
        if fault.ip is not None and maps:
            hit = next((m for m in maps if m.contains(fault.ip)), None)
            if hit is not None:
                if fault.mapping is None or hit.basename == fault.mapping:
                    return Verdict(None, f"ip {fault.ip:#x} is in the target's mapping of {hit.path}")
                return Verdict(False, f"ip {fault.ip:#x} is in {fault.mapping}, but the target has {hit.path} there")
            if fault.mapping is not None:
                # Libraries land at random addresses in every process: another process faulted.
                return Verdict(False, f"ip {fault.ip:#x} in {fault.mapping} is outside every executable mapping "
                                      f"of the target")
        elif fault.mapping and fault.mapping in self._file_names():
            return Verdict(None, f"{fault.mapping} is the target's binary (its mappings were not recorded)")
        if SPDK_THREAD_NAMES.match(fault.comm):
            return Verdict(None, f"comm {fault.comm} is an SPDK thread name")
        return Verdict(False, f"{fault.comm}[{fault.tid}] is not a thread of the target and faulted outside it")


def confirm_by_death(
    verdict: Verdict, died: Callable[[float], bool], grace_s: float, *,
    fault_signal: str | None = None, exit_rc: Callable[[], int | None] = lambda: None,
) -> Verdict:
    """Settle an undecided verdict: a fatal fault in the target kills it, so it must die within `grace_s`,
    and by the fault's signal when its exit code is known (a SIGABRT death is not this SIGSEGV line's)."""
    if verdict.ours is not None:
        return verdict
    if not died(grace_s):
        return Verdict(False, f"{verdict.reason}, but the target lived on for {grace_s:g} s: not its fault")
    rc = exit_rc()
    if rc is not None and fault_signal is not None:
        try:
            expected = -int(signal.Signals[fault_signal])
        except KeyError:
            expected = None
        if expected is not None and rc != expected:
            return Verdict(False, f"{verdict.reason}, but the target died of {rc}, not {fault_signal}")
    return Verdict(True, f"{verdict.reason}, and the target died at that moment")


def target_kernel_lines(lines: Sequence[str], tids: Iterable[int], *, own: Iterable[str] = (),
                        foreign: Iterable[str] = (), context: int = KERNEL_CONTEXT) -> list[str]:
    """The kernel lines a crash report keeps: the target's (a fault judged its own, a line naming one of its
    thread ids, each with its `Code:` line), the kernel's note of dropped fault lines, and `context` lines
    around them; a fault line judged another process's (`foreign`), and its `Code:` line, never, since a
    busy machine segfaults too and a kernel.log of strangers' deaths sends the reader the wrong way."""
    tid_set = set(tids)
    own_set, foreign_set = set(own), set(foreign)
    messages = [(rec.message.strip() if (rec := parse_record(line)) is not None else line) for line in lines]
    ours = [m in own_set or parse_suppressed(m) is not None
            or any(int(n) in tid_set for groups in _NAMED_ID.findall(m) for n in groups if n) for m in messages]
    theirs = [m in foreign_set and not o for m, o in zip(messages, ours, strict=True)]
    for i in range(1, len(messages)):
        if parse_code_line(messages[i]) is not None:  # the opcode bytes of the fault line just before
            ours[i], theirs[i] = ours[i - 1], theirs[i - 1]
    keep: set[int] = set()
    for i, mine in enumerate(ours):
        if mine:
            keep.update(range(max(0, i - context), min(len(lines), i + context + 1)))
    return [lines[i] for i in sorted(keep) if not theirs[i]]
