"""Crash reports from real deaths: a compiled fake `spdk_tgt` faulting in `spdk_lvol_destroy` (static, PIE,
shared library, stripped), a real core through core_pattern and gdb, SIGABRT and hang, and the reproducer
replayed against a small JSON-RPC server."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.hosts.local import LocalHost
from harness.report.core import CORE_PATTERN, CorePattern
from harness.report.crash import CrashReport
from harness.report.reproducer import last_operations
from harness.watch.kernel import KernelLogWatch
from harness.watch.watchdog import Watchdog
from tests.test_watch_e2e import Helper, require_fault_evidence

pytestmark = pytest.mark.timeout(60)

LVOL_C = """\
#include <stddef.h>
struct spdk_blob;
struct spdk_lvol { void *lvol_store; struct spdk_blob *blob; };
struct destroy_req { struct spdk_lvol *clone_lvol; };

__attribute__((noinline)) int spdk_blob_is_snapshot(struct spdk_blob *blob) { return blob != NULL; }

__attribute__((noinline)) int spdk_lvol_destroy(struct destroy_req *req)
{
	volatile int rc = 0;
	if (spdk_blob_is_snapshot(req->clone_lvol->blob)) { /* CRASH */
		rc = 1;
	}
	return rc;
}
"""
CRASH_LINE = next(i for i, line in enumerate(LVOL_C.splitlines(), 1) if "/* CRASH */" in line)

MAIN_C = """\
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
struct destroy_req;
int spdk_lvol_destroy(struct destroy_req *req);
int main(int argc, char **argv)
{
	struct stat st;
	struct timespec ts;
	struct { void *clone_lvol; } req = { NULL };
	prctl(PR_SET_NAME, "reactor_0", 0, 0, 0);
	for (int i = 0; i < 30000 && stat(argv[1], &st) != 0; i++)
		usleep(1000);
	clock_gettime(CLOCK_REALTIME, &ts);
	printf("about to fault %ld.%09ld\\n", (long)ts.tv_sec, ts.tv_nsec);
	fflush(stdout);
	return spdk_lvol_destroy((struct destroy_req *)&req);
}
"""

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed: cannot build the fake target")


def _kernel_log_usable() -> bool:
    watch = KernelLogWatch(LocalHost(), on_record=lambda r: None)
    usable = watch.start() != "none"
    watch.stop()
    return usable


needs_kernel_log = pytest.mark.skipif(not _kernel_log_usable(), reason="kernel log unreadable here")


def build_fake_target(out: Path, variant: str) -> tuple[Path, list[str]]:
    """Compile the fake target; returns the executable and the files the kernel line may name."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lvol.c").write_text(LVOL_C)
    (out / "main.c").write_text(MAIN_C)
    exe = out / "spdk_tgt"
    cc = ["gcc", "-O0", "-fno-omit-frame-pointer"]
    if variant == "shared":
        lib = out / "libspdk_lvol.so.10.0"
        subprocess.run([*cc, "-g", "-shared", "-fPIC", "-o", str(lib), str(out / "lvol.c")], check=True)
        subprocess.run([*cc, "-g", "-o", str(exe), str(out / "main.c"), str(lib), f"-Wl,-rpath,{out}"],
                       check=True)
        return exe, [str(exe), str(lib)]
    flags = {"pie": ["-g"], "nopie": ["-g", "-no-pie"], "stripped": ["-s"]}[variant]
    subprocess.run([*cc, *flags, "-o", str(exe), str(out / "main.c"), str(out / "lvol.c")], check=True)
    return exe, [str(exe)]


def history(t_crash: float) -> list[dict[str, Any]]:
    """History records as history.jsonl holds them: setup, two workers, and one call after the crash."""
    recs: list[dict[str, Any]] = [
        {"v": 1, "worker": -1, "conn": 0, "seq": 0, "method": "bdev_malloc_create",
         "params": {"num_blocks": 32768, "block_size": 512, "name": "Malloc0"}, "t_start": t_crash - 60,
         "t_end": t_crash - 59.9, "result": "Malloc0"},
        {"v": 1, "worker": -1, "conn": 0, "seq": 1, "method": "bdev_lvol_create_lvstore",
         "params": {"bdev_name": "Malloc0", "lvs_name": "lvs0"}, "t_start": t_crash - 59,
         "t_end": t_crash - 58.9, "result": "uuid-lvs"},
    ]
    for worker in (0, 1):
        for seq in range(25):
            recs.append({"v": 1, "worker": worker, "conn": worker, "seq": seq, "method": "bdev_lvol_create",
                         "params": {"lvs_name": "lvs0", "lvol_name": f"w{worker}-{seq}", "size_in_mib": 4},
                         "t_start": t_crash - 30 + seq + worker * 0.5, "t_end": t_crash - 29.9 + seq,
                         "result": f"uuid-{worker}-{seq}"})
    recs.append({"v": 1, "worker": 0, "conn": 0, "seq": 25, "method": "bdev_lvol_delete",
                 "params": {"name": "uuid-0-24"}, "t_start": t_crash - 0.5, "t_end": t_crash - 0.4,
                 "error": {"code": -32603, "message": "Device or resource busy", "errno": "EBUSY"}})
    recs.append({"v": 1, "worker": 1, "conn": 1, "seq": 25, "method": "bdev_get_bdevs", "params": None,
                 "t_start": t_crash + 5, "t_end": t_crash + 5.1, "result": []})
    return recs


def crash_fake_target(tmp_path: Path, variant: str, *, cores: CorePattern | None = None,
                      run_dir: Path | None = None, need_fault_line: bool = True) -> tuple[CrashReport, Watchdog]:
    host = LocalHost()
    exe, files = build_fake_target(tmp_path / f"build-{variant}", variant)
    trigger = tmp_path / f"trigger-{variant}"
    log = tmp_path / f"target-{variant}.log"
    proc = host.spawn([str(exe), str(trigger)], log_path=str(log), core_unlimited=cores is not None)
    if cores is not None:
        cores.adopt(proc.pid)
    wd = Watchdog(host, pid=proc.pid, log_path=str(log), binary_paths=files, process=proc).start()
    try:
        time.sleep(0.2)
        trigger.touch()
        assert wd.crashed.wait(5)
        evidence = wd.settle(5)
        assert proc.poll() == -11
        if need_fault_line:
            require_fault_evidence(wd, proc.pid, timeout=0.5)
            assert {ev.kind for ev in wd.evidence} == {"fault", "exit"}
        evidence = wd.evidence
        report = CrashReport.build(evidence, host, run_dir or tmp_path, history(min(e.t for e in evidence)),
                                   {"pid": proc.pid, "binary": str(exe), "variant": variant, "log_path": str(log)},
                                   cores=cores, binary_paths=files, notes=list(wd.warnings))
    finally:
        wd.stop()
    return report, wd


@needs_gcc
@needs_kernel_log
@pytest.mark.parametrize("variant", ["pie", "nopie", "shared"])
def test_symbolized_title_from_kernel_line(tmp_path: Path, variant: str) -> None:
    report, _ = crash_fake_target(tmp_path, variant)
    assert report.title == f"SIGSEGV in spdk_lvol_destroy (lvol.c:{CRASH_LINE})"
    assert report.fault is not None and report.fault.fault_addr == 8
    assert report.fault.mapping == ("libspdk_lvol.so.10.0" if variant == "shared" else "spdk_tgt")
    assert report.symbolization is not None and report.symbolization.symbol is not None
    out = report.write(tmp_path / "crashes")
    data = json.loads((out / "crash.json").read_text())
    assert data["title"] == report.title
    assert data["fault"]["error_bits"] == ["user", "read", "page not present"]
    assert data["fault"]["comm"] == "reactor_0"
    assert data["symbolized"]["function"] == "spdk_lvol_destroy" and data["symbolized"]["line"] == CRASH_LINE
    kernel_log = (out / "kernel.log").read_text()
    assert "segfault at 8" in kernel_log and "Code: " in kernel_log
    assert "about to fault" in (out / "target.log").read_text()
    assert data["fault"]["code"].count("<") == 1
    assert any("core: not collected" in n for n in data["notes"])


@needs_gcc
@needs_kernel_log
def test_stripped_binary_gives_offset_title_and_hint(tmp_path: Path) -> None:
    report, _ = crash_fake_target(tmp_path, "stripped")
    assert report.fault is not None
    offset = report.fault.mapping_offset
    assert offset is not None and report.title == f"SIGSEGV at spdk_tgt+{offset:#x}"
    assert report.symbolization is not None and report.symbolization.symbol is None
    assert any("no symbols" in n for n in report.notes), report.notes


@needs_gcc
@needs_kernel_log
def test_real_core_backtrace_and_report_layout(tmp_path: Path) -> None:
    before = Path(CORE_PATTERN).read_text().strip()
    with CorePattern(LocalHost(), str(tmp_path / "cores")) as cores:
        if not cores.active:
            pytest.skip(f"cannot collect a core here: {cores.reason}")
        assert Path(CORE_PATTERN).read_text().strip() == cores.pattern
        # the title comes from the core's backtrace here, with or without the (ratelimited) kernel line
        report, _ = crash_fake_target(tmp_path, "shared", cores=cores, need_fault_line=False)
        if not cores.still_ours():
            pytest.skip(f"another session changed the machine-wide {CORE_PATTERN} during this test")
    # The last session holding the pattern restores the machine's own; one leaving while another (a second
    # `make test` beside this one runs this very test) still holds it hands the pattern over instead.
    now = Path(CORE_PATTERN).read_text().strip()
    if cores.restored and cores.restored.startswith("handed to "):
        assert now == cores.pattern, f"handed over, yet {CORE_PATTERN} is {now!r}"
    else:  # the machine's own value; `before` is it unless another session held the pattern when this began
        assert cores.restored == "restored" and now != cores.pattern, ("core_pattern was not restored", now)
        assert now == before or before == cores.pattern, (now, before)
    assert report.backtrace is not None, report.notes
    assert report.backtrace.signal == "SIGSEGV"
    assert report.backtrace.frames[0].func == "spdk_lvol_destroy"
    assert [f.func for f in report.backtrace.frames[:2]] == ["spdk_lvol_destroy", "main"]
    assert report.title == f"SIGSEGV in spdk_lvol_destroy (lvol.c:{CRASH_LINE})"
    out = report.write(tmp_path / "crashes")
    core = next(out.glob("core.*.gz"))
    with gzip.open(core, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert "#0" in (out / "backtrace.txt").read_text()
    data = json.loads((out / "crash.json").read_text())
    assert data["backtrace"]["frames"][0]["line"] == CRASH_LINE and data["core"] == core.name
    # the gdb command names the core where it lies now (moved into the bundle, gzipped) and works as given
    assert str(core) in data["gdb"], data
    assert any("at the crash by" in n and "crash.json `gdb` opens it" in n for n in data["notes"]), data["notes"]
    if shutil.which("gdb"):
        res = subprocess.run(data["gdb"] + " -batch -ex bt", shell=True, capture_output=True, text=True,
                             timeout=120)
        assert "spdk_lvol_destroy" in res.stdout, (data["gdb"], res.stdout[-2000:], res.stderr[-2000:])
    ops = [json.loads(line) for line in (out / "last-operations.jsonl").read_text().splitlines()]
    assert [op["worker"] for op in ops[:2]] == [-1, -1]
    assert sum(op["worker"] == 0 for op in ops) == 20 and sum(op["worker"] == 1 for op in ops) == 20
    assert ops[-1]["method"] == "bdev_lvol_delete", "the last operation before the crash comes last"
    assert all(op["t_start"] <= report.evidence[0].t for op in ops)
    assert not any(p.name.startswith(".staging") for p in (tmp_path / "crashes").iterdir())


def test_same_title_counts_once(tmp_path: Path) -> None:
    from harness.watch.evidence import CrashEvidence

    ev = [CrashEvidence("hang", "silent", "probe", hang_s=30.0)]
    reports = [CrashReport.build(ev, LocalHost(), tmp_path, [], {"pid": 1}) for _ in range(2)]
    other = CrashReport.build([CrashEvidence("exit", "x", "process", exit_rc=0)], LocalHost(), tmp_path, [], {})
    dirs = [r.write(tmp_path / "crashes") for r in (*reports, other)]
    index = json.loads((tmp_path / "crashes" / "index.json").read_text())
    assert set(index) == {"hang: no RPC reply for 30 s", "exit: target exited 0 unexpectedly"}
    assert index["hang: no RPC reply for 30 s"]["count"] == 2
    assert json.loads((dirs[1] / "crash.json").read_text())["duplicate_of"] == dirs[0].name
    assert len({d.name for d in dirs}) == 3


def test_abort_report_from_real_abort(tmp_path: Path) -> None:
    host = LocalHost()
    target = Helper(host, tmp_path, "abort")
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc).start()
    try:
        target.fire()
        assert wd.crashed.wait(5)
        evidence = wd.settle(5)
        assert target.proc.poll() == -6
        report = CrashReport.build(evidence, host, tmp_path, [], {"pid": target.proc.pid})
    finally:
        wd.stop()
    assert report.title == "SIGABRT: malloc(): unsorted double linked list corrupted"
    out = report.write(tmp_path / "crashes")
    assert "malloc(): unsorted double linked list corrupted" in (out / "target.log").read_text()
    kinds = {e["kind"] for e in json.loads((out / "crash.json").read_text())["evidence"]}
    assert {"abort", "exit"} <= kinds


def test_hang_report_from_real_silence(tmp_path: Path) -> None:
    host = LocalHost()
    sock_path = str(tmp_path / "h.sock")
    target = Helper(host, tmp_path, "hang", "reactor_0", sock_path)
    try:
        deadline = time.time() + 5
        while not Path(sock_path).exists() and time.time() < deadline:
            time.sleep(0.01)
        target.fire()  # it answers no probe from the start

        def probe() -> bool:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.3)
                s.connect(sock_path)
                s.sendall(b"ping\n")
                return s.recv(8).startswith(b"pong")

        wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc, probe=probe,
                      hang_after_s=1.0, probe_interval_s=0.2).start()
        try:
            assert wd.crashed.wait(4)
            report = CrashReport.build(wd.evidence, host, tmp_path, [], {"pid": target.proc.pid})
        finally:
            wd.stop()
        assert report.title == "hang: no RPC reply for 1 s"
    finally:
        target.kill()


class FakeRpcServer:
    """A JSON-RPC server on a Unix socket that records what it is asked and refuses one method, as SPDK would."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.calls: list[tuple[str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        buf = ""
        decoder = json.JSONDecoder()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data.decode()
                while buf.strip():
                    try:
                        req, end = decoder.raw_decode(buf.lstrip())
                    except json.JSONDecodeError:
                        break
                    buf = buf.lstrip()[end:]
                    self.calls.append((req["method"], req.get("params")))
                    if req["method"] == "bdev_lvol_create":  # a fresh target hands out fresh UUIDs
                        reply = {"jsonrpc": "2.0", "id": req["id"], "result": f"fresh-{len(self.calls)}"}
                    elif req["method"] == "bdev_lvol_delete":
                        reply = {"jsonrpc": "2.0", "id": req["id"],
                                 "error": {"code": -32603, "message": "Device or resource busy"}}
                    else:
                        reply = {"jsonrpc": "2.0", "id": req["id"], "result": True}
                    conn.sendall(json.dumps(reply).encode())


def test_reproducer_replays_operations_in_order(tmp_path: Path) -> None:
    from harness.report.reproducer import reproducer_script

    ops = last_operations(history(1000.0), before=1000.0, per_worker=3)
    # last 3 per worker (worker 1 starts 0.5 s later each round; the call after the crash is left out)
    assert [(op["worker"], op["seq"]) for op in ops] == [
        (-1, 0), (-1, 1), (1, 22), (0, 23), (1, 23), (0, 24), (1, 24), (0, 25)]
    script = tmp_path / "repro.py"
    script.write_text(reproducer_script(ops, "SIGSEGV in spdk_lvol_destroy (lvol.c:1884)"))
    server = FakeRpcServer(str(tmp_path / "rpc.sock"))
    done = subprocess.run([sys.executable, str(script), server.path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [m for m, _ in server.calls] == [op["method"] for op in ops]
    assert [p for _, p in server.calls[:-1]] == [op["params"] or {} for op in ops[:-1]]
    # the delete named the UUID worker 0's last create returned when recorded; the replay names the fresh one
    create_at = next(i for i, op in enumerate(ops) if (op["worker"], op["seq"]) == (0, 24))
    assert server.calls[-1] == ("bdev_lvol_delete", {"name": f"fresh-{create_at + 1}"})
    assert "-32603 Device or resource busy" in done.stdout


def test_operations_bring_the_calls_that_made_their_objects() -> None:
    """A clone of a snapshot made long ago: the snapshot and the lvol under it come along, nothing else."""
    t = 100.0
    recs: list[dict[str, Any]] = [
        {"worker": -1, "seq": 0, "method": "bdev_lvol_create_lvstore",
         "params": {"bdev_name": "Malloc0", "lvs_name": "lvs0"}, "t_start": 1.0, "result": "lvs-uuid"},
        {"worker": 1, "seq": 0, "method": "bdev_lvol_create", "params": {"lvs_name": "lvs0", "lvol_name": "base"},
         "t_start": 2.0, "result": "u-base"},
        {"worker": 1, "seq": 1, "method": "bdev_lvol_snapshot",
         "params": {"lvol_name": "u-base", "snapshot_name": "snap"}, "t_start": 3.0, "result": "u-snap"},
    ]
    recs += [{"worker": 1, "seq": 2 + i, "method": "bdev_lvol_create",
              "params": {"lvs_name": "lvs0", "lvol_name": f"x{i}"}, "t_start": 4.0 + i, "result": f"u-x{i}"}
             for i in range(10)]
    recs += [{"worker": 0, "seq": 0, "method": "bdev_lvol_clone",
              "params": {"snapshot_name": "lvs0/snap", "clone_name": "c"}, "t_start": t - 1, "result": "u-c"},
             {"worker": 0, "seq": 1, "method": "bdev_lvol_delete", "params": {"name": "u-snap"}, "t_start": t,
              "error": {"code": -32603, "message": "Device or resource busy", "errno": "EBUSY"}}]
    recs += [  # worker 2: an older clone of the same snapshot (changes what deleting it does), a read of it
        {"worker": 2, "seq": 0, "method": "bdev_lvol_clone", "params": {"snapshot_name": "u-snap", "clone_name": "o"},
         "t_start": 3.5, "result": "u-o"},
        {"worker": 2, "seq": 1, "method": "bdev_get_bdevs", "params": {"name": "u-snap"}, "t_start": 3.6, "result": []},
    ]
    recs += [{"worker": 2, "seq": 2 + i, "method": "bdev_lvol_create",
              "params": {"lvs_name": "lvs0", "lvol_name": f"y{i}"}, "t_start": 20.0 + i, "result": f"u-y{i}"}
             for i in range(2)]
    ops = last_operations(recs, before=t, per_worker=2)
    assert [(op["worker"], op["seq"]) for op in ops] == [
        (-1, 0), (1, 0), (1, 1), (2, 0), (1, 10), (1, 11), (2, 2), (2, 3), (0, 0), (0, 1)]
    plain = last_operations(recs, before=t, per_worker=2, dependencies=False)
    assert [(op["worker"], op["seq"]) for op in plain] == [(-1, 0), (1, 10), (1, 11), (2, 2), (2, 3), (0, 0), (0, 1)]


def test_replay_order_is_answer_order_then_calls_in_flight() -> None:
    recs = [
        {"worker": 0, "seq": 0, "method": "a", "t_start": 1.0, "t_end": 5.0, "result": True},
        {"worker": 1, "seq": 0, "method": "b", "t_start": 2.0, "t_end": 3.0, "result": True},
        {"worker": 2, "seq": 0, "method": "killer", "t_start": 2.5, "t_end": 9.0,
         "error": {"code": None, "message": "connection lost", "errno": "ECONNRESET"}},
        {"worker": 1, "seq": 1, "method": "c", "t_start": 4.0, "t_end": 6.0,
         "error": {"code": -16, "message": "Device or resource busy", "errno": "EBUSY"}},
    ]
    assert [op["method"] for op in last_operations(recs)] == ["b", "a", "c", "killer"]
