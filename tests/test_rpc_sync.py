"""`SyncRpc`, the typed method layer and `Capabilities`, against the fake SPDK server and the recordings."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import TargetError
from harness.history import SETUP_WORKER, History
from harness.hosts.local import LocalHost
from harness.recordings import recordings_dir
from harness.rpc.errors import RpcConnectError, RpcConnectionLost, RpcError, RpcTimeout
from harness.rpc.methods import Capabilities, SyncRpcMethods
from harness.rpc.sync import SyncRpc
from harness.rpc_rules.table import LONGHORN_FORK_METHODS, OPTIONAL_LONGHORN_METHODS, READ_METHODS
from tests.test_rpc_client import TunnelHost
from tests.test_rpc_fake_server import FakeSpdkProcess

HOST = LocalHost()
RECORDED_METHODS = (recordings_dir() / "transcripts"
                    / "longhorn-v24.09-07_rpc_get_methods_and_version.json")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeSpdkProcess]:
    server = FakeSpdkProcess(tmp_path_factory.mktemp("fake") / "spdk.sock")
    yield server
    server.stop()


class FlakyHost(LocalHost):
    """The first `failures` connections are closed by the far end right away (a target restarting)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.connects = 0

    def connect_unix(self, path: str, timeout: float = 5.0) -> socket.socket:
        self.connects += 1
        if self.connects <= self.failures:
            ours, theirs = socket.socketpair()
            theirs.close()
            return ours
        return super().connect_unix(path, timeout)


def test_calls_drop_none_params_and_omit_empty_ones(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path) as rpc:
        assert rpc.call("spdk_get_version")["version"].startswith("SPDK v24.09")
        sent = rpc.call("bdev_lvol_create", lvs_name="lvs0", lvol_name="a", size_in_mib=8, clear_method=None)
        assert sent["params"] == {"lvs_name": "lvs0", "lvol_name": "a", "size_in_mib": 8}
        assert rpc.call("bdev_lvol_get_lvols", lvs_name=None)["params"] == "<absent>"
        # `method` and `timeout` are SPDK parameter names too; they must reach the wire.
        assert rpc.call("bdev_get_bdevs", name="x", timeout=5)["params"] == {"name": "x", "timeout": 5}
        assert rpc.call_params("bdev_lvol_rename", {"old_name": "a", "new_name": None})["params"] == {
            "old_name": "a", "new_name": None}
        assert "bdev_lvol_create" in rpc.methods()


def test_error_replies_map_to_rpc_error(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path) as rpc:
        with pytest.raises(RpcError) as info:
            rpc.call("error", code=-32602, message="No space left on device")
        assert (info.value.code, info.value.errno_name) == (-32602, "ENOSPC")
        with pytest.raises(RpcError) as info:
            rpc.call("error", code=-19, message="No such device")
        assert info.value.errno_name == "ENODEV"
        assert rpc.call("echo", still="ok") == {"still": "ok"}


def test_timeout_is_wall_clock_and_the_next_call_still_works(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path, timeout=0.3) as rpc:
        started = time.monotonic()
        with pytest.raises(RpcTimeout, match=r"sleep: no reply within 0\.3 s"):
            rpc.call("sleep", s=1.0)  # the client sleeps in recv: no CPU time passes
        assert 0.3 <= time.monotonic() - started < 0.8
        # The late reply must not be taken for the next call's.
        assert rpc.call("echo", n=1) == {"n": 1}
        time.sleep(0.8)
        assert rpc.call("echo", n=2) == {"n": 2}


def test_lost_connection_raises_and_the_next_call_reconnects(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path) as rpc:
        with pytest.raises(RpcConnectionLost, match="the target closed the connection"):
            rpc.call("close")
        assert rpc.call("echo", back=True) == {"back": True}


def test_call_read_refuses_mutating_methods(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path) as rpc:
        for method in ("bdev_lvol_delete", "bdev_lvol_create", "bdev_lvol_snapshot", "spdk_kill_instance"):
            assert method not in READ_METHODS
            with pytest.raises(ValueError, match=f"call_read: {method} is not an idempotent read"):
                rpc.call_read(method, name="x")


def test_call_read_retries_a_read_but_call_never_retries(fake: FakeSpdkProcess) -> None:
    history = History(None)
    host = FlakyHost(failures=2)
    with SyncRpc(host, fake.sock_path, history=history) as rpc:
        assert rpc.call_read("bdev_lvol_get_lvstores", lvs_name="lvs0")["params"] == {"lvs_name": "lvs0"}
    assert host.connects == 3
    attempts = [r for r in history.tail() if r["method"] == "bdev_lvol_get_lvstores"]
    assert [("error" in r) for r in attempts] == [True, True, False]
    assert all(r["worker"] == SETUP_WORKER for r in attempts)
    assert [r["seq"] for r in attempts] == [1, 2, 3]

    host = FlakyHost(failures=1)
    with SyncRpc(host, fake.sock_path, history=history) as rpc:
        with pytest.raises(RpcConnectionLost):
            rpc.call("bdev_lvol_delete", name="a")
        assert host.connects == 1  # not sent again
        assert rpc.call("bdev_lvol_delete", name="b")["params"] == {"name": "b"}  # an explicit new call
    deletes = [r for r in history.tail() if r["method"] == "bdev_lvol_delete"]
    assert [r["params"]["name"] for r in deletes] == ["a", "b"]
    assert deletes[0]["error"]["errno"] == "ECONNRESET"


def test_a_shallow_copy_status_is_never_sent_twice(fake: FakeSpdkProcess) -> None:
    """spdk_tgt reports a finished copy once and then forgets it: a retry after a lost reply would turn
    `complete` into No such device, so the typed method sends it once, like a mutating call."""
    assert "bdev_lvol_check_shallow_copy" not in READ_METHODS
    host = FlakyHost(failures=1)
    with SyncRpc(host, fake.sock_path) as rpc:
        with pytest.raises(RpcConnectionLost):
            SyncRpcMethods(rpc).bdev_lvol_check_shallow_copy(7)
        assert host.connects == 1


def test_works_over_a_tunnelled_socket_and_from_threads(fake: FakeSpdkProcess) -> None:
    with SyncRpc(TunnelHost(), fake.sock_path) as rpc:
        results: dict[int, list[object]] = {}

        def caller(k: int) -> None:
            results[k] = [rpc.call("echo", k=k, i=i) for i in range(200)]

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert all(results[k] == [{"k": k, "i": i} for i in range(200)] for k in range(4))


def test_connect_failure_names_the_socket(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.sock")
    started = time.monotonic()
    with pytest.raises(RpcConnectError) as info:
        SyncRpc(HOST, missing, connect_timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert missing in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, TargetError) and isinstance(info.value, RpcError)


def test_typed_methods_send_spdk_parameter_names(fake: FakeSpdkProcess) -> None:
    with SyncRpc(HOST, fake.sock_path) as rpc:
        api = SyncRpcMethods(rpc)
        assert api.bdev_lvol_create("lvs0", "v", 16, thin_provision=True, clear_method="unmap")["params"] == {
            "lvs_name": "lvs0", "lvol_name": "v", "size_in_mib": 16, "thin_provision": True,
            "clear_method": "unmap"}
        assert api.bdev_lvol_create(None, "v", 0, uuid="lvs-uuid")["params"] == {
            "uuid": "lvs-uuid", "lvol_name": "v", "size_in_mib": 0}
        assert api.bdev_lvol_snapshot("v", "s", xattrs={"user_created": "true"})["params"] == {
            "lvol_name": "v", "snapshot_name": "s", "xattrs": {"user_created": "true"}}
        assert api.bdev_lvol_clone("s", "c")["params"] == {"snapshot_name": "s", "clone_name": "c"}
        assert api.bdev_lvol_delete("c")["params"] == {"name": "c"}
        assert api.bdev_lvol_resize("v", 32)["params"] == {"name": "v", "size_in_mib": 32}
        assert api.bdev_lvol_rename("v", "w")["params"] == {"old_name": "v", "new_name": "w"}
        assert api.bdev_lvol_set_xattr("w", "k", "")["params"] == {
            "name": "w", "xattr_name": "k", "xattr_value": ""}
        assert api.bdev_lvol_get_xattr("w", "k")["params"] == {"name": "w", "xattr_name": "k"}
        assert api.bdev_lvol_get_lvstores(lvs_name="lvs0")["params"] == {"lvs_name": "lvs0"}
        assert api.bdev_lvol_get_lvols()["params"] == "<absent>"
        assert api.bdev_get_bdevs()["params"] == "<absent>"
        assert api.spdk_get_version()["fields"]["major"] == 24
        with pytest.raises(RpcError) as info:
            api.bdev_lvol_inflate("w")  # not served by the fake: -32601 comes back as an RpcError
        assert info.value.code == -32601


def test_capabilities_from_the_recorded_method_list() -> None:
    if not RECORDED_METHODS.is_file():
        pytest.skip(f"recording not found at {RECORDED_METHODS}")
    steps = json.loads(RECORDED_METHODS.read_text())["steps"]
    methods = next(s["response"]["result"] for s in steps if s["tag"] == "rpc_get_methods_full")
    caps = Capabilities.from_methods(methods)
    assert caps.is_longhorn_fork and caps.xattrs and caps.snapshot_checksum and caps.shallow_copy
    assert caps.set_parent and caps.detach_parent and caps.fragmap
    assert caps.missing_required == [] and caps.missing_optional == []
    assert OPTIONAL_LONGHORN_METHODS <= caps.methods
    caps.require(["bdev_lvol_set_xattr", "bdev_lvol_delete"])

    upstream = Capabilities.from_methods(m for m in methods if m not in LONGHORN_FORK_METHODS)
    assert not upstream.is_longhorn_fork and not upstream.xattrs and upstream.shallow_copy
    assert upstream.missing_optional == sorted(LONGHORN_FORK_METHODS)
    with pytest.raises(TargetError, match=r"target lacks bdev_lvol_get_xattr, bdev_lvol_set_xattr .*Longhorn"):
        upstream.require(["bdev_lvol_set_xattr", "bdev_lvol_get_xattr", "bdev_lvol_delete"], why="the xattr op")
    assert Capabilities.from_methods(["spdk_get_version"]).missing_required[:2] == [
        "bdev_get_bdevs", "bdev_lvol_clone"]
