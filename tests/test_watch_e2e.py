"""The watchdog against real processes: real SIGSEGV (real kernel lines), SIGABRT, hang, unexpected exit.

Each helper is a small Python process that waits for a trigger file, so the watchdog is running before
it dies. Latency is measured from the helper's own timestamp just before the fault to `crashed` being set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts.base import HostProcess
from harness.hosts.local import LocalHost
from harness.watch.attribution import TargetIdentity, confirm_by_death
from harness.watch.evidence import CrashEvidence
from harness.watch.kernel import KernelLogWatch
from harness.watch.kmsg import KernelRecord, parse_fault
from harness.watch.watchdog import Watchdog

pytestmark = pytest.mark.timeout(60)

HELPER = r'''
import ctypes, os, socket, sys, threading, time
mode, trigger, name = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None)
libc.prctl(15, name.encode(), 0, 0, 0)          # PR_SET_NAME: this thread's comm, as SPDK names reactors

def wait_trigger():
    deadline = time.time() + 30
    while not os.path.exists(trigger) and time.time() < deadline:
        time.sleep(0.002)

if mode == "segv":
    wait_trigger()
    print(f"about to fault {time.time()!r}", flush=True)
    ctypes.string_at(8)                          # strlen(8): a real SIGSEGV at address 8
elif mode == "segv-thread":
    def crash():
        libc.prctl(15, b"reactor_1", 0, 0, 0)
        wait_trigger()
        print(f"about to fault {time.time()!r}", flush=True)
        ctypes.string_at(8)
    threading.Thread(target=crash).start()
    time.sleep(40)
elif mode == "abort":
    wait_trigger()
    print("[2026-11-29 07:00:00.000001] lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob "
          "on lvol gracefully - forced removal", flush=True)
    time.sleep(0.2)
    print(f"about to abort {time.time()!r}", flush=True)
    sys.stderr.write("malloc(): unsorted double linked list corrupted\n")
    sys.stderr.flush()
    os.abort()
elif mode == "hang":
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sys.argv[4])
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        if os.path.exists(trigger):
            time.sleep(60)                       # stops answering: a reactor stuck in a loop
        conn.recv(64)
        conn.sendall(b"pong\n")
        conn.close()
elif mode == "exit0":
    wait_trigger()
    sys.exit(0)
elif mode == "idle":
    time.sleep(40)
'''


class Helper:
    """A helper process plus its trigger file and log."""

    def __init__(self, host: LocalHost, tmp: Path, mode: str, name: str = "reactor_0", *extra: str,
                 core_unlimited: bool = False) -> None:
        self.trigger = tmp / f"trigger-{mode}-{name}"
        self.log = tmp / f"{mode}-{name}.log"
        argv = [sys.executable, "-c", HELPER, mode, str(self.trigger), name, *extra]
        self.proc: HostProcess = host.spawn(argv, log_path=str(self.log), core_unlimited=core_unlimited,
                                            env={"PYTHONFAULTHANDLER": ""})

    def fire(self) -> None:
        self.trigger.touch()

    def stamp(self, word: str) -> float:
        """The helper's time.time() printed just before it died."""
        deadline = time.time() + 5
        while time.time() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith(f"about to {word} "):
                    return float(line.split()[-1])
            time.sleep(0.02)
        raise AssertionError(f"{self.log}: no 'about to {word}' line")

    def kill(self) -> None:
        self.proc.send_signal(9)
        self.proc.wait(5)


@pytest.fixture
def host() -> LocalHost:
    return LocalHost()


@pytest.fixture
def helpers(host: LocalHost, tmp_path: Path) -> Iterator[list[Helper]]:
    made: list[Helper] = []
    yield made
    for h in made:
        h.kill()


def _wait_for(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def kernel_printed_fault(pid: int) -> bool:
    """Did the kernel print a fault line for `pid` at all? It ratelimits them machine-wide (10 per 5 s), and
    other sessions on this machine segfault too: no line there means skip, a line we missed means fail."""
    out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=20).stdout
    return f"[{pid}]: segfault at" in out


def require_fault_evidence(wd: Watchdog, pid: int, timeout: float = 3.0) -> CrashEvidence:
    """The watchdog's fault evidence; a skip when the kernel ratelimited the line away."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [ev for ev in wd.evidence if ev.kind == "fault"]
        if found:
            return found[0]
        time.sleep(0.01)
    if not kernel_printed_fault(pid):
        pytest.skip(f"the kernel printed no fault line for pid {pid} (printk ratelimit; other processes faulted)")
    raise AssertionError(f"the kernel printed a fault line for pid {pid} but the watchdog has none: {wd.evidence}")


def _kernel_log_usable(host: LocalHost) -> bool:
    watch = KernelLogWatch(host, on_record=lambda r: None)
    source = watch.start()
    watch.stop()
    return source != "none"


needs_kernel_log = pytest.mark.skipif(not _kernel_log_usable(LocalHost()), reason="kernel log unreadable here")


@needs_kernel_log
@pytest.mark.parametrize("mode", ["segv", "segv-thread"])
def test_segv_in_reactor_thread_is_attributed_fast(host: LocalHost, tmp_path: Path, helpers: list[Helper],
                                                   mode: str) -> None:
    target = Helper(host, tmp_path, mode)
    helpers.append(target)
    time.sleep(0.3)  # let the helper start its threads (they are then tracked from /proc/PID/task)
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc,
                  track_interval_s=0.1).start()
    try:
        assert wd.kernel is not None and wd.kernel.source != "none"
        time.sleep(0.3)
        target.fire()
        assert wd.crashed.wait(5), "watchdog did not notice a real SIGSEGV"
        before = target.stamp("fault")
        assert wd.detected_at is not None
        latency = wd.detected_at - before
        fault_ev = require_fault_evidence(wd, target.proc.pid)
        kernel_latency = fault_ev.t - before
        print(f"\n{mode}: crashed set {latency * 1000:.1f} ms after the fault; kernel line attributed after "
              f"{kernel_latency * 1000:.1f} ms (source: {wd.kernel_source})")
        assert latency < 1.0 and kernel_latency < 1.0
        fault = fault_ev.fault
        assert fault is not None
        expected_tid = target.proc.pid if mode == "segv" else fault.tid
        assert fault.tid == expected_tid and fault.comm == ("reactor_0" if mode == "segv" else "reactor_1")
        assert fault.fault_addr == 8 and fault.error_bits == ["user", "read", "page not present"]
        assert "thread of the target" in fault_ev.attribution or "belongs to the target" in fault_ev.attribution
        assert _wait_for(lambda: any(ev.kind == "exit" and ev.exit_rc == -11 for ev in wd.evidence), 5)
    finally:
        wd.stop()


@needs_kernel_log
def test_unrelated_segfault_is_logged_not_attributed(host: LocalHost, tmp_path: Path,
                                                     helpers: list[Helper]) -> None:
    target = Helper(host, tmp_path, "idle")
    other = Helper(host, tmp_path, "segv", "reactor_1")  # even an SPDK-like thread name
    helpers += [target, other]
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc,
                  death_grace_s=0.5).start()
    try:
        time.sleep(0.3)
        other.fire()
        assert other.proc.wait(5) == -11, "the unrelated helper did not segfault"
        # (other sessions on this machine may fault too: look for our helper's line among the unrelated)
        mine = lambda: [(f, r) for f, r in wd.unrelated if f.tid == other.proc.pid]  # noqa: E731
        assert _wait_for(lambda: len(mine()) == 1, 5), "the unrelated fault line never arrived"
        fault, reason = mine()[0]
        assert fault.comm == "reactor_1"
        assert any(why in reason for why in ("not the target", "lived on", "outside every executable mapping"))
        time.sleep(0.6)
        assert not wd.crashed.is_set() and wd.evidence == []
        assert target.proc.poll() is None
    finally:
        wd.stop()


def test_mapping_or_spdk_name_needs_the_target_to_die(host: LocalHost, tmp_path: Path,
                                                      helpers: list[Helper]) -> None:
    """A line with no live tid but naming the target's file at its address: ours only if the target dies."""
    target = Helper(host, tmp_path, "idle")
    helpers.append(target)
    time.sleep(0.3)
    identity = TargetIdentity(host, target.proc.pid)
    assert identity.refresh()
    libc = next(m for m in identity.maps if m.basename.startswith("libc.so") and "x" in m.perms)
    ip = libc.start + 0x100
    line = (f"reactor_3[4194000]: segfault at 8 ip {ip:016x} sp 00007ffcc77b0860 error 4 in "
            f"{libc.basename}[{libc.offset + 0x100:x},{libc.start:x}+{libc.end - libc.start:x}] likely on CPU 0")
    fault = parse_fault(line)
    assert fault is not None
    verdict = identity.judge(fault)
    assert verdict.ours is None and "mapping" in verdict.reason
    alive = confirm_by_death(verdict, lambda t: target.proc.wait(t) is not None, 0.3)
    assert alive.ours is False
    target.kill()
    dead = confirm_by_death(verdict, lambda t: target.proc.wait(t) is not None, 0.3)
    assert dead.ours is True
    stranger = parse_fault("bash[4194001]: segfault at 8 ip 0000000000001000 sp 0000000000002000 error 4")
    assert stranger is not None and identity.judge(stranger).ours is False
    # the same library at another (ASLR) address is another process, whatever its thread is called
    elsewhere = parse_fault(line.replace(f"{ip:016x}", f"{ip + (1 << 40):016x}").replace(
        f",{libc.start:x}+", f",{libc.start + (1 << 40):x}+"))
    assert elsewhere is not None and elsewhere.ip == ip + (1 << 40)
    verdict_elsewhere = identity.judge(elsewhere)
    assert verdict_elsewhere.ours is False and "outside every executable mapping" in verdict_elsewhere.reason
    # died, but of another signal: not this line's death
    abort_death = confirm_by_death(verdict, lambda t: True, 0.1, fault_signal="SIGSEGV", exit_rc=lambda: -6)
    assert abort_death.ours is False


def test_abort_message_in_target_log(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    target = Helper(host, tmp_path, "abort")
    helpers.append(target)
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc).start()
    try:
        target.fire()
        assert wd.crashed.wait(5)
        before = target.stamp("abort")
        assert wd.detected_at is not None
        print(f"\nabort: crashed set {(wd.detected_at - before) * 1000:.1f} ms after the glibc message")
        assert wd.detected_at - before < 1.0
        evidence = wd.settle(5)
        abort = next(ev for ev in evidence if ev.kind == "abort").abort
        assert abort is not None and abort.text == "malloc(): unsorted double linked list corrupted"
        assert [f.pattern for f in wd.findings] == ["forced removal"]
        assert _wait_for(lambda: any(ev.exit_rc == -6 for ev in wd.evidence), 5)
    finally:
        wd.stop()


def test_probe_silence_is_a_hang(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    sock_path = str(tmp_path / "helper.sock")
    target = Helper(host, tmp_path, "hang", "reactor_0", sock_path)
    helpers.append(target)
    assert _wait_for(lambda: os.path.exists(sock_path), 5)

    def probe() -> bool:  # what an RPC ping does, without the RPC layer
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            s.connect(sock_path)
            s.sendall(b"ping\n")
            return s.recv(16).startswith(b"pong")

    def answers() -> bool:
        try:
            return probe()
        except OSError:
            return False  # bound but not yet listening

    assert _wait_for(answers, 5), "the helper never answered"
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc, probe=probe,
                  hang_after_s=1.5, probe_interval_s=0.2).start()
    try:
        time.sleep(1.8)
        assert not wd.crashed.is_set(), "a target that answers is not hung"
        target.fire()
        stopped = time.time()
        assert wd.crashed.wait(6)
        assert wd.detected_at is not None
        waited = wd.detected_at - stopped
        print(f"\nhang: detected {waited:.2f} s after the target stopped answering (threshold 1.5 s)")
        assert 1.0 < waited < 3.5
        ev = wd.evidence[0]
        assert ev.kind == "hang" and ev.hang_s == 1.5
        assert target.proc.poll() is None
    finally:
        wd.stop()


def test_unexpected_exit_and_deliberate_stop(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    target = Helper(host, tmp_path, "exit0")
    helpers.append(target)
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc).start()
    try:
        target.fire()
        t0 = time.time()
        assert wd.crashed.wait(5)
        assert wd.detected_at is not None and wd.detected_at - t0 < 1.0
        ev = wd.evidence[0]
        assert ev.kind == "exit" and ev.exit_rc == 0
    finally:
        wd.stop()
    quiet = Helper(host, tmp_path, "idle", "reactor_9")
    helpers.append(quiet)
    wd2 = Watchdog(host, pid=quiet.proc.pid, log_path=str(quiet.log), process=quiet.proc).start()
    wd2.stop()
    quiet.kill()
    time.sleep(0.3)
    assert not wd2.crashed.is_set(), "a stop after watchdog.stop() is deliberate, not a crash"


def test_kernel_sources_follow_only_new_records(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    """Every kernel-log source available here delivers a fault written after start, and none from before."""
    early = Helper(host, tmp_path, "segv", "early_fault")
    helpers.append(early)
    early.fire()
    assert early.proc.wait(5) == -11
    time.sleep(0.2)
    tried = 0
    for source in ("kmsg", "kmsg-command", "dmesg", "journalctl"):
        got: list[KernelRecord] = []
        watch = KernelLogWatch(host, on_record=got.append, sources=[source])
        if watch.start() == "none":
            continue
        tried += 1
        try:
            late = Helper(host, tmp_path, "segv", f"late_{source[:6]}")
            helpers.append(late)
            time.sleep(0.2)
            late.fire()
            assert late.proc.wait(5) == -11
            pid = late.proc.pid
            deadline = time.time() + 5
            while time.time() < deadline and not any(f and f.tid == pid for f in map(parse_fault, got)):
                time.sleep(0.01)
            faults = [f for f in map(parse_fault, got) if f is not None]
            assert any(f.tid == pid for f in faults), f"{source} did not deliver the new fault"
            assert all(f.tid != early.proc.pid for f in faults), f"{source} replayed an old record"
        finally:
            watch.stop()
    assert tried >= 1


def test_no_kernel_log_runs_on_loudly(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    target = Helper(host, tmp_path, "idle")
    helpers.append(target)

    class NoKmsgHost(LocalHost):
        """This machine with the kernel log locked away (dmesg_restrict, no journal)."""

        @property
        def is_local(self) -> bool:
            return False

        def run(self, argv, **kw):  # type: ignore[no-untyped-def, override]
            text = argv if isinstance(argv, str) else " ".join(argv)
            if "kmsg" in text or text.startswith(("dmesg", "journalctl")):
                from harness.hosts.base import CommandResult
                return CommandResult(text, 1, "", "Operation not permitted")
            return super().run(argv, **kw)

    wd = Watchdog(NoKmsgHost(), pid=target.proc.pid, log_path=str(target.log), process=target.proc).start()
    try:
        assert wd.kernel is not None and wd.kernel.source == "none"
        assert wd.warnings and "fault address" in wd.warnings[0]
        target.kill()
        assert wd.crashed.wait(5), "exit must still be seen without the kernel log"
        assert wd.evidence[0].exit_rc == -9
    finally:
        wd.stop()


def test_exit_code_supplied_later_by_the_owner(host: LocalHost, tmp_path: Path, helpers: list[Helper]) -> None:
    """Without the process object the watchdog sees the exit (pidfd) but not its code; notice_exit fills it."""
    target = Helper(host, tmp_path, "idle")
    helpers.append(target)
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log)).start()
    try:
        target.proc.send_signal(15)
        assert wd.crashed.wait(5)
        assert wd.evidence[0].kind == "exit" and wd.evidence[0].exit_rc is None
        wd.notice_exit(target.proc.wait(5))
        assert [ev.exit_rc for ev in wd.evidence] == [-15]
        assert wd.evidence[0].summary == "target exited: signal SIGTERM"
    finally:
        wd.stop()


class RemoteLike(LocalHost):
    """This machine driven only through run/follow_command, as an SSH host would be (no /proc or fd access)."""

    @property
    def is_local(self) -> bool:
        return False


@needs_kernel_log
def test_remote_style_host_paths(tmp_path: Path, helpers: list[Helper]) -> None:
    """`cat /dev/kmsg` after the last sequence number, `ls /proc/PID/task`, a shell exit loop, `tail -F`."""
    host = RemoteLike("remote-like")
    target = Helper(host, tmp_path, "segv-thread")
    helpers.append(target)
    time.sleep(0.3)
    wd = Watchdog(host, pid=target.proc.pid, log_path=str(target.log), process=target.proc,
                  track_interval_s=0.2).start()
    try:
        assert wd.kernel is not None and wd.kernel.source == "kmsg-command"
        assert len(wd.identity.tids) >= 2, "threads read through `ls /proc/PID/task`"
        time.sleep(0.3)
        target.fire()
        assert wd.crashed.wait(5)
        evidence = wd.settle(5)
        before = target.stamp("fault")
        fault_ev = require_fault_evidence(wd, target.proc.pid)
        print(f"\nremote-like: kernel line attributed {(fault_ev.t - before) * 1000:.1f} ms after the fault")
        assert fault_ev.t - before < 1.0
        assert fault_ev.fault is not None and fault_ev.fault.comm == "reactor_1"
        assert any(ev.kind == "exit" and ev.exit_rc == -11 for ev in evidence)
    finally:
        wd.stop()
