"""Turn a fault's ip into `function at file:line` with addr2line on the target's host.

The kernel names the file the ip fell in: the static `spdk_tgt` (old form: offset = ip - base) or a
shared library (new form: the first number is already the file offset). The file's path comes from the
target's /proc/PID/maps recorded while it ran; addr2line wants a link-time address, so the file offset is
mapped through the ELF program headers (`readelf -lW`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from harness.hosts.base import Host
from harness.watch.evidence import MapEntry
from harness.watch.kmsg import UserFault


@dataclass
class Symbol:
    """Where an address is in the source: innermost function first, then the functions it was inlined into."""

    function: str | None
    file: str | None
    line: int | None
    binary: str
    address: int
    inlined_into: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.function and self.file and self.line:
            return f"{self.function} ({self.file.rsplit('/', 1)[-1]}:{self.line})"
        return self.function or "??"


@dataclass
class Symbolization:
    """The result of trying: a symbol, and/or a hint saying what to do when there was none."""

    binary: str | None
    file_offset: int | None
    address: int | None
    symbol: Symbol | None = None
    hint: str | None = None
    command: str | None = None


def locate_file(
    fault: UserFault, maps: list[MapEntry], binary_paths: list[str] | tuple[str, ...] = ()
) -> tuple[str | None, int | None]:
    """The path of the file the ip fell in and the ip's offset in that file.

    Prefers the target's recorded maps (exact vma, exact file offset); falls back to the binary paths
    the target was started with, matched by base name, with the offset the kernel line gives.
    """
    if fault.ip is not None:
        for entry in maps:
            if entry.contains(fault.ip) and (fault.mapping is None or entry.basename == fault.mapping):
                return entry.path, fault.ip - entry.start + entry.offset
    offset = fault.mapping_offset
    if fault.mapping:
        for entry in maps:
            if entry.basename == fault.mapping:
                return entry.path, offset
        for path in binary_paths:
            if path.rsplit("/", 1)[-1] == fault.mapping:
                return path, offset
    return None, offset


_LOAD = re.compile(
    r"^\s*LOAD\s+0x(?P<off>[0-9a-f]+)\s+0x(?P<vaddr>[0-9a-f]+)\s+0x[0-9a-f]+\s+0x(?P<filesz>[0-9a-f]+)",
    re.I,
)


def link_address(host: Host, path: str, file_offset: int) -> int:
    """File offset -> the address addr2line understands (p_vaddr + (offset - p_offset) of its LOAD)."""
    result = host.run(["readelf", "-lW", path], timeout=30)
    if result.ok:
        for line in result.stdout.splitlines():
            m = _LOAD.match(line)
            if not m:
                continue
            off, vaddr, filesz = int(m["off"], 16), int(m["vaddr"], 16), int(m["filesz"], 16)
            if off <= file_offset < off + filesz:
                return vaddr + file_offset - off
    return file_offset


def symbolize(host: Host, path: str | None, file_offset: int | None) -> Symbolization:
    """`addr2line -f -i -C -e FILE ADDR` on the host; a hint instead when the file, the tool or symbols lack."""
    out = Symbolization(binary=path, file_offset=file_offset, address=None)
    if path is None or file_offset is None:
        out.hint = ("the faulting file is unknown (no /proc/PID/maps recorded and no matching binary path): "
                    "symbolize by hand with `addr2line -f -e FILE OFFSET`")
        return out
    if not host.exists(path):
        out.hint = f"{path} no longer exists on {host.name}; symbolize with `addr2line -f -e FILE {file_offset:#x}`"
        return out
    address = link_address(host, path, file_offset)
    out.address = address
    if host.which("addr2line") is None:
        if host.which("gdb") is not None:
            return _symbolize_with_gdb(host, out, path, address)
        out.hint = (f"neither addr2line nor gdb is installed on {host.name} (apt install binutils gdb); "
                    "symbol unknown")
        return out
    argv = ["addr2line", "-f", "-i", "-C", "-e", path, hex(address)]
    out.command = shlex.join(argv)
    result = host.run(argv, timeout=60)
    lines = [ln.strip() for ln in result.stdout.splitlines() if ln.strip()]
    if not result.ok or len(lines) < 2:
        out.hint = f"`{out.command}` failed: {(result.stderr.strip() or 'no output')[:200]}"
        return out
    pairs = list(zip(lines[0::2], lines[1::2], strict=False))
    func, where = pairs[0]
    file, _, line = where.partition(":")
    line = line.split()[0] if line else ""
    sym = Symbol(
        function=None if func == "??" else func,
        file=None if file in {"??", ""} else file,
        line=int(line) if line.isdigit() and int(line) > 0 else None,
        binary=path,
        address=address,
        inlined_into=[f for f, _ in pairs[1:]],
    )
    if sym.function is None:
        out.hint = (f"{path} has no symbols at {address:#x}: build SPDK with --enable-debug (or install its "
                    "debug symbols) and run the command again")
        return out
    if sym.file is None:
        out.hint = f"{path} has a symbol table but no debug info (file:line unknown): build with -g"
    out.symbol = sym
    return out


_GDB_LINE = re.compile(r'^Line (?P<line>\d+) of "(?P<file>[^"]+)".*?<(?P<func>[^+>]+)(?:\+\d+)?>')
_GDB_SYMBOL = re.compile(r"^(?P<func>\S+)(?: \+ \d+)? in section")


def _symbolize_with_gdb(host: Host, out: Symbolization, path: str, address: int) -> Symbolization:
    """The same answer from gdb (`info line *ADDR`, `info symbol ADDR`) when binutils is missing."""
    argv = ["gdb", "-batch", "-nx", "-ex", f"info line *{address:#x}", "-ex", f"info symbol {address:#x}", path]
    out.command = shlex.join(argv)
    result = host.run(argv, timeout=60)
    func = file = None
    line: int | None = None
    for text in result.stdout.splitlines():
        if m := _GDB_LINE.match(text.strip()):
            func, file, line = m["func"], m["file"], int(m["line"])
            break
        if m := _GDB_SYMBOL.match(text.strip()):
            func = func or m["func"]
    if func is None:
        out.hint = f"{path} has no symbols at {address:#x} (gdb found none): build SPDK with --enable-debug"
        return out
    out.symbol = Symbol(func, file, line, path, address)
    if file is None:
        out.hint = f"{path} has a symbol table but no debug info (file:line unknown): build with -g"
    return out
