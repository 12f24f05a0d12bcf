"""LocalHost: the backend everything else is tested through first."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from harness.hosts.base import describe_returncode
from harness.hosts.local import LocalHost


def test_run_captures_output_and_exit_code() -> None:
    host = LocalHost()
    res = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.rc, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert not res.ok
    assert host.run("test 1 = 1").ok


def test_missing_program_is_rc_127_not_an_exception() -> None:
    res = LocalHost().run(["/nonexistent/prog"])
    assert res.rc == 127 and "nonexistent" in res.stderr


def test_spawn_logs_whole_output_and_reports_signal(tmp_path) -> None:
    host = LocalHost()
    log = tmp_path / "p.log"
    proc = host.spawn([sys.executable, "-c", "import sys,time; print('hello', flush=True); "
                       "print('oops', file=sys.stderr, flush=True); time.sleep(30)"], log_path=str(log))
    deadline = time.monotonic() + 10
    while "oops" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(5) == -signal.SIGKILL
    assert proc.describe_exit() == "signal SIGKILL"
    assert "hello" in log.read_text() and "oops" in log.read_text()


def test_follow_file_sees_lines_appended_later(tmp_path) -> None:
    host = LocalHost()
    path = tmp_path / "grow.log"
    path.write_text("first\n")
    stream = host.follow_file(str(path))
    try:
        assert stream.get(timeout=5) == "first"
        with path.open("a") as f:
            f.write("second\n")
        assert stream.get(timeout=5) == "second"
        assert stream.get(timeout=0.2) is None
    finally:
        stream.close()


def test_describe_returncode_words() -> None:
    assert describe_returncode(None) == "running"
    assert describe_returncode(0) == "exit 0"
    assert describe_returncode(-11) == "signal SIGSEGV"
    assert describe_returncode(134) == "signal SIGABRT"


def test_a_harness_that_exits_leaves_no_spawned_process_behind(tmp_path) -> None:
    script = ("import sys; from harness.hosts.local import LocalHost; "
              f"p = LocalHost().spawn(['sleep', '300'], log_path={str(tmp_path / 'l')!r}); "
              "print(p.pid, flush=True); sys.exit(3)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 3
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"spawned pid {pid} still running after the harness exited")
