"""Bad input for the report: no addr2line (gdb instead), no gdb, core_pattern not writable, file lookup."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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


class GdbOverAHugepageCore(LocalHost):
    """gdb over a real spdk_tgt core: the frames, and on stderr one warning per unlinked hugepage file."""

    def which(self, program: str) -> str | None:
        return "/usr/bin/gdb" if program == "gdb" else super().which(program)

    def run(self, argv, **kw):  # type: ignore[no-untyped-def, override]
        warn = ("warning: Can't open file /tmp/r/hugepages/spdk_pid28235map_{} (deleted) during file-backed "
                "mapping note processing\n\n")
        stderr = "".join(warn.format(i) for i in range(1000)) + "warning: core file may not match executable\n"
        return CommandResult(" ".join(argv), 0, "#0  spdk_lvol_destroy (lvol=0x0) at lvol.c:1884\n", stderr)


def test_gdbs_warnings_for_unlinked_hugepage_files_are_one_line(tmp_path: Path) -> None:
    text, _note = gdb_backtrace(GdbOverAHugepageCore(), "/bin/spdk_tgt", str(tmp_path / "core.1"))
    assert text is not None and text.startswith("#0  spdk_lvol_destroy")
    assert "map_" not in text and "(1000 gdb warnings" in text
    assert "core file may not match executable" in text  # other warnings are kept
    assert len(text) < 400


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


def _pattern_file(tmp_path: Path, value: str) -> str:
    """A stand-in for /proc/sys/kernel/core_pattern: same commands, no machine-wide side effect."""
    path = tmp_path / "core_pattern"
    path.write_text(value + "\n")
    return str(path)


def _cp(tmp_path: Path, proc: str, name: str) -> CorePattern:
    return CorePattern(LocalHost(), str(tmp_path / name), proc_path=proc, registry=str(tmp_path / "reg" / "cp"))


ORIGINAL = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"


def test_core_pattern_set_and_restored(tmp_path: Path) -> None:
    proc = _pattern_file(tmp_path, ORIGINAL)
    with _cp(tmp_path, proc, "a") as a:
        assert a.active and a.still_ours() and a.previous == ORIGINAL
        assert Path(proc).read_text().strip() == a.pattern and a.pattern.startswith(f"|{a.handler} %P %e %c")
    assert Path(proc).read_text().strip() == ORIGINAL and a.restored == "restored"


@pytest.mark.parametrize("first_out", ["a", "b"])
def test_overlapping_runs_share_one_pattern_and_the_last_restores(tmp_path: Path, first_out: str) -> None:
    """pytest-xdist workers or two storms on one host: both set the same pattern, so neither takes the
    other's cores, whoever leaves first; the machine gets its own value back at the end."""
    proc = _pattern_file(tmp_path, ORIGINAL)
    a, b = _cp(tmp_path, proc, "a"), _cp(tmp_path, proc, "b")
    a.__enter__()
    b.__enter__()
    assert a.pattern == b.pattern == Path(proc).read_text().strip()
    first, second = (a, b) if first_out == "a" else (b, a)
    first.__exit__(None, None, None)
    assert Path(proc).read_text().strip() == second.pattern and second.still_ours()
    second.__exit__(None, None, None)
    assert Path(proc).read_text().strip() == ORIGINAL


def test_external_change_is_left_alone(tmp_path: Path) -> None:
    proc = _pattern_file(tmp_path, ORIGINAL)
    with _cp(tmp_path, proc, "b") as b:
        Path(proc).write_text("/elsewhere/core.%p\n")  # an admin or another tool took the setting
        assert not b.still_ours()
    assert Path(proc).read_text().strip() == "/elsewhere/core.%p", "must not pull the pattern from under it"
    assert b.reason is not None and "someone else" in b.reason
    with _cp(tmp_path, proc, "c"):
        pass
    assert Path(proc).read_text().strip() == "/elsewhere/core.%p"


def test_a_dead_harness_does_not_keep_the_pattern(tmp_path: Path) -> None:
    """A run killed before __exit__ left its registration and pattern; the next run restores the original."""
    proc = _pattern_file(tmp_path, ORIGINAL)
    ghost = _cp(tmp_path, proc, "ghost")
    ghost.__enter__()
    child = subprocess.Popen(["true"])
    child.wait()
    registry = tmp_path / "reg" / "cp" / "users"
    (registry / ghost.token).rename(registry / f"{socket.gethostname()}-{child.pid}-dead")
    with _cp(tmp_path, proc, "next") as nxt:
        assert nxt.previous == ghost.pattern
    assert Path(proc).read_text().strip() == ORIGINAL


def _pipe_core(cp: CorePattern, pid: int, comm: str, data: bytes, limit: str = "18446744073709551615",
               cwd: Path | None = None) -> None:
    """What the kernel does for a dumping process: run the pattern's handler with the core on stdin."""
    args = [str(pid), comm, limit, "11", "1700000000", "0", "0", "node"]
    subprocess.run([cp.handler, *args], input=data, check=True, timeout=30, cwd=cwd)


def test_each_runs_cores_land_in_its_own_dir_while_another_run_is_in(tmp_path: Path) -> None:
    """Two runs on one machine (two `make test` at once): a's target's core goes to a's directory and b's to
    b's, whichever entered last (with one pattern per run, a crash while b held it once lost a's core)."""
    proc = _pattern_file(tmp_path, ORIGINAL)
    a, b = _cp(tmp_path, proc, "a"), _cp(tmp_path, proc, "b")
    with a, b:
        a.adopt(4242)
        b.adopt(4343)
        _pipe_core(a, 4242, "reactor_0", b"\x7fELF-a")
        _pipe_core(b, 4343, "reactor_0", b"\x7fELF-b")
        assert a.find_core(4242, timeout=1.0) == f"{tmp_path}/a/core.4242.reactor_0"
        assert (tmp_path / "b" / "core.4343.reactor_0").read_bytes() == b"\x7fELF-b"
        assert a.find_core(4343, timeout=0.3) is None


def test_another_processs_core_goes_where_the_machines_own_pattern_says(tmp_path: Path) -> None:
    proc = _pattern_file(tmp_path, "core.%p")  # relative: in the dumping process's cwd
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"], cwd=cwd)
    try:
        with _cp(tmp_path, proc, "a") as a:
            _pipe_core(a, sleeper.pid, "sleep", b"core of someone else")
            assert (cwd / f"core.{sleeper.pid}").read_bytes() == b"core of someone else"
            _pipe_core(a, sleeper.pid + 1, "x", b"no core for a limit of 0", limit="0")
            assert not (cwd / f"core.{sleeper.pid + 1}").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_last_operations_of_a_long_storm_are_found_in_well_under_a_second_each() -> None:
    """A kill -9 at the end of a long storm: the report's last operations and their dependencies come from a
    10,000-call tail. Looked up by name, not by a scan back per call (that took 35 s on such a tail), and the
    dependencies are still there: each chosen call's lvol was made by a chosen create."""
    import random

    from harness.report.reproducer import last_operations

    rng = random.Random(7)
    records: list[dict[str, object]] = [
        {"worker": -1, "seq": 0, "method": "bdev_lvol_create_lvstore", "params": {"lvs_name": "lvs0"},
         "t_start": 0.0, "t_end": 0.1, "result": "lvs-uuid"}]
    live: list[str] = []
    for n in range(1, 10_000):
        worker, t = n % 8, n * 0.001
        if not live or rng.random() < 0.3:
            uuid = f"u{n}"
            records.append({"worker": worker, "seq": n, "method": "bdev_lvol_create", "t_start": t, "t_end": t,
                            "params": {"lvs_name": "lvs0", "lvol_name": f"v{n}", "size_in_mib": 4}, "result": uuid})
            live.append(uuid)
        elif rng.random() < 0.5:
            records.append({"worker": worker, "seq": n, "method": "bdev_lvol_snapshot", "t_start": t, "t_end": t,
                            "params": {"lvol_name": rng.choice(live), "snapshot_name": f"s{n}"}, "result": f"u{n}"})
            live.append(f"u{n}")
        else:
            records.append({"worker": worker, "seq": n, "method": "bdev_lvol_resize", "t_start": t, "t_end": t,
                            "params": {"name": rng.choice(live), "size_in_mib": 8}, "result": True})
    t0 = time.perf_counter()
    chosen = last_operations(records, per_worker=20)
    assert time.perf_counter() - t0 < 3.0
    made = {r["result"] for r in chosen if r["method"] in ("bdev_lvol_create", "bdev_lvol_snapshot")}
    for r in chosen:
        params = r["params"]
        assert isinstance(params, dict)
        for key in ("lvol_name", "name"):
            if r["method"] != "bdev_lvol_create" and key in params:
                assert params[key] in made, r
