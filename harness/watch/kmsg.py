"""Kernel log records -> typed user-space faults.

The kernel reports a user-space crash in one ratelimited line (`show_signal_msg`, `show_signal`, the OOM
killer). Those lines are the only trace a SIGSEGV leaves, so every form the kernel has printed is parsed
here: `/dev/kmsg` records, `dmesg` and `journalctl -k` lines, with and without the ` in FILE[...]` tail,
the old `[base+size]` and the new `[offset,base+size]` mapping forms, and the `Code:` line that follows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

# The x86 page-fault error code (arch/x86/include/asm/trap_pf.h), decoded into the words a reader wants.
_ERROR_BITS: tuple[tuple[int, str, str | None], ...] = (
    (1 << 2, "user", "kernel"),
    (1 << 1, "write", "read"),
    (1 << 0, "protection violation", "page not present"),
    (1 << 3, "reserved bit", None),
    (1 << 4, "instruction fetch", None),
    (1 << 5, "protection keys", None),
    (1 << 15, "SGX", None),
)


def decode_error_bits(error: int) -> list[str]:
    """`0x4` -> `["user", "read", "page not present"]`; extra bits (reserved, fetch, pkeys, SGX) follow."""
    words: list[str] = []
    for bit, when_set, when_clear in _ERROR_BITS:
        if error & bit:
            words.append(when_set)
        elif when_clear is not None:
            words.append(when_clear)
    return words


@dataclass(frozen=True)
class KernelRecord:
    """One kernel log message with what its transport told us (sequence number, timestamp in µs)."""

    message: str
    seq: int | None = None
    usec: int | None = None
    priority: int | None = None
    raw: str = ""


_KMSG = re.compile(r"^(?P<prio>\d+),(?P<seq>\d+),(?P<usec>\d+),[^;]*;(?P<msg>.*)$")
_DMESG = re.compile(r"^\[\s*(?P<sec>\d+)\.(?P<frac>\d+)\]\s?(?P<msg>.*)$")
_DMESG_CTIME = re.compile(r"^\[[A-Z][a-z]{2} [^\]]*\d{4}\]\s?(?P<msg>.*)$")
_JOURNAL = re.compile(r"^(?:\S+ +\d+ [\d:]+|\d{4}-\d\d-\d\dT[\d:.+\-]+) \S+ kernel: (?P<msg>.*)$")


def parse_record(line: str) -> KernelRecord | None:
    """A line as `/dev/kmsg`, `dmesg` or `journalctl -k` prints it; None for kmsg continuation lines."""
    line = line.rstrip("\r\n")
    if line.startswith(" "):
        # /dev/kmsg dictionary continuation (` SUBSYSTEM=...`): metadata, not a message.
        return None
    m = _KMSG.match(line)
    if m:
        prio = int(m["prio"])
        return KernelRecord(m["msg"], int(m["seq"]), int(m["usec"]), prio & 7, line)
    m = _DMESG.match(line)
    if m:
        usec = int(m["sec"]) * 1_000_000 + int(m["frac"].ljust(6, "0")[:6])
        return KernelRecord(m["msg"], None, usec, None, line)
    m = _DMESG_CTIME.match(line) or _JOURNAL.match(line)
    if m:
        return KernelRecord(m["msg"], None, None, None, line)
    return KernelRecord(line, None, None, None, line)


@dataclass
class UserFault:
    """A user-space fault the kernel reported: who (comm, tid), where (ip, mapping) and why (error bits).

    kind: `segfault`, `trap` (invalid opcode, divide error, int3 ...), `general protection`, `oom-kill`.
    `tid` is the thread id for faults and the process id for `oom-kill` (the OOM killer names processes).
    """

    kind: str
    comm: str
    tid: int
    signal: str
    fault_addr: int | None = None
    ip: int | None = None
    sp: int | None = None
    error: int | None = None
    error_bits: list[str] = field(default_factory=list)
    trap: str | None = None
    mapping: str | None = None
    file_offset: int | None = None
    map_base: int | None = None
    map_size: int | None = None
    cpu: int | None = None
    code: str | None = None
    kmsg_seq: int | None = None
    kmsg_usec: int | None = None
    message: str = ""

    @property
    def mapping_offset(self) -> int | None:
        """Offset of `ip` in the named file: given by the new form, `ip - base` in the old (static) form."""
        if self.file_offset is not None:
            return self.file_offset
        if self.ip is not None and self.map_base is not None:
            return self.ip - self.map_base
        return None

    def location(self) -> str:
        """`spdk_tgt+0x4de88`, `libspdk_lvol.so.10.0+0x8be8`, or `ip 0x...` when the ip is in no file."""
        off = self.mapping_offset
        if self.mapping and off is not None:
            return f"{self.mapping}+{off:#x}"
        if self.ip is not None:
            return f"ip {self.ip:#x} (anonymous memory)"
        return "unknown location"

    def describe(self) -> str:
        """One line a person reads first: what happened, where, and the decoded error bits."""
        what = {"segfault": f"segfault at {self.fault_addr:#x}" if self.fault_addr is not None else "segfault",
                "trap": f"trap {self.trap}", "general protection": "general protection fault",
                "oom-kill": "killed by the OOM killer"}.get(self.kind, self.kind)
        bits = f" ({', '.join(self.error_bits)})" if self.error_bits else ""
        where = f" at {self.location()}" if self.kind != "oom-kill" else ""
        return f"{self.comm}[{self.tid}] {what}{where}{bits}"

    def to_json(self) -> dict[str, Any]:
        """Addresses as hex strings, the way user-faults.json and crash.json spell them."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None or value == []:
                continue
            if key in {"fault_addr", "ip", "sp", "error", "file_offset", "map_base", "map_size"}:
                out[key] = hex(value)
            else:
                out[key] = value
        return out


_HEX = r"[0-9a-fA-F]+"
# ` in spdk_tgt[400000+46c000]` (old) or ` in libc.so.6[156219,7f2bd8e44000+156000]` (6.2+).
_IN_MAPPING = (
    rf"(?: in (?P<mapping>.+?)\[(?:(?P<off>{_HEX}),)?(?P<base>{_HEX})\+(?P<size>{_HEX})\])?"
)
_CPU = r"(?: likely on CPU (?P<cpu>\d+)(?: \(core \d+, socket \d+\))?)?"
_SEGFAULT = re.compile(
    rf"^(?P<comm>.+?)\[(?P<tid>\d+)\]: segfault at (?P<addr>{_HEX}) ip (?P<ip>{_HEX}) "
    rf"sp (?P<sp>{_HEX}) error (?P<error>{_HEX}){_IN_MAPPING}{_CPU}\s*$"
)
_TRAP = re.compile(
    rf"^(?:traps: )?(?P<comm>.+?)\[(?P<tid>\d+)\]:? (?:trap (?P<trap>.+?)|(?P<gp>general protection(?: fault)?))"
    rf" ip:(?P<ip>{_HEX}) sp:(?P<sp>{_HEX}) error:(?P<error>{_HEX}){_IN_MAPPING}{_CPU}\s*$"
)
_OOM = re.compile(
    r"^(?:Out of memory(?: \(oom_kill_allocating_task\))?: |Memory cgroup out of memory: )?"
    r"Kill(?:ed)? process (?P<pid>\d+) \((?P<comm>[^)]*)\)"
)
_OOM_SUMMARY = re.compile(r"^oom-kill:.*,task=(?P<comm>[^,]*),pid=(?P<pid>\d+),")
_SUPPRESSED = re.compile(r"^(?P<func>\w+): (?P<count>\d+) callbacks suppressed")
_CODE = re.compile(r"^Code: (?P<code>.*)$")

_TRAP_SIGNALS = {
    "invalid opcode": "SIGILL",
    "divide error": "SIGFPE",
    "int3": "SIGTRAP",
    "overflow": "SIGSEGV",
    "bounds": "SIGSEGV",
    "stack segment": "SIGBUS",
    "alignment check": "SIGBUS",
    "control protection": "SIGSEGV",
}


def _mapping_fields(m: re.Match[str]) -> dict[str, Any]:
    if not m["mapping"]:
        return {}
    return {
        "mapping": m["mapping"],
        "file_offset": int(m["off"], 16) if m["off"] else None,
        "map_base": int(m["base"], 16),
        "map_size": int(m["size"], 16),
    }


def parse_fault(record: KernelRecord | str) -> UserFault | None:
    """The fault a kernel message reports, or None when the message is about something else."""
    rec = record if isinstance(record, KernelRecord) else parse_record(record)
    if rec is None:
        return None
    msg = rec.message.strip()
    common: dict[str, Any] = {"kmsg_seq": rec.seq, "kmsg_usec": rec.usec, "message": msg}
    m = _SEGFAULT.match(msg)
    if m:
        error = int(m["error"], 16)
        return UserFault(
            kind="segfault", comm=m["comm"], tid=int(m["tid"]), signal="SIGSEGV",
            fault_addr=int(m["addr"], 16), ip=int(m["ip"], 16), sp=int(m["sp"], 16),
            error=error, error_bits=decode_error_bits(error),
            cpu=int(m["cpu"]) if m["cpu"] else None, **_mapping_fields(m), **common,
        )
    m = _TRAP.match(msg)
    if m:
        trap = m["trap"]
        return UserFault(
            kind="trap" if trap else "general protection", comm=m["comm"], tid=int(m["tid"]),
            signal=_TRAP_SIGNALS.get(trap, "SIGSEGV") if trap else "SIGSEGV", trap=trap,
            ip=int(m["ip"], 16), sp=int(m["sp"], 16), error=int(m["error"], 16),
            cpu=int(m["cpu"]) if m["cpu"] else None, **_mapping_fields(m), **common,
        )
    m = _OOM.match(msg) or _OOM_SUMMARY.match(msg)
    if m:
        return UserFault(kind="oom-kill", comm=m["comm"], tid=int(m["pid"]), signal="SIGKILL", **common)
    return None


def parse_code_line(record: KernelRecord | str) -> str | None:
    """The opcode bytes of a `Code: ...` line (it follows the fault line it belongs to)."""
    rec = record if isinstance(record, KernelRecord) else parse_record(record)
    if rec is None:
        return None
    m = _CODE.match(rec.message.strip())
    return m["code"] if m else None


def parse_suppressed(record: KernelRecord | str) -> tuple[str, int] | None:
    """`show_signal_msg: 5 callbacks suppressed` -> ("show_signal_msg", 5): fault lines the kernel dropped."""
    rec = record if isinstance(record, KernelRecord) else parse_record(record)
    if rec is None:
        return None
    m = _SUPPRESSED.match(rec.message.strip())
    return (m["func"], int(m["count"])) if m else None
