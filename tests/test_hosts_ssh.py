"""SshHost against a real sshd in a network namespace this file creates (terraform/local's node-up.sh)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from harness.errors import HostError
from harness.hosts.base import describe_returncode
from harness.hosts.ssh import HostKeyRefused, SshHost

SCRIPTS = Path(__file__).resolve().parents[1] / "terraform" / "local" / "scripts"

ECHO_SERVER = """
import socket, sys, threading
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(16)
print("listening", path, flush=True)
def serve(conn):
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _needs_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "ssh-keygen", "socat"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.access("/usr/sbin/sshd", os.X_OK):
        return "needs /usr/sbin/sshd (apt-get install openssh-server)"
    return None


pytestmark = [pytest.mark.netns, pytest.mark.timeout(120),
              pytest.mark.skipif(_needs_netns() is not None, reason=str(_needs_netns()))]


@dataclass
class Node:
    address: str
    key: Path
    known_hosts: Path
    dir: Path
    ns: str

    def host(self, **kw: object) -> SshHost:
        return SshHost("node0", self.address, key_path=self.key, known_hosts=self.known_hosts,
                       connect_timeout=5, retry_for=5, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("sshnode")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "id")], check=True)
    run = f"t{os.getpid() % 100000}"
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    # A /24 nobody here uses now; starting at a pid-chosen place keeps concurrent test runs apart.
    octet = next(o for o in (200 + (os.getpid() + k) % 50 for k in range(50)) if f" 10.213.{o}." not in used)
    env = {**os.environ, "NS": f"lvs-{run}-0", "VETH_HOST": f"lvh{run}-0", "VETH_NODE": f"lvn{run}-0",
           "HOST_ADDR": f"10.213.{octet}.1", "NODE_ADDR": f"10.213.{octet}.2", "NODE_DIR": str(base / "n0"),
           "PUBKEY": str(base / "id.pub"), "MAX_SESSIONS": "3"}  # small, so every test also uses the pool
    try:
        subprocess.run([str(SCRIPTS / "node-up.sh")], env=env, check=True, timeout=30, capture_output=True)
        yield Node(env["NODE_ADDR"], base / "id", base / "n0" / "known_hosts", base, env["NS"])
    finally:
        subprocess.run([str(SCRIPTS / "node-down.sh")], env=env, timeout=30, check=False)
    assert env["NS"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def host(node: Node) -> Iterator[SshHost]:
    with node.host() as h:
        yield h


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_run_reports_exit_code_output_env_and_input(host: SshHost) -> None:
    res = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.rc, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert host.run("test 1 = 1").ok and not host.run("test 1 = 2").ok
    assert host.run(["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hi there"}).stdout == "hi there\n"
    assert host.run(["cat"], input=b"piped\x00bytes").stdout == "piped\x00bytes"
    assert host.run(["/nonexistent/prog"]).rc == 127
    # The command runs inside the namespace: its address is the node's, not this machine's.
    assert host.run(["ip", "-o", "-4", "addr", "show"]).stdout.count(host.address) == 1
    died = host.run("kill -SEGV $$")
    assert describe_returncode(died.rc) == "signal SIGSEGV"


def test_run_timeout_is_a_host_error(host: SshHost) -> None:
    started = time.monotonic()
    with pytest.raises(HostError, match=r"did not finish within 0\.5 s"):
        host.run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - started < 3


def test_files_round_trip_and_missing_file_is_file_not_found(host: SshHost, node: Node) -> None:
    path = str(node.dir / "files" / "deep" / "f.bin")
    payload = bytes(range(256)) * 1000
    host.write_file(path, payload, mode=0o640)
    assert host.read_file(path) == payload
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    host.write_file(path, "")
    assert host.read_file(path) == b""
    assert host.exists(path) and not host.exists(path + ".nope")
    host.remove(path)
    assert not host.exists(path)
    with pytest.raises(FileNotFoundError, match="node0"):
        host.read_file(path)
    assert host.which("sh") and host.which("no-such-program-here") is None
    host.write_file(path, b"fetched\n")
    local = node.dir / "fetched" / "copy"
    host.fetch_file(path, str(local))
    assert local.read_bytes() == b"fetched\n"
    with pytest.raises(FileNotFoundError):
        host.fetch_file(path + ".nope", str(local))


def test_spawn_logs_output_and_reports_exit_code_and_signal(host: SshHost, node: Node) -> None:
    log = node.dir / "logs" / "proc.log"
    proc = host.spawn([sys.executable, "-c", "import sys, time; print('hello', flush=True); "
                       "print('oops', file=sys.stderr, flush=True); time.sleep(60)"], log_path=str(log))
    assert _wait_for(lambda: log.exists() and "oops" in log.read_text())
    assert proc.poll() is None and proc.wait(0.3) is None
    # The pid is the program's own (the watchdog matches it against kernel log lines).
    assert "python" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    assert Path(f"/proc/{proc.pid}").stat().st_uid == 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    assert proc.describe_exit() == "signal SIGTERM"
    proc.send_signal(signal.SIGKILL)  # a no-op once it has exited
    assert "hello" in log.read_text() and "oops" in log.read_text()

    second = host.spawn(["sh", "-c", 'echo "cwd=$(pwd) core=$(ulimit -c) v=$V"; exit 7'], log_path=str(log),
                        env={"V": "x y"}, cwd=str(node.dir), core_unlimited=True)
    assert second.wait(10) == 7
    text = log.read_text()
    assert "hello" in text, "a second spawn must append to the log, not truncate it"
    assert f"cwd={node.dir} core=unlimited v=x y" in text


def test_spawn_of_a_missing_program_fails_at_once(host: SshHost, node: Node) -> None:
    with pytest.raises(HostError, match=r"cannot start `no-such-spdk-tgt --foo`: .*not found"):
        host.spawn(["no-such-spdk-tgt", "--foo"], log_path=str(node.dir / "logs" / "missing.log"))


def test_follow_file_streams_appended_lines_and_close_stops_the_follower(host: SshHost, node: Node) -> None:
    path = node.dir / "grow.log"
    path.write_text("first\n")
    stream = host.follow_file(str(path))
    try:
        assert stream.get(timeout=10) == "first"
        with path.open("a") as f:
            f.write("second\n")
        assert stream.get(timeout=10) == "second"
        assert stream.get(timeout=0.2) is None
    finally:
        stream.close()

    def follower_gone() -> bool:
        return str(path) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout

    assert _wait_for(follower_gone), "closing the stream must stop `tail -F` on the node"


def test_follow_command_ends_with_the_command(host: SshHost) -> None:
    stream = host.follow_command(["sh", "-c", "echo a; echo b"])
    assert [stream.get(5), stream.get(5), stream.get(5)] == ["a", "b", None]
    assert stream.eof
    stream.close()


@pytest.fixture
def echo_server(host: SshHost, node: Node) -> Iterator[str]:
    script, sock = str(node.dir / "echo.py"), str(node.dir / "echo.sock")
    host.write_file(script, ECHO_SERVER)
    host.remove(sock)
    proc = host.spawn([sys.executable, script, sock], log_path=str(node.dir / "logs" / "echo.log"))
    assert _wait_for(lambda: host.exists(sock))
    yield sock
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)


def test_connect_unix_is_a_real_socket_through_the_tunnel(host: SshHost, echo_server: str) -> None:
    sock = host.connect_unix(echo_server)
    assert isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX
    sock.settimeout(10)
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    got = bytearray()
    while len(got) < len(payload):
        got += sock.recv(1 << 16)
    sender.join(5)
    assert bytes(got) == payload
    sock.shutdown(socket.SHUT_WR)  # a half-close travels to the server, whose close comes back as EOF
    assert sock.recv(10) == b""
    sock.close()


def test_connect_unix_serves_asyncio_clients_on_many_connections(host: SshHost, echo_server: str) -> None:
    async def client(i: int) -> int:
        reader, writer = await asyncio.open_unix_connection(sock=host.connect_unix(echo_server))
        for j in range(20):  # pipelined, like the RPC client
            writer.write(f"{i}:{j}\n".encode())
        await writer.drain()
        lines = [await asyncio.wait_for(reader.readline(), 10) for _ in range(20)]
        writer.close()
        await writer.wait_closed()
        assert lines == [f"{i}:{j}\n".encode() for j in range(20)]
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(client(i) for i in range(6)))

    assert asyncio.run(main()) == list(range(6))


def test_connect_unix_missing_socket_raises_like_a_local_connect(host: SshHost, node: Node) -> None:
    with pytest.raises(FileNotFoundError):
        host.connect_unix(str(node.dir / "no-such.sock"))
    plain = node.dir / "not-a-socket"
    plain.write_text("x")
    with pytest.raises(OSError):
        host.connect_unix(str(plain))


def test_connect_unix_sees_the_server_die(host: SshHost, node: Node) -> None:
    script, path = str(node.dir / "echo2.py"), str(node.dir / "echo2.sock")
    host.write_file(script, ECHO_SERVER)
    proc = host.spawn([sys.executable, script, path], log_path=str(node.dir / "logs" / "echo2.log"))
    assert _wait_for(lambda: host.exists(path))
    sock = host.connect_unix(path)
    sock.settimeout(10)
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    assert sock.recv(10) == b"", "the target dying must look like a closed connection to the RPC client"
    sock.close()


def test_reconnects_after_the_connection_drops(host: SshHost) -> None:
    transport = host._transport()
    transport.close()
    assert host.run(["echo", "back"]).stdout == "back\n"
    assert host._transport() is not transport


def test_changed_host_key_is_refused_naming_the_known_hosts_line(node: Node, tmp_path: Path) -> None:
    other = paramiko.Ed25519Key.from_private_key_file(str(node.key))  # any ed25519 key that is not the node's
    known = tmp_path / "known_hosts"
    known.write_text(f"# comment\n10.0.0.9 ssh-ed25519 {other.get_base64()}\n"
                     f"{node.address} ssh-ed25519 {other.get_base64()}\n")
    host = SshHost("node0", node.address, key_path=node.key, known_hosts=known, connect_timeout=5, retry_for=5)
    with pytest.raises(HostKeyRefused) as info:
        host.run(["true"])
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{known}:3" in msg and "REFUSED" in msg and f"ssh-keygen -f {known} -R '{node.address}'" in msg
    assert other.fingerprint in msg

    hashed = tmp_path / "known_hosts_hashed"  # what `ssh-keygen -H` leaves: names as |1|salt|hash
    hashed.write_text(f"{paramiko.HostKeys.hash_host(node.address)} ssh-ed25519 {other.get_base64()}\n")
    host = SshHost("node0", node.address, key_path=node.key, known_hosts=hashed, connect_timeout=5, retry_for=5)
    with pytest.raises(HostKeyRefused, match=f"{re.escape(str(hashed))}:1 expects"):
        host.run(["true"])


def test_unknown_host_is_refused_with_its_fingerprint(node: Node, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    host = SshHost("node0", node.address, key_path=node.key, known_hosts=known, connect_timeout=5, retry_for=5)
    node_key = paramiko.Ed25519Key.from_private_key_file(str(node.dir / "n0" / "ssh_host_ed25519_key"))
    with pytest.raises(HostKeyRefused, match=f"not in {re.escape(str(known))}.*{re.escape(node_key.fingerprint)}"):
        host.run(["true"])


def test_insecure_host_keys_warns_and_connects(node: Node) -> None:
    with pytest.warns(UserWarning, match="insecure_host_keys"):
        host = SshHost("node0", node.address, key_path=node.key, insecure_host_keys=True, connect_timeout=5)
    with host:
        assert host.run(["true"]).ok
    with pytest.raises(HostError, match="no known_hosts"):
        SshHost("node0", node.address, key_path=node.key)


def test_wrong_key_is_refused_at_authentication(node: Node, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "wrong")], check=True)
    host = SshHost("node0", node.address, key_path=tmp_path / "wrong", known_hosts=node.known_hosts,
                   connect_timeout=5, retry_for=5)
    started = time.monotonic()
    with pytest.raises(HostError, match=r"node0 \(root@.*:22\): authentication: the node refused key .*wrong"):
        host.run(["true"])
    assert time.monotonic() - started < 5, "an auth failure must not be retried"
    with pytest.raises(HostError, match=r"loading key: .*does not exist"):
        SshHost("node0", node.address, key_path=tmp_path / "nokey", known_hosts=node.known_hosts).connect()


def test_unreachable_address_names_host_step_and_error(node: Node) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = SshHost("gone", "127.0.0.1", port=port, key_path=node.key, known_hosts=node.known_hosts,
                   connect_timeout=1, retry_for=1)
    with pytest.raises(HostError, match=rf"gone \(root@127.0.0.1:{port}\): tcp connect failed \(\d+ attempts? "
                                        r"in .* s\): ConnectionRefusedError"):
        host.run(["true"])


def test_silent_listener_fails_at_the_ssh_handshake(node: Node) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the TCP handshake; nobody ever sends an SSH banner
        host = SshHost("mute", "127.0.0.1", port=silent.getsockname()[1], key_path=node.key,
                       known_hosts=node.known_hosts, connect_timeout=0.5, retry_for=0.5)
        with pytest.raises(HostError, match=r"mute .*: ssh handshake failed"):
            host.run(["true"])


def test_sudo_wraps_every_command_for_a_non_root_user(node: Node) -> None:
    host = SshHost("lab", "192.0.2.1", user="ec2-user", key_path=node.key, known_hosts=node.known_hosts)
    assert host.sudo
    line = host._command_line(["cat", "/var/tmp/a b"], env={"K": "v"})
    assert line == "sudo -n -- env K=v cat '/var/tmp/a b'; exit $?"
    assert not SshHost("lab", "192.0.2.1", key_path=node.key, known_hosts=node.known_hosts).sudo


@pytest.mark.skipif(shutil.which("sudo") is None, reason="needs sudo on the node")
def test_sudo_path_runs_commands(node: Node) -> None:
    with node.host(sudo=True) as host:
        assert host.run(["id", "-u"]).stdout.strip() == "0"
        assert host.read_file("/proc/self/status").startswith(b"Name:")


def test_rpc_clients_work_unchanged_over_ssh(host: SshHost, node: Node) -> None:
    """The reference target on the node, driven by both RPC clients through connect_unix, then killed."""
    from harness.rpc.client import RpcConnection
    from harness.rpc.errors import RpcConnectionLost
    from harness.rpc.sync import SyncRpc

    sock = str(node.dir / "sim.sock")
    proc = host.spawn([sys.executable, "-m", "harness.sim", "-r", sock], log_path=str(node.dir / "logs" / "sim.log"),
                      cwd=str(Path(__file__).resolve().parents[1]))
    try:
        sync = SyncRpc(host, sock, connect_timeout=20)
        assert "bdev_lvol_create" in sync.methods()
        sync.close()

        async def pipelined() -> list[object]:
            conn = await RpcConnection.open(host, sock, connect_timeout=20)
            try:
                return await asyncio.gather(*(conn.call("bdev_get_bdevs", timeout=20) for _ in range(50)))
            finally:
                await conn.close()

        assert asyncio.run(pipelined()) == [[]] * 50

        async def sees_the_target_die() -> None:
            conn = await RpcConnection.open(host, sock, connect_timeout=20)
            proc.send_signal(signal.SIGKILL)
            with pytest.raises(RpcConnectionLost):
                await conn.call("rpc_get_methods", timeout=20)

        asyncio.run(sees_the_target_die())
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.send_signal(signal.SIGKILL)


def test_channels_spread_over_connections_at_the_max_sessions_limit(node: Node) -> None:
    with node.host(max_connections=4) as host:
        streams = [host.follow_command(["sh", "-c", f"echo s{i}; sleep 30"]) for i in range(7)]
        try:
            assert [s.get(10) for s in streams] == [f"s{i}" for i in range(7)]
            assert host.run(["echo", "x"]).stdout == "x\n"
            assert len(host._clients) == 3  # MaxSessions 3 on the node: 7 followers + 1 command need 3 connections
            more = [host.follow_command(["sleep", "30"]) for _ in range(5)]  # 12 channels: 4 connections full
            with pytest.raises(HostError, match=r"at the node.s MaxSessions limit.*raise MaxSessions"):
                host.follow_command(["sleep", "30"])
            for s in more:
                s.close()
        finally:
            for s in streams:
                s.close()
        assert _wait_for(lambda: host.run(["true"]).ok)


def test_connection_lost_mid_command_is_a_host_error_not_an_exit_code(node: Node) -> None:
    with node.host() as host:
        killer = threading.Timer(0.5, lambda: host._transport().close())
        killer.start()
        with pytest.raises(HostError, match="connection was lost while `sleep 5` ran; it may or may not"):
            host.run(["sleep", "5"], timeout=20)
        killer.join()
        assert host.run(["echo", "again"]).stdout == "again\n"  # the next command reconnects


def test_target_lifecycle_runs_through_ssh_host(host: SshHost, node: Node) -> None:
    """harness.target written only against Host: start, answer, stop and exit status over SSH."""
    from harness.target import Target, TargetConfig

    target = Target(host, TargetConfig(kind="sim", start_timeout_s=30), str(node.dir / "target"),
                    announce=lambda msg: None)
    info = target.start()
    try:
        assert info.pid and "bdev_lvol_create" in info.methods
        assert target.alive()
    finally:
        exit_text = target.stop()
    assert not target.alive() and exit_text
    assert host.exists(target.log_path)


def test_private_dir_is_mktemp_as_the_login_user_never_through_sudo(node: Node, host: SshHost) -> None:
    """A node's work dir: an unguessable /tmp name, mode 0700, the SSH user's (not root's through sudo)."""
    made = [host.private_dir(), host.private_dir()]
    try:
        assert made[0] != made[1] and all(re.fullmatch(r"/tmp/lvol-storm\.[A-Za-z0-9]{10}", p) for p in made), made
        for path in made:
            assert host.run(["stat", "-c", "%a %U", path]).stdout.split() == ["700", host.user]
        as_other_user = node.host(sudo=True)  # as a non-root login: every run() goes through sudo
        lines: list[str] = []

        def recorded(line: str, **kw: object) -> tuple[int, bytes, bytes]:
            lines.append(line)
            return 0, b"/tmp/lvol-storm.abcdefghij\n", b""

        as_other_user._exec = recorded  # type: ignore[method-assign]
        assert as_other_user.private_dir() == "/tmp/lvol-storm.abcdefghij"
        assert lines == ["mktemp -d /tmp/lvol-storm.XXXXXXXXXX"]  # no `sudo -n --` in front
        assert as_other_user._command_line(["true"]).startswith("sudo -n -- ")
    finally:
        host.run(["rm", "-rf", *made])
