"""Target lifecycle through a Host: find, start, wait for RPC, stop, record the exit; clear errors otherwise."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from harness.errors import TargetError
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.target import Target, TargetConfig, find_spdk_tgt


def _fake_tgt(tmp_path: Path, body: str) -> str:
    """An executable that stands where spdk_tgt would: lets us test start-up failures without SPDK."""
    path = tmp_path / "bin" / "spdk_tgt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_reference_target_starts_answers_and_stops_clean(tmp_path: Path) -> None:
    tgt = Target(LocalHost(), TargetConfig(kind="sim"), str(tmp_path), announce=lambda m: None)
    info = tgt.start()
    try:
        assert tgt.alive() and info.pid
        assert "reference target" in info.version
        assert "bdev_lvol_create" in info.methods
        with SyncRpc(tgt.host, tgt.sock_path) as rpc:
            assert rpc.call("bdev_malloc_create", name="M0", num_blocks=2048, block_size=4096) == "M0"
    finally:
        assert tgt.stop() == "exit 0"
    assert not tgt.alive()
    assert not os.path.exists(tgt.sock_path)
    assert "REFERENCE TARGET" in (tmp_path / "target.log").read_text().upper()


def test_sim_run_announces_itself_loudly(tmp_path: Path) -> None:
    said: list[str] = []
    tgt = Target(LocalHost(), TargetConfig(kind="sim"), str(tmp_path), announce=said.append)
    with tgt:
        pass
    assert said and "REFERENCE TARGET" in said[0]


def test_killed_target_exit_is_recorded_as_signal(tmp_path: Path) -> None:
    tgt = Target(LocalHost(), TargetConfig(kind="sim"), str(tmp_path), announce=lambda m: None)
    tgt.start()
    assert tgt.process is not None
    tgt.process.send_signal(signal.SIGKILL)
    tgt.process.wait(5)
    assert tgt.stop() == "signal SIGKILL"
    assert tgt.info.exit_code == -signal.SIGKILL
    assert not os.path.exists(tgt.sock_path)


def test_missing_binary_says_where_it_looked() -> None:
    env = {"SPDK_TGT": "/nonexistent/spdk_tgt", "PATH": "/nonexistent"}
    with pytest.raises(TargetError) as info:
        find_spdk_tgt(LocalHost(), None, environ=env)
    msg = str(info.value)
    assert "$SPDK_TGT=/nonexistent/spdk_tgt (missing)" in msg and "$SPDK_DIR (unset)" in msg
    assert "--spdk-tgt" in msg and "--target sim" in msg


def test_binary_found_through_spdk_dir(tmp_path: Path) -> None:
    binary = _fake_tgt(tmp_path / "spdk" / "build", "exit 0")
    found = find_spdk_tgt(LocalHost(), None, environ={"SPDK_DIR": str(tmp_path / "spdk")})
    assert found == binary


def test_target_dying_at_start_quotes_its_log(tmp_path: Path) -> None:
    binary = _fake_tgt(tmp_path, 'echo "app.c: 777:spdk_app_start: *ERROR*: Unable to acquire lock on core 0"; '
                                 "exit 1")
    cfg = TargetConfig(kind="spdk", spdk_tgt=binary, no_huge=True, start_timeout_s=10)
    tgt = Target(LocalHost(), cfg, str(tmp_path / "run"))
    with pytest.raises(TargetError, match=r"(?s)exited during start-up \(exit 1\).*Unable to acquire lock"):
        tgt.start()
    assert not tgt.alive()


def test_target_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    binary = _fake_tgt(tmp_path, "echo starting; exec sleep 60")
    cfg = TargetConfig(kind="spdk", spdk_tgt=binary, no_huge=True, start_timeout_s=1.5, stop_timeout_s=1)
    tgt = Target(LocalHost(), cfg, str(tmp_path / "run"))
    with pytest.raises(TargetError, match=r"did not answer on .*spdk.sock within 1.5 s"):
        tgt.start()
    assert not tgt.alive()


def test_spdk_argv_has_flags_users_expect(tmp_path: Path) -> None:
    binary = _fake_tgt(tmp_path, "exit 0")
    cfg = TargetConfig(kind="spdk", spdk_tgt=binary, cpumask="0x3", mem_size_mb=512, no_huge=True,
                       logflags=["lvol", "blob"], extra_args=["--wait-for-rpc"])
    argv = Target(LocalHost(), cfg, str(tmp_path)).argv()
    assert argv[:5] == [binary, "-m", "0x3", "-r", str(tmp_path / "spdk.sock")]
    for flag in (["-s", "512"], ["-L", "lvol"], ["-L", "blob"]):
        i = argv.index(flag[0], argv.index(flag[0]))
        assert flag[1] in argv[i:]
    assert "--no-huge" in argv and "--no-pci" in argv and argv[-1] == "--wait-for-rpc"
    nvme = Target(LocalHost(), cfg, str(tmp_path), needs_pci=True).argv()
    assert "--no-pci" not in nvme


def test_shared_library_build_gets_ld_library_path(tmp_path: Path) -> None:
    binary = _fake_tgt(tmp_path / "spdk" / "build", "exit 0")
    (tmp_path / "spdk" / "build" / "lib").mkdir()
    tgt = Target(LocalHost(), TargetConfig(kind="spdk", spdk_tgt=binary, no_huge=True), str(tmp_path))
    tgt.argv()
    assert tgt.environment()["LD_LIBRARY_PATH"].startswith(str(tmp_path / "spdk" / "build" / "lib"))


def test_socket_path_too_long_for_af_unix(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    tgt = Target(LocalHost(), TargetConfig(kind="sim"), str(deep), announce=lambda m: None)
    with pytest.raises(TargetError, match=r"over the AF_UNIX limit of 107"):
        tgt.start()


def test_a_claimed_core_at_start_up_says_what_to_do() -> None:
    from harness.target import startup_hint

    # spdk_tgt 24.09's log when another SPDK app holds /var/tmp/spdk_cpu_lock_000 (seen on this machine).
    tail = ("[2026-11-29 10:04:29.768349] app.c: 779:claim_cpu_cores: *ERROR*: Cannot create lock on core 0, "
            "probably process 25070 has claimed it.\n[2026-11-29 10:04:29.768405] app.c: 910:spdk_app_start: "
            "*ERROR*: Unable to acquire lock on assigned core mask - exiting.")
    hint = startup_hint(tail)
    assert "core 0 is claimed by process 25070" in hint and "--disable-cpumask-locks" in hint
    assert "target.cpumask" in hint
    assert startup_hint("app.c: 910:spdk_app_start: *ERROR*: something else") == ""


def test_an_interrupt_while_stopping_still_kills_and_gives_back_what_the_target_held(tmp_path: Path) -> None:
    """A second Ctrl-C lands while stop() waits for the target: the process is killed and its hugepages and
    mount given back anyway (an aborted minimize once left 1,025 hugepages reserved and a hugetlbfs mounted)."""
    tgt = Target(LocalHost(), TargetConfig(kind="sim", stop_timeout_s=5), str(tmp_path), announce=lambda m: None)
    tgt.start()
    released: list[bool] = []

    class Held:
        def release(self) -> None:
            released.append(True)

    tgt.hugepages = Held()  # type: ignore[assignment]
    assert tgt.process is not None
    real_wait = tgt.process.wait
    calls = []

    def interrupted_wait(timeout: float | None = None) -> int | None:
        calls.append(timeout)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_wait(timeout)

    tgt.process.wait = interrupted_wait  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        tgt.stop()
    assert not tgt.alive() and released == [True] and tgt.hugepages is None
