"""`SshHost`: a node reached over SSH (paramiko), for netns test nodes, lab boxes and Terraform nodes.

Everything runs through exec channels on one SSH transport, so the node needs only sshd, a POSIX `sh`,
coreutils, util-linux's `setsid` and (for RPC sockets) `socat`; no TCP port is opened on the node.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import select
import shlex
import signal
import socket
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from harness.errors import HostError
from harness.hosts.base import Argv, CommandResult, Host, HostProcess, LineStream, argv_text

log = logging.getLogger(__name__)

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]{0,31}$")


def address_problem(address: str) -> str | None:
    """What is wrong with an SSH address (an inventory's, a Terraform output's), None for an IP address or a
    DNS host name: it reaches known_hosts lookups, messages and the commands they suggest, so a `;` or a
    space in it is refused, not quoted."""
    try:
        ipaddress.ip_address(address)
        return None
    except ValueError:
        pass
    labels = address.removesuffix(".").split(".")
    if len(address) <= 253 and all(_HOST_LABEL.match(label) for label in labels):
        return None
    return "expected a host name (letters, digits and '-', in labels between dots) or an IP address"


def user_problem(user: str) -> str | None:
    """What is wrong with an SSH user name, None for a POSIX portable one (letters, digits, '.', '_', '-', not
    starting with a digit, '.' or '-', at most 32 characters, as useradd takes them)."""
    if _USER_NAME.match(user):
        return None
    return "expected a user name (letters, digits, '.', '_' and '-', starting with a letter or '_', at most 32)"


class _QuietSessionRefusals(logging.Filter):
    """paramiko logs every refused channel open as an error; at sshd's MaxSessions that refusal is expected
    (`_open_session` moves on to another connection) and would only bury real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED: open failed: Connect failed" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_QuietSessionRefusals())

# Runs on the node inside `setsid -f`, so it is not a child of the SSH session: the command gets its own session
# (`setsid` without fork keeps the pid we record), output appended to the log, and its exit status is written
# next to the log by the shell that waited for it. A shell reports death by signal N as 128+N.
_SPAWN_WRAPPER = r"""
log=$1 pidf=$2 exitf=$3 cwd=$4 core=$5
shift 5
sh -c '
  pidf=$1 cwd=$2 core=$3
  shift 3
  if [ "$core" = 1 ]; then
    ulimit -c unlimited 2>/dev/null || echo "lvol-storm: could not raise the core size limit (ulimit -c unlimited)" >&2
  fi
  if [ -n "$cwd" ]; then cd "$cwd" || exit 127; fi
  echo $$ > "$pidf.tmp" && mv -f "$pidf.tmp" "$pidf"
  exec setsid "$@"
' lvol-storm-run "$pidf" "$cwd" "$core" "$@" >>"$log" 2>&1 </dev/null
echo $? > "$exitf.tmp" && mv -f "$exitf.tmp" "$exitf"
"""

# Checks the program exists, starts the wrapper detached and prints the pid once the child has recorded it.
_SPAWN_LAUNCHER = r"""
wrapper=$1 log=$2 pidf=$3 exitf=$4 cwd=$5 core=$6
shift 6
case $1 in
  */*) ( [ -z "$cwd" ] || cd "$cwd" ) && [ -x "$1" ] ;;
  *) command -v -- "$1" >/dev/null 2>&1 ;;
esac || { echo "$1: command not found or not executable" >&2; exit 127; }
mkdir -p -- "$(dirname -- "$log")" || exit 1
rm -f -- "$pidf" "$exitf"
setsid -f sh -c "$wrapper" lvol-storm-spawn "$log" "$pidf" "$exitf" "$cwd" "$core" "$@" </dev/null >/dev/null 2>&1 \
  || { echo "setsid -f failed (util-linux too old?)" >&2; exit 1; }
i=0
while [ ! -s "$pidf" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
[ -s "$pidf" ] && cat "$pidf" || { echo "the spawned process did not record its pid within 10 s" >&2; exit 1; }
"""

# Prints the exit status, `running`, or `lost` (neither alive nor a status: the wrapper itself was killed).
_STATUS = r"""
pid=$1 exitf=$2 polls=$3
i=0
while [ ! -s "$exitf" ] && [ $i -lt "$polls" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
if [ -s "$exitf" ]; then cat "$exitf"
elif kill -0 "$pid" 2>/dev/null; then echo running
else sleep 0.3; if [ -s "$exitf" ]; then cat "$exitf"; else echo lost; fi
fi
"""

# Runs a follower in the background and kills it when our end of the channel closes its stdin (a background
# job's stdin is /dev/null unless redirected explicitly, hence fd 3).
_FOLLOW = r"""
exec 3<&0
"$@" 2>/dev/null </dev/null 3<&- &
p=$!
(cat <&3 >/dev/null; kill $p 2>/dev/null) >/dev/null 2>&1 &
exec 3<&-
wait $p
"""

_CONNECTED = b"starting data transfer loop"


def _fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:...`, as `ssh-keygen -lf` prints it, so a user can compare it out of band."""
    return str(key.fingerprint)


def _strerror_to_oserror(text: str, path: str) -> OSError | None:
    """Turn socat's `E connect(...): No such file or directory` into the OSError a local connect() raises."""
    for code in (errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.ENOTSOCK, errno.ENOTDIR, errno.EPERM,
                 errno.EAGAIN, errno.ETIMEDOUT):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), path)
    return None


class HostKeyRefused(HostError):
    """The node's host key is not the one known_hosts has (or none is known): never connect anyway."""


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a node whose key known_hosts lacks, naming the key so a user can check it out of band."""

    def __init__(self, host: SshHost) -> None:
        self.host = host

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        h = self.host
        raise HostKeyRefused(
            f"{h.where}: host key check: {hostname} is not in {h.known_hosts} (it offered {key.get_name()} "
            f"{_fingerprint(key)}); add the node's key (re-run terraform apply, or `ssh-keyscan -p {h.port} "
            f"{h.address} >> {h.known_hosts}` after checking that fingerprint out of band)"
        )


class _AcceptLoudly(paramiko.MissingHostKeyPolicy):
    def __init__(self, host: SshHost) -> None:
        self.host = host

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning("%s: INSECURE: accepted unverified host key %s %s", self.host.where, key.get_name(),
                    _fingerprint(key))


class _ConnectStep(Exception):
    """Internal: which step of connecting failed, and whether trying again may help."""

    def __init__(self, step: str, cause: BaseException, transient: bool) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause
        self.transient = transient


class SshProcess(HostProcess):
    """A process started by `SshHost.spawn`; its pid and exit status live in files next to its log."""

    def __init__(self, host: SshHost, pid: int, argv: str, log_path: str, exit_path: str) -> None:
        self.host = host
        self.pid = pid
        self.argv = argv
        self.log_path = log_path
        self.exit_path = exit_path
        self._rc: int | None = None

    def _status(self, polls: int) -> int | None:
        if self._rc is not None:
            return self._rc
        res = self.host.run(["sh", "-c", _STATUS, "lvol-storm-status", str(self.pid), self.exit_path, str(polls)],
                            timeout=polls * 0.1 + 30)
        word = res.stdout.strip()
        if not res.ok or word == "lost":
            raise HostError(
                f"{self.host.name}: pid {self.pid} (`{self.argv}`) is gone but left no exit status in "
                f"{self.exit_path}: was its wrapper killed or the node rebooted? see {self.log_path}"
            )
        if word == "running":
            return None
        rc = int(word)
        if rc > 128 and rc - 128 in {s.value for s in signal.Signals}:
            rc = -(rc - 128)  # the waiting shell's 128+N: death by signal N, as subprocess reports it
        self._rc = rc
        return rc

    def poll(self) -> int | None:
        return self._status(0)

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 20.0 if deadline is None else min(20.0, deadline - time.monotonic())
            rc = self._status(max(0, int(left / 0.1)))
            if rc is not None or (deadline is not None and time.monotonic() >= deadline):
                return rc

    def send_signal(self, sig: int) -> None:
        if self._rc is None:
            # The exit file check keeps a recycled pid from being signalled after the process is gone.
            self.host.run(["sh", "-c", '[ -s "$2" ] || kill -"$3" "$1" 2>/dev/null; true', "lvol-storm-kill",
                           str(self.pid), self.exit_path, str(int(sig))])


class SshHost(Host):
    """A node over SSH: key auth only, host keys checked against `known_hosts`, `sudo -n` when not root.

    Every command, file, process and stream is an exec channel; channels spread over up to `max_connections`
    SSH connections (keepalive on) because sshd caps channels per connection. A dropped connection is
    replaced on the next use. Only connecting is retried (tenacity, for `retry_for` s), never a command:
    a command may have run before the connection broke.

    `run(..., timeout=)` stops waiting at the deadline but cannot stop the command on the node (paramiko has
    no way to signal it); long-lived work belongs in `spawn`.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        user: str = "root",
        port: int = 22,
        key_path: str | os.PathLike[str],
        known_hosts: str | os.PathLike[str] | None = None,
        insecure_host_keys: bool = False,
        sudo: bool | None = None,
        connect_timeout: float = 10.0,
        retry_for: float = 30.0,
        keepalive: float = 15.0,
        max_connections: int = 8,
    ) -> None:
        self.name = name
        self.address = address
        self.user = user
        self.port = port
        self.key_path = str(key_path)
        self.known_hosts = str(known_hosts) if known_hosts is not None else None
        self.insecure_host_keys = insecure_host_keys
        self.sudo = (user != "root") if sudo is None else sudo
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.keepalive = keepalive
        self.max_connections = max_connections
        self._clients: list[paramiko.SSHClient] = []
        self._lock = threading.Lock()
        if known_hosts is None and not insecure_host_keys:
            raise HostError(f"{self.where}: no known_hosts file given; pass known_hosts= (Terraform writes one) "
                            "or insecure_host_keys=True for throwaway nodes")
        if insecure_host_keys:
            msg = (f"{self.where}: insecure_host_keys=True: ANY host key is accepted, so a man in the middle "
                   "can impersonate this node; use a known_hosts file instead")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)

    @property
    def where(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"

    # ---- connection ----

    def _load_key(self) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(self.key_path)
        except FileNotFoundError as exc:
            raise HostError(f"{self.where}: loading key: {self.key_path} does not exist") from exc
        except paramiko.PasswordRequiredException as exc:
            raise HostError(f"{self.where}: loading key: {self.key_path} is passphrase-protected; "
                            "use an unencrypted key for the harness") from exc
        except (paramiko.SSHException, OSError, ValueError) as exc:
            raise HostError(f"{self.where}: loading key: cannot read {self.key_path}: {exc}") from exc

    def _connect_once(self, pkey: paramiko.PKey) -> paramiko.SSHClient:
        try:
            sock = socket.create_connection((self.address, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise _ConnectStep("tcp connect", exc, transient=True) from exc
        client = paramiko.SSHClient()
        if self.insecure_host_keys:
            client.set_missing_host_key_policy(_AcceptLoudly(self))
        else:
            assert self.known_hosts is not None
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                sock.close()
                raise HostError(f"{self.where}: host key check: cannot read known_hosts {self.known_hosts}: "
                                f"{exc}") from exc
            client.set_missing_host_key_policy(_RejectUnknown(self))
        try:
            client.connect(
                self.address, port=self.port, username=self.user, pkey=pkey, sock=sock,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, allow_agent=False, look_for_keys=False,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            sock.close()
            raise self._bad_host_key(exc) from exc
        except HostKeyRefused:
            client.close()
            sock.close()
            raise
        except paramiko.AuthenticationException as exc:
            client.close()
            sock.close()
            raise HostError(
                f"{self.where}: authentication: the node refused key {self.key_path} ({exc}); check that its "
                f"public half is in ~{self.user}/.ssh/authorized_keys on the node and the user name is right"
            ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            client.close()
            sock.close()
            raise _ConnectStep("ssh handshake", exc, transient=True) from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(max(1, int(self.keepalive)))
        return client

    def _bad_host_key(self, exc: paramiko.BadHostKeyException) -> HostKeyRefused:
        lookup = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        line = _known_hosts_line(str(self.known_hosts), lookup, exc.expected_key.get_name())
        at = f"{self.known_hosts}:{line}" if line else str(self.known_hosts)
        return HostKeyRefused(
            f"{self.where}: host key check: REFUSED: the node offered {exc.key.get_name()} {_fingerprint(exc.key)} "
            f"but {at} expects {_fingerprint(exc.expected_key)} (possible man in the middle); if the node was "
            f"really rebuilt, run `ssh-keygen -f {self.known_hosts} -R '{lookup}'` and add its new key "
            "(re-run terraform apply, or ssh-keyscan after checking the fingerprint out of band)"
        )

    def _connect(self) -> paramiko.SSHClient:
        pkey = self._load_key()
        started = time.monotonic()
        attempts = 0

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, _ConnectStep) and exc.transient

        try:
            for attempt in Retrying(stop=stop_after_delay(self.retry_for), retry=retry_if_exception(transient),
                                    wait=wait_exponential(multiplier=0.25, min=0.25, max=4), reraise=True):
                with attempt:
                    attempts += 1
                    client = self._connect_once(pkey)
        except _ConnectStep as exc:
            raise HostError(
                f"{self.where}: {exc.step} failed ({attempts} attempt{'s' if attempts > 1 else ''} in "
                f"{time.monotonic() - started:.1f} s): {type(exc.cause).__name__}: {exc.cause or 'no detail'}; "
                f"is the node up and is port {self.port} reachable from this machine?"
            ) from exc.cause
        if self.sudo:
            res = self._exec_on(client, "sudo -n true", timeout=30, input=None)
            if res[0] != 0:
                client.close()
                raise HostError(
                    f"{self.where}: sudo: `sudo -n true` failed: {res[2].decode(errors='replace').strip()}; give "
                    f"{self.user} passwordless sudo ({self.user} ALL=(ALL) NOPASSWD: ALL) or log in as root"
                )
        return client

    def _live_clients(self) -> list[paramiko.SSHClient]:
        """Drop connections that died (their channels are gone anyway); call with the lock held."""
        alive = []
        for client in self._clients:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                alive.append(client)
            else:
                log.info("%s: an SSH connection dropped; the next channel opens on another", self.where)
                client.close()
        self._clients = alive
        return alive

    def _transport(self) -> paramiko.Transport:
        """The first live connection's transport, connecting if there is none."""
        with self._lock:
            clients = self._live_clients()
            if not clients:
                clients.append(self._connect())
            transport = clients[0].get_transport()
            assert transport is not None
            return transport

    def connect(self) -> SshHost:
        """Connect now (otherwise the first command does), so a bad host fails early and clearly."""
        self._transport()
        return self

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients = []

    def __enter__(self) -> SshHost:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_session(self) -> paramiko.Channel:
        """A fresh session channel on any live connection with room, else on a new connection.

        sshd allows MaxSessions (default 10) channels per connection, and a storm keeps one per RPC connection
        plus followers open, so channels spread over a small pool of connections. Opening a channel sends no
        command, so moving on to another connection after a refusal or a dead transport is always safe.
        """
        tried: set[int] = set()
        last: BaseException | None = None
        while True:
            with self._lock:
                clients = [c for c in self._live_clients() if id(c) not in tried]
                if not clients:
                    if len(self._clients) >= self.max_connections:
                        raise HostError(
                            f"{self.where}: open session: all {len(self._clients)} SSH connections are at the "
                            f"node's MaxSessions limit ({last}); raise MaxSessions in the node's sshd_config"
                        )
                    self._clients.append(self._connect())
                    clients = [self._clients[-1]]
            for client in reversed(clients):  # the newest connection is the likeliest to have room
                tried.add(id(client))
                transport = client.get_transport()
                if transport is None:
                    continue
                try:
                    return transport.open_session(timeout=self.connect_timeout)
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    last = exc  # refused (MaxSessions) or the connection just died: try the next one

    # ---- commands ----

    def _command_line(self, argv: Argv, env: Mapping[str, str] | None = None) -> str:
        """The line sshd hands to the login shell: env, sudo and `exit $?` so death by signal reads 128+N."""
        words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if env:
            words = ["env", *(f"{k}={v}" for k, v in env.items()), *words]
        if self.sudo:
            words = ["sudo", "-n", "--", *words]
        return shlex.join(words) + "; exit $?"

    def _exec_on(self, client: paramiko.SSHClient | None, line: str, *, timeout: float,
                 input: bytes | None) -> tuple[int, bytes, bytes]:
        chan = client.get_transport().open_session() if client else self._open_session()  # type: ignore[union-attr]
        try:
            chan.exec_command(line)
            feeder = None
            if input:
                def feed() -> None:
                    try:
                        chan.sendall(input)
                        chan.shutdown_write()
                    except (OSError, EOFError, paramiko.SSHException):
                        pass
                feeder = threading.Thread(target=feed, name=f"ssh-stdin:{self.name}", daemon=True)
                feeder.start()
            else:
                chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready() \
                        and (chan.eof_received or chan.closed):
                    break
                if time.monotonic() > deadline:
                    raise HostError(f"{self.name}: `{line.removesuffix('; exit $?')}` did not finish within "
                                    f"{timeout:g} s")
                select.select([chan], [], [], 0.05)
            if feeder is not None:
                feeder.join(timeout=1)
            rc = chan.recv_exit_status()
            if rc < 0 and not chan.get_transport().is_active():
                raise HostError(f"{self.where}: the SSH connection was lost while `{line.removesuffix('; exit $?')}` "
                                "ran; it may or may not have taken effect")
            return (255 if rc < 0 else rc), bytes(out), bytes(err)
        finally:
            chan.close()

    def _exec(self, line: str, *, timeout: float = 60.0, input: bytes | None = None) -> tuple[int, bytes, bytes]:
        return self._exec_on(None, line, timeout=timeout, input=input)

    def private_dir(self, prefix: str = "lvol-storm") -> str:
        """`Host.private_dir`, made as the login user (never through sudo): the directory is the user's."""
        rc, out, err = self._exec(shlex.join(["mktemp", "-d", f"/tmp/{prefix}.XXXXXXXXXX"]), timeout=30)
        if rc != 0:
            raise HostError(f"{self.where}: mktemp -d under /tmp failed (exit {rc}): "
                            f"{err.decode(errors='replace').strip()}")
        return out.decode().strip()

    def run(
        self,
        argv: Argv,
        *,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> CommandResult:
        rc, out, err = self._exec(self._command_line(argv, env), timeout=timeout, input=input)
        return CommandResult(argv_text(argv), rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))

    # ---- files ----

    def _file_error(self, what: str, path: str, stderr: bytes) -> OSError | HostError:
        text = stderr.decode("utf-8", "replace").strip()
        for code in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            if os.strerror(code) in text:
                return OSError(code, f"{self.name}: cannot {what} ({text})", path)
        return HostError(f"{self.name}: cannot {what} {path}: {text or 'no error text'}")

    def read_file(self, path: str) -> bytes:
        rc, out, err = self._exec(self._command_line(["cat", "--", path]))
        if rc != 0:
            raise self._file_error("read", path, err)
        return out

    def write_file(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        if mode is not None:
            script += f' && chmod {mode:o} "$1"'
        payload = data.encode() if isinstance(data, str) else data
        rc, _, err = self._exec(self._command_line(["sh", "-c", script, "lvol-storm-write", path]),
                                input=payload or None)
        if rc != 0:
            raise self._file_error("write", path, err)

    def fetch_file(self, path: str, local_path: str) -> None:
        Path(local_path).parent.mkdir(parents=True, exist_ok=True)
        if not self.sudo:
            chan = self._open_session()
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)
            try:
                sftp.get(path, local_path)
                return
            except OSError as exc:
                raise OSError(exc.errno or errno.EIO, f"{self.name}: cannot fetch {path}: {exc}", path) from exc
            finally:
                sftp.close()
        # As another user the file may be root's (a core): stream it through `sudo cat`.
        chan = self._open_session()
        try:
            chan.exec_command(self._command_line(["cat", "--", path]))
            chan.shutdown_write()
            with open(local_path, "wb") as out:
                while chunk := chan.recv(1 << 20):
                    out.write(chunk)
            rc = chan.recv_exit_status()
            if rc != 0:
                err = b""
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                raise self._file_error("fetch", path, err)
        finally:
            chan.close()

    # ---- processes and streams ----

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        core_unlimited: bool = False,
    ) -> HostProcess:
        token = f"{int(time.time() * 1000):x}{os.getpid():x}{threading.get_ident() % 65536:x}"
        pid_path, exit_path = f"{log_path}.{token}.pid", f"{log_path}.{token}.exit"
        command = [*(["env", *(f"{k}={v}" for k, v in env.items())] if env else []), *argv]
        res = self.run(["sh", "-c", _SPAWN_LAUNCHER, "lvol-storm-launch", _SPAWN_WRAPPER, log_path, pid_path,
                        exit_path, cwd or "", "1" if core_unlimited else "0", *command], timeout=60)
        if not res.ok or not res.stdout.strip().isdigit():
            raise HostError(f"{self.name}: cannot start `{argv_text(argv)}`: "
                            f"{(res.stderr.strip() or res.stdout.strip() or f'exit {res.rc}').splitlines()[-1]}")
        return SshProcess(self, int(res.stdout.strip()), argv_text(argv), log_path, exit_path)

    def follow_command(self, argv: Argv) -> LineStream:
        words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        chan = self._open_session()
        chan.exec_command(self._command_line(["sh", "-c", _FOLLOW, "lvol-storm-follow", *words]))
        reader = _ChannelLines(chan)

        def stop() -> None:
            try:
                chan.shutdown_write()  # the node side kills the follower when its stdin ends
            except (OSError, EOFError, paramiko.SSHException):
                pass
            chan.close()

        return LineStream(reader, argv_text(argv), on_close=stop)  # type: ignore[arg-type]

    def connect_unix(self, path: str, timeout: float = 5.0) -> socket.socket:
        """A socketpair end pumped to `socat - UNIX-CONNECT:path` on the node (one channel per connection).

        paramiko cannot open OpenSSH's `direct-streamlocal@openssh.com` channels, so socat does the connect;
        its `-d -d` notices tell us whether the connect worked, so a missing socket raises FileNotFoundError
        (and a refused one ConnectionRefusedError) here, exactly like a local connect().
        """
        chan = self._open_session()
        try:
            chan.exec_command(self._command_line(["socat", "-d", "-d", "-", f"UNIX-CONNECT:{path}"]))
            err = bytearray()
            deadline = time.monotonic() + timeout
            while _CONNECTED not in err:
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                if _CONNECTED in err:
                    break
                if chan.exit_status_ready() and not chan.recv_stderr_ready():
                    text = err.decode("utf-8", "replace")
                    rc = chan.recv_exit_status()
                    if rc == 127 or ("not found" in text and "socat" in text):
                        raise HostError(f"{self.name}: connect_unix needs socat on the node; install it "
                                        "(apt-get install socat / zypper install socat)")
                    failed = _strerror_to_oserror(text, path)
                    if failed is not None:
                        raise failed
                    raise HostError(f"{self.name}: cannot connect to {path}: "
                                    f"{text.strip().splitlines()[-1] if text.strip() else f'socat exit {rc}'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(errno.ETIMEDOUT, f"{self.name}: connecting to {path} timed out", path)
                select.select([chan], [], [], 0.02)
        except BaseException:
            chan.close()
            raise
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _SocketPump(theirs, chan, f"{self.name}:{path}").start()
        return ours


class _ChannelLines:
    """Just enough of a binary file over a channel's stdout for LineStream (readline, close); paramiko's own
    ChannelFile flushes a write buffer from __del__, which fails noisily when collected after close."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self._buf = bytearray()

    def readline(self) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            try:
                data = self.chan.recv(1 << 16)
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += data

    def close(self) -> None:
        self.chan.close()


class _SocketPump:
    """Copies bytes both ways between one end of a socketpair and an SSH channel, passing half-closes on."""

    def __init__(self, sock: socket.socket, chan: paramiko.Channel, name: str) -> None:
        self.sock = sock
        self.chan = chan
        self.name = name
        self._left = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._up, name=f"unix-up:{self.name}", daemon=True).start()
        threading.Thread(target=self._down, name=f"unix-down:{self.name}", daemon=True).start()

    def _done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.chan.close()
            self.sock.close()

    def _up(self) -> None:
        try:
            while data := self.sock.recv(1 << 16):
                self.chan.sendall(data)
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            self._abort()
        finally:
            self._done()

    def _down(self) -> None:
        try:
            while data := self.chan.recv(1 << 16):
                self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)
        except (OSError, EOFError, paramiko.SSHException):
            self._abort()
        finally:
            self._done()

    def _abort(self) -> None:
        """One side broke: end both, so neither thread waits forever and the client sees the connection end."""
        for end in (self.sock, self.chan):
            try:
                end.shutdown(socket.SHUT_RDWR) if end is self.sock else end.close()
            except OSError:
                pass


def _known_hosts_line(path: str, lookup: str, key_type: str) -> int | None:
    """The 1-based line of `path` holding `lookup`'s key of `key_type` (hashed names included), for the fix."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for number, text in enumerate(lines, start=1):
        try:
            entry = HostKeyEntry.from_line(text, number)
        except (paramiko.SSHException, ValueError, IndexError):
            continue
        if entry is None or entry.key is None or entry.key.get_name() != key_type:
            continue
        for name in entry.hostnames:
            if name == lookup or (name.startswith("|1|") and HostKeys.hash_host(lookup, name) == name):
                return number
    return None


__all__ = ["HostKeyRefused", "SshHost", "SshProcess"]
