"""The target under test: a real `spdk_tgt` or the reference target, started, awaited and stopped through a Host.

Both kinds share one lifecycle (spawn, wait for RPC, `spdk_kill_instance`, signals), so everything above this
module is the same for either; only `kind` tells them apart, and a run against the reference target says so.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_fixed,
)

from harness import target_bundle
from harness.errors import Stopped, TargetError
from harness.hosts.base import Host, HostProcess, describe_returncode
from harness.hosts.local import LocalHost
from harness.hugepages import HugepageReservation
from harness.rpc.errors import RpcAbandoned, RpcConnectError, RpcError
from harness.rpc.sync import SyncRpc
from harness.target_bundle import TargetBundle
from harness.target_log_cap import TargetLogCap

AF_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL.

SIM_BANNER = (
    "*** REFERENCE TARGET: this run drives lvol-storm's model of spdk_tgt (spdk-sim), not a real SPDK "
    "build. It checks the harness, not SPDK. ***"
)


_CORE_CLAIMED = re.compile(r"Cannot create lock on core (\d+), probably process (\d+) has claimed it")


def startup_hint(log_tail: str) -> str:
    """What to do about a start-up failure the target's log explains (empty when it does not)."""
    m = _CORE_CLAIMED.search(log_tail)
    if m:
        return (f": core {m[1]} is claimed by process {m[2]} (another SPDK app on this host): stop it, give this "
                f"target other cores (target.cpumask), or pass --target-arg=--disable-cpumask-locks")
    return ""


def sim_python(host: Host) -> str:
    """The interpreter that runs the reference target on `host`: this harness's own where the node has it (this
    machine, a namespace node sharing its files), else the node's `python3` (a guest or lab machine with
    lvol-storm installed for its system Python)."""
    if host.is_local or host.exists(sys.executable):
        return sys.executable
    return "python3"


class TargetConfig(BaseModel):
    """How to start the target. Field names follow spdk_tgt's own flags where there is one."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "spdk", "sim"] = "auto"
    spdk_tgt: str | None = Field(None, description="path to spdk_tgt; else $SPDK_TGT, PATH, $SPDK_DIR/build/bin")
    ship: Literal["auto", "always", "never"] = Field(
        "auto", description="a remote node without spdk_tgt gets this machine's, with its libraries "
        "(harness.target_bundle); always: even where the node has one; never: the node's own or an error")
    cpumask: str = Field("0x1", pattern=r"^(0x[0-9a-fA-F]+|\[[0-9,\- ]+\])$")
    mem_size_mb: int | None = Field(None, ge=1, description="-s")
    hugepages_mb: int = Field(1024, ge=0, description="hugepages for SPDK itself; a malloc bdev's size is added")
    no_huge: bool = False
    logflags: list[str] = Field(default_factory=list)
    extra_args: list[str] = Field(default_factory=list, description="more spdk_tgt arguments")
    env: dict[str, str] = Field(default_factory=dict)
    start_timeout_s: float = Field(60.0, gt=0)
    stop_timeout_s: float = Field(15.0, gt=0)
    rpc_timeout_s: float = Field(30.0, gt=0)
    log_cap_mb: float = Field(16.0, ge=0, description="target.log on disk at most this (the rest kept in "
                              "target.log.zst; harness.target_log_cap); 0: never capped")
    # Reference-target knobs (ignored for a real spdk_tgt).
    sim_fault: str = ""
    sim_fault_after: int = Field(40, ge=1)
    sim_latency_ms: float = Field(0.0, ge=0)
    sim_poll_interval_ms: float = Field(0.0, ge=0, description="look at the sockets once every X ms, as "
                                        "spdk_tgt's RPC poller does (~8); 0: as soon as bytes arrive")
    sim_seed: int | None = None

    @field_validator("cpumask", mode="before")
    @classmethod
    def _mask_from_yaml_int(cls, value: object) -> object:
        # YAML reads an unquoted 0x3 as the integer 3; a cpumask is meant as hex either way.
        return hex(value) if isinstance(value, int) and not isinstance(value, bool) else value


def find_spdk_tgt(host: Host, explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Locate `spdk_tgt` the way users expect: flag, $SPDK_TGT, PATH, $SPDK_DIR/build/bin. Say where we looked."""
    env = os.environ if environ is None else environ
    looked: list[str] = []
    candidates: list[tuple[str, str | None]] = [
        ("--spdk-tgt", explicit),
        ("$SPDK_TGT", env.get("SPDK_TGT")),
    ]
    for label, path in candidates:
        if path:
            if host.exists(path):
                return path
            looked.append(f"{label}={path} (missing)")
        else:
            looked.append(f"{label} (unset)")
    on_path = host.which("spdk_tgt")
    if on_path:
        return on_path
    looked.append("PATH")
    spdk_dir = env.get("SPDK_DIR")
    if spdk_dir:
        path = str(PurePosixPath(spdk_dir) / "build/bin/spdk_tgt")
        if host.exists(path):
            return path
        looked.append(f"$SPDK_DIR/build/bin ({path} missing)")
    else:
        looked.append("$SPDK_DIR (unset)")
    raise TargetError(
        f"{host.name}: spdk_tgt not found; looked at {', '.join(looked)}: pass --spdk-tgt PATH, set SPDK_TGT, "
        "or use --target sim for the reference target"
    )


def resolve_kind(host: Host, config: TargetConfig) -> str:
    """`spdk` or `sim`: `kind: auto` is spdk_tgt where one is found on the host (or, for a remote node, here to
    install there), else the reference target."""
    if config.kind != "auto":
        return config.kind
    hosts = [host] if host.is_local or config.ship == "never" else [host, LocalHost()]
    for where in hosts:
        try:
            find_spdk_tgt(where, config.spdk_tgt)
            return "spdk"
        except TargetError:
            pass
    return "sim"


def node_spdk_tgt(host: Host, config: TargetConfig,
                  announce: Callable[[str], None] | None = None) -> tuple[str, TargetBundle | None]:
    """The spdk_tgt to start on `host` and, when it is this machine's installed there, its bundle. A remote
    node uses its own (`ship: auto`) unless it has none; then this machine's is installed there."""
    if host.is_local or config.ship == "never":
        return find_spdk_tgt(host, config.spdk_tgt), None
    missing: TargetError | None = None
    if config.ship == "auto":
        try:
            return find_spdk_tgt(host, config.spdk_tgt), None
        except TargetError as on_node:
            missing = on_node
    try:
        here = find_spdk_tgt(LocalHost(), config.spdk_tgt)
    except TargetError as not_here:
        if missing is not None:
            raise TargetError(f"{missing}; nor is one on this machine to install there (target.ship)") from None
        raise TargetError(f"target.ship=always: {not_here}") from None
    bundle = target_bundle.gather(here)
    target_bundle.mirror_here(bundle)
    return target_bundle.install(bundle, host, announce), bundle


def check_socket_path(path: str) -> None:
    if len(path.encode()) > AF_UNIX_PATH_MAX:
        raise TargetError(
            f"RPC socket path is {len(path.encode())} bytes, over the AF_UNIX limit of {AF_UNIX_PATH_MAX}: "
            f"{path}: use a shorter --run-dir"
        )


@dataclass
class TargetInfo:
    """What a report needs to know about the target that ran."""

    kind: str
    host: str
    argv: str
    pid: int | None = None
    version: str = ""
    binary: str = ""
    sock_path: str = ""
    log_path: str = ""
    exit: str = "running"
    exit_code: int | None = None
    methods: list[str] = field(default_factory=list)
    installed_from: str = ""
    """Set when `binary` is this machine's spdk_tgt installed on the node (harness.target_bundle): its path here."""
    log_archive: str = ""
    """Set when the log outgrew target.log_cap_mb: what harness.target_log_cap did with it."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Target:
    """One incarnation of the target process on a host, with its socket and log under `work_dir`."""

    def __init__(
        self,
        host: Host,
        config: TargetConfig,
        work_dir: str,
        *,
        needs_pci: bool = False,
        bdev_memory_mb: int = 0,
        announce: Any = None,
        stop: threading.Event | None = None,
    ) -> None:
        """Built only by `harness.session.TargetSession`, which knows the memory the caller's bdevs need.
        `stop` set while the target starts ends the wait for it at once (`Stopped`)."""
        self.host = host
        self.stop_event = stop
        self.config = config
        self.work_dir = work_dir
        self.needs_pci = needs_pci
        self.bdev_memory_mb = bdev_memory_mb  # a malloc bdev lives in hugepages too
        self.kind = self._resolve_kind()
        self.sock_path = str(PurePosixPath(work_dir) / "spdk.sock")
        self.log_path = str(PurePosixPath(work_dir) / "target.log")
        self.process: HostProcess | None = None
        self.hugepages: HugepageReservation | None = None
        self.log_cap: TargetLogCap | None = None
        self.bundle: TargetBundle | None = None
        """This machine's spdk_tgt as installed on a remote node, when it is that one that runs."""
        self.info = TargetInfo(kind=self.kind, host=host.name, argv="", sock_path=self.sock_path,
                               log_path=self.log_path)
        self._announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # -- start ------------------------------------------------------------------------------------------

    def _resolve_kind(self) -> str:
        return resolve_kind(self.host, self.config)

    @property
    def is_sim(self) -> bool:
        return self.kind == "sim"

    @property
    def uses_hugepages(self) -> bool:
        return not (self.config.no_huge or "--no-huge" in self.config.extra_args)

    @property
    def memory_mib(self) -> int | None:
        """The hugepage memory this target gets: SPDK's own (`hugepages_mb`) plus every malloc bdev the caller
        said it will create, or `mem_size_mb` if larger; None when nothing is reserved (hugepages_mb 0). A
        real spdk_tgt may grow into any free hugepage; the reference target gets exactly this (`-s`)."""
        cfg = self.config
        if not self.uses_hugepages:
            return cfg.mem_size_mb
        if not cfg.hugepages_mb:
            return None
        return max(cfg.mem_size_mb or 0, cfg.hugepages_mb + self.bdev_memory_mb)

    def argv(self) -> list[str]:
        cfg = self.config
        if self.is_sim:
            argv = [sim_python(self.host), "-m", "harness.sim", "-r", self.sock_path, "-m", cfg.cpumask]
            if self.memory_mib is not None:
                argv += ["-s", str(self.memory_mib)]
            if cfg.sim_fault:
                argv += ["--fault", cfg.sim_fault, "--fault-after", str(cfg.sim_fault_after)]
            if cfg.sim_latency_ms:
                argv += ["--latency-ms", f"{cfg.sim_latency_ms:g}"]
            if cfg.sim_poll_interval_ms:
                argv += ["--poll-interval-ms", f"{cfg.sim_poll_interval_ms:g}"]
            if cfg.sim_seed is not None:
                argv += ["--seed", str(cfg.sim_seed)]
            return argv
        binary, self.bundle = node_spdk_tgt(self.host, cfg, self._announce)
        self.info.binary = binary
        self.info.installed_from = self.bundle.source if self.bundle is not None else ""
        argv = [binary, "-m", cfg.cpumask, "-r", self.sock_path]
        if cfg.mem_size_mb:
            argv += ["-s", str(cfg.mem_size_mb)]
        if cfg.no_huge or "--no-huge" in cfg.extra_args:
            if "--no-huge" not in cfg.extra_args:
                argv.append("--no-huge")
        elif self.hugepages and self.hugepages.huge_dir:
            argv += ["--huge-dir", self.hugepages.huge_dir]
        for flag in cfg.logflags:
            argv += ["-L", flag]
        if not self.needs_pci and "--no-pci" not in cfg.extra_args:
            argv.append("--no-pci")
        return argv + list(cfg.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(self.config.env)
        if self.bundle is not None:
            return {**self.bundle.environment(), **env}
        if not self.is_sim and self.info.binary:
            libs = target_bundle.library_dirs(self.host, self.info.binary)
            if libs and "LD_LIBRARY_PATH" not in env:
                env["LD_LIBRARY_PATH"] = ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        return env

    def start(self, on_spawn: Callable[[int], None] | None = None) -> TargetInfo:
        """Spawn the target and return once it answers `spdk_get_version` and has finished init; `on_spawn`
        gets the pid the moment the process exists (its cores are claimed before it can crash)."""
        check_socket_path(self.sock_path)
        self.host.makedirs(self.work_dir)
        if self.host.exists(self.sock_path):
            self.host.remove(self.sock_path)
        memory = self.memory_mib
        if self.is_sim:
            self._announce(SIM_BANNER)
        elif self.uses_hugepages and memory is not None:
            self.hugepages = HugepageReservation(self.host, memory, str(PurePosixPath(self.work_dir) / "hugepages"))
            self.hugepages.reserve()
        argv = self.argv()
        self.info.argv = shlex.join(argv)
        try:
            # cwd = the work dir: with a relative core_pattern ("core"), a core lands in the run, not in the repo.
            self.process = self.host.spawn(
                argv, log_path=self.log_path, env=self.environment(), cwd=self.work_dir, core_unlimited=True
            )
        except Exception:
            self._release()
            raise
        self.info.pid = self.process.pid
        if self.host.is_local and self.config.log_cap_mb > 0:
            self.log_cap = TargetLogCap(self.log_path, int(self.config.log_cap_mb * 2**20))
            self.log_cap.start()
        try:
            if on_spawn is not None:
                on_spawn(self.process.pid)
            self._wait_ready()
        except Exception:
            self.stop()
            raise
        return self.info

    def log_tail(self, lines: int = 15) -> str:
        res = self.host.run(["tail", "-n", str(lines), self.log_path], timeout=30)  # never the whole log
        if not res.ok:
            return "(no target log)"
        return res.stdout.rstrip("\n") or "(target log is empty)"

    def _died(self, what: str) -> TargetError:
        rc = self.process.poll() if self.process else None
        tail = self.log_tail()
        return TargetError(
            f"{self.kind} target {what} ({describe_returncode(rc)}){startup_hint(tail)}; last lines of "
            f"{self.log_path}:\n" + tail
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        assert self.process is not None

        def connect() -> SyncRpc:
            if self.process is not None and self.process.poll() is not None:
                raise self._died("exited during start-up")
            return SyncRpc(self.host, self.sock_path, timeout=max(1.0, deadline - time.monotonic()),
                           connect_timeout=1.0, abort=self.stop_event)

        def stopped_now() -> Stopped:
            return Stopped(f"stopped while the {self.kind} target was starting: nothing ran (its log: "
                           f"{self.log_path})")

        stopped = stop_when_event_set(self.stop_event) if self.stop_event is not None else stop_never
        try:
            for attempt in Retrying(
                stop=stop_after_delay(self.config.start_timeout_s) | stopped,
                wait=wait_fixed(0.1),
                retry=retry_if_exception_type((OSError, RpcError)),
                reraise=False,
            ):
                with attempt:
                    rpc = connect()
        except RetryError as exc:
            if self.stop_event is not None and self.stop_event.is_set():
                raise stopped_now() from None
            raise self._died(
                f"did not answer on {self.sock_path} within {self.config.start_timeout_s:g} s "
                f"(last error: {exc.last_attempt.exception()})"
            ) from exc
        try:
            with rpc:
                version = rpc.call("spdk_get_version")
                self.info.version = version.get("version", "") if isinstance(version, dict) else str(version)
                rpc.call("framework_wait_init")
                self.info.methods = list(rpc.call("rpc_get_methods") or [])
        except RpcAbandoned:  # the stop came while it was answering its first calls
            raise stopped_now() from None

    # -- stop -------------------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, hung: bool = False) -> str:
        """`spdk_kill_instance SIGTERM`, then SIGTERM, then SIGKILL, each bounded. Returns the exit description.
        A target known to be hung gets SIGKILL at once: asking it to stop only spends the bounds (22 s)."""
        proc = self.process
        try:
            if proc is not None and proc.poll() is None and hung:
                proc.send_signal(signal.SIGKILL)
                proc.wait(5.0)
            if proc is not None and proc.poll() is None:
                asked = False  # nothing asked: nothing to wait for
                if self.host.exists(self.sock_path):  # no socket yet: nobody to ask
                    try:
                        with SyncRpc(self.host, self.sock_path, timeout=2.0, connect_timeout=1.0) as rpc:
                            rpc.call("spdk_kill_instance", sig_name="SIGTERM")
                        asked = True
                    except RpcConnectError:
                        pass  # not listening (yet)
                    except Exception:
                        asked = True  # sent, perhaps: dead, hung or gone; the signals below decide
                bound = self.config.stop_timeout_s
                if not asked or proc.wait(bound) is None:
                    proc.send_signal(signal.SIGTERM)
                    if proc.wait(bound / 2) is None:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait(5.0)
        except BaseException:
            # Interrupted while stopping (a second Ctrl-C): the process goes now, and what it held is given
            # back below, so an abort never leaves hugepages reserved or a hugetlbfs mounted.
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(5.0)
            raise
        finally:
            if proc is not None:
                self.record_exit()
            if proc is None or proc.poll() is not None:
                self._release()
                self._finish_log()
        return self.info.exit

    def _finish_log(self) -> None:
        cap, self.log_cap = self.log_cap, None
        if cap is not None:
            try:
                self.info.log_archive = cap.finish() or ""
            except OSError as exc:
                self.info.log_archive = f"target log: archiving failed ({exc}); {self.log_path} is as written"

    def record_exit(self) -> None:
        if self.process is not None:
            rc = self.process.poll()
            self.info.exit_code = rc
            self.info.exit = describe_returncode(rc)

    def _release(self) -> None:
        if not self.alive():
            # A target that died cannot remove its socket, nor the `<socket>.lock` SPDK takes beside it.
            for path in (self.sock_path, self.sock_path + ".lock"):
                if self.host.exists(path):
                    self.host.remove(path)
        if self.hugepages is not None:
            self.hugepages.release()
            self.hugepages = None

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
