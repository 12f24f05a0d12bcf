"""Targets die with the harness, and only with it: a SIGKILL of the harness leaves no target running (no orphan
with its socket and hugepages), while a target started from a thread that has ended lives on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.leftovers import SessionRecord

REPO = Path(__file__).resolve().parent.parent

HARNESS = '''
import sys, threading, time
from harness.hosts.local import LocalHost
from harness.session import TargetSession
from harness.target import TargetConfig

sessions = []

def start():  # from a thread that ends right after: the target must outlive it
    sessions.append(TargetSession(LocalHost(), TargetConfig(kind="sim"), sys.argv[1],
                                  announce=lambda _m: None).start())

t = threading.Thread(target=start)
t.start()
t.join()
time.sleep(1.0)
print(sessions[0].info.pid, sessions[0].alive(), flush=True)
time.sleep(60)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


@pytest.mark.timeout(60)
def test_a_sigkill_of_the_harness_takes_its_target_with_it(tmp_path: Path) -> None:
    harness = subprocess.Popen([sys.executable, "-c", HARNESS, str(tmp_path / "t")], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert harness.stdout is not None
        pid_text, alive_text = harness.stdout.readline().split()
        pid = int(pid_text)
        assert alive_text == "True" and _alive(pid), "the target died with the thread that started it"
        harness.send_signal(signal.SIGKILL)
        harness.wait(10)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the target outlived a SIGKILL of its harness"
    finally:
        if harness.poll() is None:
            harness.kill()


def _dead_pid() -> tuple[int, int | None]:
    """A pid (and its start time) of a process that has ended."""
    from harness.leftovers import process_start

    child = subprocess.Popen(["sleep", "0.3"])
    start = process_start(child.pid)
    child.wait()
    return child.pid, start


def _dead_record(tmp_path: Path, name: str, mount: Path | None, added: int, set_to: int) -> tuple[SessionRecord, Path]:
    from harness.leftovers import SessionRecord

    sock = tmp_path / f"{name}.sock"
    sock.write_text("")
    Path(f"{sock}.lock").write_text("")
    pid, start = _dead_pid()
    record = SessionRecord(__import__("socket").gethostname(), pid, start, sock_path=str(sock),
                           mount_dir=str(mount) if mount else None, hugepages_added=added, hugepages_set_to=set_to)
    return record, sock


def test_the_next_session_undoes_what_a_killed_harness_held(tmp_path: Path) -> None:
    """Hugepages it reserved, the hugetlbfs it mounted, its socket and lock: given back exactly as its own
    teardown would have (and only the pages it added, only if nobody changed the setting since).

    The mount is real; the nr_hugepages sysctl is a file of this test's own: the machine's is shared by every
    harness running here (a second make test doing the same wrote it in between, and the give-back rightly
    left it alone)."""
    from harness.leftovers import SessionRecord, reap

    mount = tmp_path / "hugepages"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "hugetlbfs", "nodev", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a hugetlbfs here (needs root)")
    nr = tmp_path / "nr_hugepages"
    nr.write_text("10\n")  # 7 the machine's own, 3 the dead session's
    record, sock = _dead_record(tmp_path, "spdk", mount, added=3, set_to=10)
    records = tmp_path / "sessions"
    record.write(record.path(records))
    live = SessionRecord.mine()
    live.write(live.path(records))  # a live harness's record is left alone
    try:
        done = reap(records, nr_hugepages=str(nr))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    assert int(nr.read_text()) == 7
    assert not sock.exists() and not Path(f"{sock}.lock").exists()
    assert not any(line.split()[1] == str(mount) for line in Path("/proc/mounts").read_text().splitlines())
    assert any("gave back 3 hugepages" in d for d in done) and any("unmounted" in d for d in done), done
    assert [p.name for p in records.glob("*.json")] == [live.path(records).name]


def test_hugepages_changed_since_a_killed_harness_reserved_them_are_left_alone(tmp_path: Path) -> None:
    """Somebody (another harness, an operator) set nr_hugepages after the dead session did: giving back its 3
    from the new value would take pages that are not its own."""
    from harness.leftovers import reap

    nr = tmp_path / "nr_hugepages"
    nr.write_text("12\n")
    record, sock = _dead_record(tmp_path, "other", None, added=3, set_to=10)
    records = tmp_path / "sessions"
    record.write(record.path(records))
    done = reap(records, nr_hugepages=str(nr))
    assert int(nr.read_text()) == 12
    assert not any("gave back" in d for d in done) and any("removed" in d for d in done), done
    assert not sock.exists() and not list(records.glob("*.json"))


def test_core_pattern_held_by_a_killed_run_goes_back_to_the_machines_own(tmp_path: Path) -> None:
    from harness.report.core import reap_core_pattern

    registry, proc = tmp_path / "registry", tmp_path / "core_pattern"
    (registry / "users").mkdir(parents=True)
    pid, _ = _dead_pid()
    me = __import__("socket").gethostname()
    (registry / "users" / f"{me}-{pid}-abc").write_text("/dead/run/cores/core.%p.%e")
    (registry / "original").write_text("core")
    (registry / "written").write_text("/dead/run/cores/core.%p.%e\n")
    proc.write_text("/dead/run/cores/core.%p.%e\n")
    live = registry / "users" / f"{me}-{os.getpid()}-def"
    live.write_text("/live/cores/core.%p.%e")
    assert reap_core_pattern(str(registry), str(proc)) is None  # a live run holds it: left alone
    assert not (registry / "users" / f"{me}-{pid}-abc").exists() and live.exists()
    live.unlink()
    assert "restored" in (reap_core_pattern(str(registry), str(proc)) or "")
    assert proc.read_text() == "core"
