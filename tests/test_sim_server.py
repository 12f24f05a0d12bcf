"""The reference target's server process from outside: sockets, concurrency, shutdown and real deaths.

Every test starts the real `spdk-sim` process (a subprocess, socket under a tmp dir). Most use the small
`FakeDispatcher` below so the server is tested on its own; `real_dispatcher` tests use the model's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.hosts.local import LocalHost
from harness.report.core import CorePattern
from harness.sim.protocol import RpcFault, SimulatedCrash

REPO = Path(__file__).resolve().parent.parent
VERSION = {
    "version": "SPDK v24.09.1-pre git sha1 1975133e9",
    "fields": {"major": 24, "minor": 9, "patch": 1, "suffix": "-pre", "commit": "1975133e9"},
}


class FakeDispatcher:
    """Just enough of `harness.sim.methods.Dispatcher` to drive the server: version, echo, crash, log."""

    def __init__(self, faults: str = "", seed: int | None = None, fault_after: int = 40,
                 memory_mib: int | None = None) -> None:
        self.pending_log: list[str] = []
        self.calls = 0

    def handle(self, method: str, params: object) -> object:
        self.calls += 1
        if method == "spdk_get_version":
            if params is not None:
                raise RpcFault(-32602, "spdk_get_version method requires no parameters")
            return VERSION
        if method == "echo":
            return params
        if method == "count":
            return self.calls
        if method == "crash" and isinstance(params, dict):
            raise SimulatedCrash(**params)
        if method == "log" and isinstance(params, dict):
            self.pending_log.append(str(params["text"]))
            return True
        if method == "boom":
            raise KeyError("model bug")
        raise RpcFault(-32601, "Method not found")

    def method_names(self) -> list[str]:
        return ["spdk_get_version", "echo", "count", "crash", "log"]

    def drain_log_lines(self) -> list[str]:
        lines, self.pending_log = self.pending_log, []
        return lines


FAKE_MAIN = (
    "import sys; from tests.test_sim_server import FakeDispatcher; from harness.sim.__main__ import main; "
    "sys.exit(main(sys.argv[1:], dispatcher_factory=FakeDispatcher))"
)


def real_dispatcher_available() -> bool:
    try:
        from harness.sim import faults, methods  # noqa: F401
    except ImportError:
        return False
    return True


_LOG_NUMBERS = itertools.count(1)


def _unlimited_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


class SimProcess:
    """One running `spdk-sim` with its log; a tiny raw client for tests."""

    def __init__(self, tmp: Path, *args: str, real: bool = False, name: str = "t.sock",
                 cwd: Path = REPO, core_unlimited: bool = False) -> None:
        self.sock_path = str(tmp / name)
        self.log_path = tmp / f"{name}.{next(_LOG_NUMBERS)}.log"
        argv = [sys.executable, "-m", "harness.sim"] if real else [sys.executable, "-c", FAKE_MAIN]
        self.argv = [*argv, "-r", self.sock_path, *args]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=_unlimited_core if core_unlimited else None,
            )

    def wait_ready(self, timeout: float = 15.0) -> SimProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"spdk-sim exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError):
                self.connect(timeout=1.0).close()
                return self
            time.sleep(0.02)
        raise AssertionError(f"spdk-sim did not listen on {self.sock_path}: {self.log()}")

    def connect(self, timeout: float = 5.0) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.sock_path)
        return s

    def call(self, method: str, params: object = None, rid: object = 1, timeout: float = 5.0) -> dict[str, object]:
        with self.connect(timeout) as s:
            req: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": rid}
            if params is not None:
                req["params"] = params
            s.sendall(json.dumps(req).encode())
            return read_replies(s, 1, timeout)[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def read_replies(s: socket.socket, count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """Read `count` newline-terminated replies (bounded in time)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while (got := buf.count(b"\n")) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {got} of {count} replies within {timeout} s")
        s.settimeout(left)
        chunk = s.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"connection closed after {got} of {count} replies")
        buf += chunk
    return [json.loads(line) for line in buf.split(b"\n") if line]


def read_raw(s: socket.socket, quiet: float = 0.3, limit: float = 3.0) -> tuple[bytes, bool]:
    """All bytes until the target is quiet for `quiet` s: (bytes, whether the target closed the socket)."""
    deadline = time.monotonic() + limit
    buf = b""
    while time.monotonic() < deadline:
        s.settimeout(quiet)
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            return buf, False
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk
    return buf, False


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    proc = SimProcess(tmp_path).wait_ready()
    yield proc
    proc.kill()


# -- serving ----------------------------------------------------------------------------------------------


def test_reactor_is_the_main_thread_named_reactor_0(sim: SimProcess) -> None:
    pid = sim.proc.pid
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "reactor_0"
    tasks = os.listdir(f"/proc/{pid}/task")
    assert tasks == [str(pid)], f"one thread, the main one (tid == pid); got {tasks}"
    log = sim.log()
    assert "Starting SPDK" in log and "initialization..." in log
    assert "Reactor started on core 0" in log
    assert "REFERENCE TARGET" in log and "NOT spdk_tgt" in log


def test_200_pipelined_requests_on_one_connection_all_answered(sim: SimProcess) -> None:
    with sim.connect() as s:
        batch = b"".join(
            json.dumps({"jsonrpc": "2.0", "method": "echo", "id": i, "params": {"n": i}}).encode()
            for i in range(200)
        )
        s.sendall(batch)
        replies = read_replies(s, 200, timeout=10)
    assert sorted(r["id"] for r in replies) == list(range(200))  # type: ignore[type-var]
    assert all(r["result"] == {"n": r["id"]} for r in replies)


def test_requests_split_byte_by_byte_are_reassembled(sim: SimProcess) -> None:
    with sim.connect() as s:
        for byte in b'{"jsonrpc": "2.0", "method": "echo", "id": 7, "params": [1.5, "x"]}':
            s.send(bytes([byte]))
        assert read_replies(s, 1) == [{"jsonrpc": "2.0", "id": 7, "result": [1.5, "x"]}]


def test_requests_run_in_arrival_order_across_connections(sim: SimProcess) -> None:
    conns = [sim.connect() for _ in range(16)]
    try:
        for i, c in enumerate(conns):
            c.sendall(json.dumps({"method": "count", "id": i}).encode())
            assert read_replies(c, 1)[0]["result"] == i + 1
    finally:
        for c in conns:
            c.close()


def test_64_connections_served_at_once_and_the_65th_waits_for_a_free_slot(sim: SimProcess) -> None:
    conns = [sim.connect() for _ in range(64)]
    extra = None
    try:
        for i, c in enumerate(conns):
            c.sendall(json.dumps({"method": "echo", "id": i, "params": [i]}).encode())
        for i, c in enumerate(conns):
            assert read_replies(c, 1)[0] == {"jsonrpc": "2.0", "id": i, "result": [i]}
        extra = sim.connect()  # lands in the listen backlog, as with SPDK_JSONRPC_MAX_CONNS = 64
        extra.sendall(b'{"method": "echo", "id": 65, "params": [65]}')
        assert read_raw(extra, quiet=0.3) == (b"", False)
        conns.pop().close()
        assert read_replies(extra, 1)[0]["result"] == [65]
    finally:
        for c in [*conns, *([extra] if extra else [])]:
            c.close()


def test_latency_overlaps_concurrent_requests(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, "--latency-ms", "300").wait_ready()
    try:
        conns = [sim.connect() for _ in range(16)]
        start = time.monotonic()
        for i, c in enumerate(conns):
            c.sendall(json.dumps({"method": "echo", "id": i, "params": [i]}).encode())
        for i, c in enumerate(conns):
            assert read_replies(c, 1)[0]["result"] == [i]
        elapsed = time.monotonic() - start
        assert 0.3 <= elapsed < 1.5, f"16 calls of 300 ms took {elapsed:.2f} s: they did not overlap"
        for c in conns:
            c.close()
    finally:
        sim.kill()


def test_jitter_answers_in_completion_order_with_every_reply(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, "--latency-ms", "1", "--latency-jitter-ms", "60", "--seed", "3").wait_ready()
    try:
        with sim.connect() as s:
            s.sendall(b"".join(json.dumps({"method": "echo", "id": i}).encode() for i in range(40)))
            ids = [r["id"] for r in read_replies(s, 40)]
        assert sorted(ids) == list(range(40))  # type: ignore[type-var]
        assert ids != list(range(40)), "with 60 ms of jitter, completions should reorder"
    finally:
        sim.kill()


def test_poll_interval_paces_each_connection(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, "--poll-interval-ms", "8").wait_ready()
    try:
        with sim.connect() as s:
            start = time.monotonic()
            for i in range(25):
                s.sendall(json.dumps({"method": "echo", "id": i}).encode())
                read_replies(s, 1)
            sequential = time.monotonic() - start
            start = time.monotonic()
            s.sendall(b"".join(json.dumps({"method": "echo", "id": i}).encode() for i in range(200)))
            read_replies(s, 200)
            pipelined = time.monotonic() - start
        assert sequential >= 25 * 0.004, f"25 sequential calls took {sequential:.3f} s: not paced by 8 ms polls"
        assert pipelined < sequential, "pipelined requests should be served together, within a few polls"
    finally:
        sim.kill()


def test_log_lines_are_printed_after_the_call_in_spdk_format(sim: SimProcess) -> None:
    text = "lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob on lvol gracefully - forced removal"
    assert sim.call("log", {"text": text})["result"] is True
    deadline = time.monotonic() + 5
    while text not in sim.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    line = next(ln for ln in sim.log().splitlines() if text in ln)
    assert line.startswith("[") and line[27:29] == "] ", line
    time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")


def test_a_model_bug_is_an_error_reply_and_the_target_keeps_serving(sim: SimProcess) -> None:
    reply = sim.call("boom")
    assert reply["error"]["code"] == -32603 and "KeyError" in reply["error"]["message"]  # type: ignore[index]
    assert sim.call("spdk_get_version")["result"] == VERSION


# -- stopping ---------------------------------------------------------------------------------------------


def test_kill_instance_sigterm_replies_true_then_exits_0_and_cleans_up(sim: SimProcess) -> None:
    assert sim.call("spdk_kill_instance", {"sig_name": "SIGTERM"}) == {"jsonrpc": "2.0", "id": 1, "result": True}
    assert sim.wait() == 0
    assert not os.path.exists(sim.sock_path) and not os.path.exists(sim.sock_path + ".lock")


def test_kill_instance_sigint_by_number(sim: SimProcess) -> None:
    assert sim.call("spdk_kill_instance", {"sig_name": "2"})["result"] is True
    assert sim.wait() == 0


def test_kill_instance_refuses_unknown_signals_and_bad_params(sim: SimProcess) -> None:
    bad = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Invalid parameters"}}
    assert sim.call("spdk_kill_instance", {"sig_name": "SIGWINCH"}) == bad
    assert sim.call("spdk_kill_instance", {"sig": "SIGTERM"}) == bad
    assert sim.call("spdk_kill_instance") == bad
    assert sim.proc.poll() is None


def test_kill_instance_sigkill_dies_before_it_can_answer(sim: SimProcess) -> None:
    with sim.connect() as s:
        s.sendall(b'{"jsonrpc": "2.0", "method": "spdk_kill_instance", "id": 1, "params": {"sig_name": "SIGKILL"}}')
        assert read_raw(s) == (b"", True)
    assert sim.wait() == -signal.SIGKILL


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_a_clean_shutdown(sim: SimProcess, sig: signal.Signals) -> None:
    with sim.connect() as idle:
        sim.proc.send_signal(sig)
        assert sim.wait() == 0
        assert read_raw(idle) == (b"", True)
    assert not os.path.exists(sim.sock_path) and not os.path.exists(sim.sock_path + ".lock")


# -- starting ---------------------------------------------------------------------------------------------


def test_live_socket_is_refused_and_the_first_target_keeps_serving(sim: SimProcess, tmp_path: Path) -> None:
    second = SimProcess(tmp_path, name="t.sock")
    assert second.wait() == 1
    assert "in use. Specify another." in second.log()
    assert sim.call("spdk_get_version")["result"] == VERSION


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "t.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed target leaves
    sim = SimProcess(tmp_path).wait_ready()
    try:
        assert sim.call("spdk_get_version")["result"] == VERSION
    finally:
        sim.kill()


def test_socket_path_too_long_is_one_line_exit_2(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * 100)
    long_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", FAKE_MAIN, "-r", str(long_dir / "spdk.sock")],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(long_dir / "spdk.sock") in lines[0] and "107" in lines[0], proc.stderr


def test_unknown_flag_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sim", "-r", str(tmp_path / "s"), "--wat"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--wat" in proc.stderr, proc.stderr
    assert not (tmp_path / "s").exists()


def test_spdk_tgt_flags_are_accepted(tmp_path: Path) -> None:
    sim = SimProcess(
        tmp_path, "-m", "0x6", "-s", "1024", "--no-pci", "--huge-dir", "/dev/hugepages", "--no-huge",
        "-L", "lvol", "-L", "blob",
    ).wait_ready()
    try:
        assert sim.call("spdk_get_version")["result"] == VERSION
        assert "Reactor started on core 1" in sim.log()
    finally:
        sim.kill()


# -- deaths -----------------------------------------------------------------------------------------------


class KernelLog:
    """New /dev/kmsg records from now on (read as root); None if /dev/kmsg cannot be read here."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        os.lseek(self.fd, 0, os.SEEK_END)

    def records(self, timeout: float = 2.0, until: str = "") -> list[str]:
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(os.read(self.fd, 8192).decode(errors="replace").rstrip("\n"))
            except BlockingIOError:
                if not until or any(until in r for r in out):
                    if until:
                        break
                time.sleep(0.05)
            except BrokenPipeError:  # records overwritten while we read: keep going
                continue
        return out

    def close(self) -> None:
        os.close(self.fd)


def open_kernel_log() -> KernelLog | None:
    try:
        return KernelLog()
    except OSError:
        return None


def crash(sim: SimProcess, **params: object) -> None:
    with sim.connect() as s:
        s.sendall(json.dumps({"jsonrpc": "2.0", "method": "crash", "id": 1, "params": params}).encode())
        data, _ = read_raw(s, quiet=1.0)
    assert data == b"", f"a dying target answered {data!r}"


def _segv_kernel_line(sim: SimProcess, kmsg: KernelLog, **params: object) -> str | None:
    """Crash `sim` by segv and return the kernel's line for its pid, if the kernel printed one."""
    pid = sim.proc.pid
    crash(sim, kind="segv", **params)
    assert sim.wait() == -signal.SIGSEGV
    records = kmsg.records(until=f"reactor_0[{pid}]: segfault")
    return next((r for r in records if f"reactor_0[{pid}]: segfault at " in r), None)


def test_segv_is_a_real_sigsegv_in_reactor_0_with_a_kernel_line(sim: SimProcess, tmp_path: Path) -> None:
    kmsg = open_kernel_log()
    forced = "lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob on lvol gracefully - forced removal"
    if kmsg is None:
        crash(sim, kind="segv", address=8, log_lines=[forced])
        assert sim.wait() == -signal.SIGSEGV
    else:
        line = _segv_kernel_line(sim, kmsg, address=8, log_lines=[forced])
        if line is None:
            # The kernel rate-limits these lines (printk_ratelimit: 10 per 5 s, machine-wide); other suites
            # crashing processes at the same moment can use the burst up. Once more, after the interval.
            time.sleep(5.5)
            again = SimProcess(tmp_path, name="again.sock").wait_ready()
            try:
                line = _segv_kernel_line(again, kmsg, address=8)
            finally:
                again.kill()
        kmsg.close()
        assert line is not None, "no kernel segfault line for the target's reactor_0 (tried twice)"
        assert " segfault at 8 ip " in line and " error 4 in " in line, line
    log = sim.log()
    assert forced in log and "Traceback" not in log and "Fatal Python error" not in log
    assert os.path.exists(sim.sock_path), "a crash leaves the socket file behind, as spdk_tgt's does"
    if kmsg is None:
        pytest.skip("/dev/kmsg is not readable here (needs root or CAP_SYSLOG): kernel line not checked")


def test_abort_prints_to_stderr_and_dies_by_sigabrt_without_a_kernel_line(sim: SimProcess) -> None:
    kmsg = open_kernel_log()
    pid = sim.proc.pid
    crash(sim, kind="abort", stderr_text="malloc(): unsorted double linked list corrupted")
    assert sim.wait() == -signal.SIGABRT
    log = sim.log()
    assert "malloc(): unsorted double linked list corrupted" in log and "Traceback" not in log
    if kmsg is not None:
        records = kmsg.records(timeout=0.5)
        kmsg.close()
        assert not [r for r in records if f"[{pid}]: segfault" in r]


def test_exit_leaves_with_the_code_and_the_socket_file(sim: SimProcess) -> None:
    crash(sim, kind="exit", exit_code=3)
    assert sim.wait() == 3
    assert os.path.exists(sim.sock_path)
    with pytest.raises(ConnectionRefusedError):
        sim.connect()


def test_hang_keeps_connections_open_and_answers_nothing_until_killed(sim: SimProcess) -> None:
    with sim.connect() as waiting:
        waiting.sendall(b'{"method": "echo", "id": 1}')
        with sim.connect() as s:
            s.sendall(b'{"method": "crash", "id": 2, "params": {"kind": "hang"}}')
            assert read_raw(s, quiet=0.5) == (b"", False)
        late = sim.connect()  # the listen backlog still takes it
        late.sendall(b'{"method": "echo", "id": 3}')
        sim.proc.send_signal(signal.SIGTERM)  # a stuck reactor never gets to shut down
        assert read_raw(late, quiet=0.5) == (b"", False)
        assert sim.proc.poll() is None
        late.close()
    sim.proc.kill()
    assert sim.wait() == -signal.SIGKILL


def test_segv_in_another_named_thread(sim: SimProcess) -> None:
    kmsg = open_kernel_log()
    crash(sim, kind="segv", address=16, thread_name="vhost_worker")
    assert sim.wait() == -signal.SIGSEGV
    if kmsg is None:
        pytest.skip("/dev/kmsg is not readable here: kernel line not checked")
    records = kmsg.records(until="vhost_worker[")
    kmsg.close()
    line = next((r for r in records if "vhost_worker[" in r and "segfault at 10 " in r), None)
    if line is None and any(": segfault at " in r for r in records):
        pytest.skip("the kernel's segfault lines are rate-limited and other processes are faulting right now")
    assert line is not None, records
    tid = int(line.split("vhost_worker[", 1)[1].split("]", 1)[0])
    assert tid != sim.proc.pid


# -- with the model's Dispatcher --------------------------------------------------------------------------

needs_real = pytest.mark.skipif(not real_dispatcher_available(), reason="harness.sim.methods not written yet")


@needs_real
def test_real_dispatcher_serves_concurrent_clients(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, real=True).wait_ready()
    try:
        version = sim.call("spdk_get_version")["result"]
        assert isinstance(version, dict) and "SPDK" in str(version["version"])
        errors: list[BaseException] = []

        def client(n: int) -> None:
            try:
                with sim.connect() as s:
                    s.sendall(b"".join(
                        json.dumps({"jsonrpc": "2.0", "method": "spdk_get_version", "id": i}).encode()
                        for i in range(20)
                    ))
                    assert sorted(r["id"] for r in read_replies(s, 20)) == list(range(20))  # type: ignore[type-var]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors, errors
        assert sim.call("spdk_kill_instance", {"sig_name": "SIGTERM"})["result"] is True
        assert sim.wait() == 0
    finally:
        sim.kill()


def _lvstore_setup(sim: SimProcess) -> None:
    assert sim.call("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}).get(
        "result") == "Malloc0"
    assert "result" in sim.call("bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0"})


@needs_real
def test_real_fault_exit_ends_the_process_mid_run(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, "--fault", "exit", "--fault-after", "2", real=True).wait_ready()
    try:
        _lvstore_setup(sim)
        assert "result" in sim.call("bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 4})
        with sim.connect() as s:
            s.sendall(json.dumps({"jsonrpc": "2.0", "method": "bdev_lvol_create", "id": 2,
                                  "params": {"lvs_name": "lvs0", "lvol_name": "b", "size_in_mib": 4}}).encode())
            assert read_raw(s, quiet=1.0) == (b"", True)
        assert sim.wait() == 0  # a clean code, yet mid-run: the socket is left behind
        assert os.path.exists(sim.sock_path)
    finally:
        sim.kill()


@needs_real
def test_real_fault_hang_stops_answering_everyone(tmp_path: Path) -> None:
    sim = SimProcess(tmp_path, "--fault", "hang", "--fault-after", "1", real=True).wait_ready()
    try:
        _lvstore_setup(sim)
        with sim.connect() as s, sim.connect() as other:
            s.sendall(json.dumps({"jsonrpc": "2.0", "method": "bdev_lvol_create", "id": 1,
                                  "params": {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 4}}).encode())
            other.sendall(b'{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 2}')
            assert read_raw(s, quiet=0.5) == (b"", False)
            assert read_raw(other, quiet=0.3) == (b"", False)
        assert sim.proc.poll() is None
    finally:
        sim.kill()


@needs_real
def test_unknown_fault_mode_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sim", "-r", str(tmp_path / "s"), "--fault", "forced-removal,nope"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "'nope'" in proc.stderr, proc.stderr


def test_segv_leaves_a_core_when_the_limit_allows(tmp_path: Path) -> None:
    """With cores pointed into the run (as a run does, through CorePattern), the sim's SIGSEGV leaves one.

    The machine-wide core_pattern is whatever earlier runs left; the test sets its own and restores it."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    with CorePattern(LocalHost(), str(tmp_path / "cores")) as cores:
        if not cores.active:
            pytest.skip(f"cannot point core_pattern into the test: {cores.reason}")
        sim = SimProcess(tmp_path, cwd=workdir, core_unlimited=True).wait_ready()
        cores.adopt(sim.proc.pid)
        try:
            crash(sim, kind="segv")
            assert sim.wait(30) == -signal.SIGSEGV
        finally:
            sim.kill()
        core = cores.find_core(sim.proc.pid, timeout=15)
    assert core is not None, f"no core for pid {sim.proc.pid} in {tmp_path / 'cores'}"
    assert Path(core).stat().st_size > 0


# -- replies from completion callbacks --------------------------------------------------------------------------


def _pipelined(s: socket.socket, *calls: tuple[str, object]) -> None:
    s.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "method": m, "id": i, "params": p}).encode()
                       for i, (m, p) in enumerate(calls, 1)))


@pytest.fixture
def real_sim(tmp_path: Path) -> Iterator[SimProcess]:
    proc = SimProcess(tmp_path, "--defer-checksum-replies", real=True).wait_ready()
    yield proc
    proc.kill()


def test_checksum_answers_when_its_job_is_done_and_a_delete_behind_it_first(real_sim: SimProcess) -> None:
    """SPDK answers bdev_lvol_register_snapshot_checksum from the job's completion callback: a busy delete
    written behind it is answered first (seen on spdk_tgt 24.09), and after the checksum's reply the snapshot
    is free (a serial client's clone succeeds)."""
    with real_sim.connect() as s:
        _pipelined(s, ("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 512 * 256, "block_size": 4096}),
                   ("bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0",
                                                 "cluster_sz": 1 << 20}),
                   ("bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 200}),
                   ("bdev_lvol_snapshot", {"lvol_name": "lvs0/a", "snapshot_name": "s"}))
        assert all("result" in r for r in read_replies(s, 4))
        _pipelined(s, ("bdev_lvol_register_snapshot_checksum", {"name": "lvs0/s"}),
                   ("bdev_lvol_delete", {"name": "lvs0/s"}))
        replies = read_replies(s, 2)
        assert [r["id"] for r in replies] == [2, 1]
        assert replies[0]["error"]["message"] == "Device or resource busy" and replies[1]["result"] is True
        _pipelined(s, ("bdev_lvol_clone", {"snapshot_name": "lvs0/s", "clone_name": "c"}))
        assert "result" in read_replies(s, 1)[0]


def test_a_deferred_reply_completes_without_further_requests(real_sim: SimProcess) -> None:
    with real_sim.connect() as s:
        _pipelined(s, ("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 512 * 256, "block_size": 4096}),
                   ("bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0",
                                                 "cluster_sz": 1 << 20}),
                   ("bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 400}),
                   ("bdev_lvol_snapshot", {"lvol_name": "lvs0/a", "snapshot_name": "s"}),
                   ("bdev_lvol_register_snapshot_checksum", {"name": "lvs0/s"}))
        replies = read_replies(s, 5, timeout=5)
        assert replies[-1] == {"jsonrpc": "2.0", "id": 5, "result": True}
