"""Bad input for the report: no addr2line (gdb instead), no gdb, core_pattern not writable, file lookup."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from harness.hosts.base import CommandResult
from harness.hosts.local import LocalHost
from harness.report.core import CORE_PATTERN, CorePattern, gdb_backtrace
from harness.report.crash import CrashReport
from harness.report.symbolize import locate_file, symbolize
from harness.watch.evidence import CrashEvidence, MapEntry
from harness.watch.kmsg import parse_fault
from tests.test_report_crash import CRASH_LINE, build_fake_target

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gcc", "gdb", "addr2line", "readelf")), reason="needs gcc, gdb, binutils")


class WithoutTools(LocalHost):
    """This machine, pretending some programs are not installed."""

    def __init__(self, missing: Sequence[str]) -> None:
        super().__init__("bare")
        self.missing = set(missing)

    def which(self, program: str) -> str | None:
        return None if program in self.missing else super().which(program)


class ReadOnlyProcSys(LocalHost):
    """A remote-like host whose /proc/sys is read-only (a container): writes to core_pattern fail."""

    @property
    def is_local(self) -> bool:
        return False

    def run(self, argv, **kw):  # type: ignore[no-untyped-def, override]
        text = argv if isinstance(argv, str) else " ".join(argv)
        if CORE_PATTERN in text and ">" in text:
            return CommandResult(text, 1, "", f"sh: 1: cannot create {CORE_PATTERN}: Read-only file system")
        return super().run(argv, **kw)


def _lib_offset(lib: Path) -> int:
    """The file offset of spdk_lvol_destroy's faulting line, from the compiler's own line table."""
    out = LocalHost().run(["gdb", "-batch", "-nx", "-ex", f"info line lvol.c:{CRASH_LINE}", str(lib)]).stdout
    start = int(out.split("starts at address ")[1].split()[0], 16)
    return start  # for a shared library with LOAD at offset 0, vaddr == file offset


@needs_tools
def test_gdb_symbolizes_when_addr2line_is_missing(tmp_path: Path) -> None:
    _, files = build_fake_target(tmp_path / "b", "shared")
    lib = files[1]
    offset = _lib_offset(Path(lib))
    full = symbolize(LocalHost(), lib, offset)
    by_gdb = symbolize(WithoutTools(["addr2line"]), lib, offset)
    assert full.symbol is not None and by_gdb.symbol is not None
    assert (by_gdb.symbol.function, by_gdb.symbol.line) == (full.symbol.function, full.symbol.line) == (
        "spdk_lvol_destroy", CRASH_LINE)
    assert by_gdb.command is not None and by_gdb.command.startswith("gdb ")
    none = symbolize(WithoutTools(["addr2line", "gdb"]), lib, offset)
    assert none.symbol is None and none.hint is not None and "neither addr2line nor gdb" in none.hint


def test_no_gdb_means_no_backtrace_said_plainly(tmp_path: Path) -> None:
    text, note = gdb_backtrace(WithoutTools(["gdb"]), "/bin/true", str(tmp_path / "core.1"))
    assert text is None and "gdb is not installed" in note


def test_core_pattern_not_writable_is_reported_and_left_alone(tmp_path: Path) -> None:
    before = Path(CORE_PATTERN).read_text().strip()
    with CorePattern(ReadOnlyProcSys(), str(tmp_path / "cores")) as cores:
        assert not cores.active
        assert cores.reason is not None and "not writable" in cores.reason and before in cores.reason
        assert Path(CORE_PATTERN).read_text().strip() == before
    ev = [CrashEvidence("exit", "died", "process", exit_rc=-11)]
    report = CrashReport.build(ev, LocalHost(), tmp_path, [], {"pid": 1}, cores=cores)
    assert any("not writable" in n for n in report.notes)
    assert report.title == "SIGSEGV: no kernel line (kernel log unavailable or ratelimited)"


def test_locate_file_prefers_recorded_maps() -> None:
    fault = parse_fault("reactor_0[17270]: segfault at 8 ip 00007f38f45e3be8 sp 00007fffbf0892a0 error 4 in "
                        "libspdk_lvol.so.10.0[8be8,7f38f45de000+a000] likely on CPU 0 (core 0, socket 0)")
    assert fault is not None
    maps = [MapEntry(0x7F38F45DE000, 0x7F38F45E8000, "r-xp", 0x3000, "/usr/src/spdk/build/lib/libspdk_lvol.so.10.0"),
            MapEntry(0x7F2BD8E44000, 0x7F2BD8F9A000, "r-xp", 0x26000, "/usr/lib/x86_64-linux-gnu/libc.so.6")]
    assert locate_file(fault, maps) == ("/usr/src/spdk/build/lib/libspdk_lvol.so.10.0", 0x3000 + 0x5BE8)
    assert locate_file(fault, []) == (None, 0x8BE8)
    assert locate_file(fault, [], ["/opt/lib/libspdk_lvol.so.10.0"]) == ("/opt/lib/libspdk_lvol.so.10.0", 0x8BE8)
    static = parse_fault("reactor_0[3692273]: segfault at 8 ip 000000000044de88 sp 00007ffcc77b0860 error 4 in "
                         "spdk_tgt[400000+46c000] likely on CPU 0 (core 0, socket 0)")
    assert static is not None
    assert locate_file(static, [], ["/usr/local/bin/spdk_tgt"]) == ("/usr/local/bin/spdk_tgt", 0x4DE88)
    missing = symbolize(LocalHost(), "/nonexistent/spdk_tgt", 0x4DE88)
    assert missing.symbol is None and missing.hint is not None and "no longer exists" in missing.hint


class FakeProcSys(LocalHost):
    """A remote-like host whose core_pattern lives in memory, so restore rules are tested without touching ours."""

    def __init__(self, value: str) -> None:
        super().__init__("fake")
        self.value = value

    @property
    def is_local(self) -> bool:
        return False

    def run(self, argv, **kw):  # type: ignore[no-untyped-def, override]
        if argv == ["cat", CORE_PATTERN]:
            return CommandResult("cat", 0, self.value + "\n", "")
        if isinstance(argv, list) and argv[:2] == ["sh", "-c"] and CORE_PATTERN in argv[2]:
            import shlex

            self.value = shlex.split(argv[2])[2]
            return CommandResult(argv[2], 0, "", "")
        return super().run(argv, **kw)


def test_core_pattern_restored_only_while_ours(tmp_path: Path) -> None:
    host = FakeProcSys("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h")
    with CorePattern(host, str(tmp_path / "a")) as a:
        assert a.active and host.value == f"{tmp_path}/a/core.%p.%e" and a.still_ours()
    assert host.value.startswith("|/usr/lib/systemd/systemd-coredump")
    with CorePattern(host, str(tmp_path / "b")) as b:
        host.value = "/elsewhere/core.%p"  # another run took over the machine-wide setting
        assert not b.still_ours()
    assert host.value == "/elsewhere/core.%p", "must not pull the pattern from under another run"
    assert b.reason is not None and "someone else" in b.reason
