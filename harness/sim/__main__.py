"""`spdk-sim`: start the reference target with spdk_tgt's flags, so the same Target code starts either.

`-r/--rpc-socket`, `-m`, `-s`, `--no-pci`, `--huge-dir`, `--no-huge` and `-L` are spdk_tgt's and are
accepted (the socket, the core mask and the memory size mean something here); `--fault`, `--fault-after`, `--seed`,
`--latency-ms`, `--latency-jitter-ms` and `--poll-interval-ms` shape the model and its timing.
Bad flags are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from harness.sim.faults import FAULT_MODES, parse_faults
from harness.sim.methods import Dispatcher
from harness.sim.server import (
    ListenError,
    RpcServer,
    check_socket_path,
    cpumask_cores,
    spdk_log_line,
    startup_lines,
)
from harness.spdk_memory import SPDK_BASE_MIB, START_WITHOUT_MEMORY_ABORT, START_WITHOUT_MEMORY_LOG

DEFAULT_SOCKET = "/var/tmp/spdk.sock"

DispatcherFactory = Callable[..., object]


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one actionable line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="spdk-sim",
        description="lvol-storm's reference target: a model of spdk_tgt's lvol RPCs on SPDK's JSON-RPC socket. "
        "It is NOT spdk_tgt.",
        allow_abbrev=False,
    )
    spdk = parser.add_argument_group("spdk_tgt flags (accepted so the same command line starts either)")
    spdk.add_argument("-r", "--rpc-socket", default=DEFAULT_SOCKET, metavar="PATH",
                      help=f"RPC listen address, a Unix socket path (default {DEFAULT_SOCKET})")
    spdk.add_argument("-m", "--cpumask", default="0x1", metavar="MASK",
                      help="core mask (0x1, [0,1]); the reactor reports its first core")
    spdk.add_argument("-s", "--mem-size", metavar="MB", type=_mem_size,
                      help="hugepage memory this target may use, SPDK's own share included (the harness passes "
                           "what it reserved); a malloc bdev beyond it is ENOMEM, and below SPDK's own share "
                           f"({SPDK_BASE_MIB} MiB) start-up fails, as spdk_tgt's does. Default: unlimited")
    spdk.add_argument("--no-pci", action="store_true", help="ignored")
    spdk.add_argument("--huge-dir", metavar="DIR", help="ignored (no hugepages are used)")
    spdk.add_argument("--no-huge", action="store_true", help="ignored")
    spdk.add_argument("-L", "--logflag", action="append", default=[], metavar="FLAG", help="ignored")
    sim = parser.add_argument_group("reference target")
    modes = ", ".join(sorted(FAULT_MODES))
    sim.add_argument("--fault", default="", metavar="MODE[,MODE]",
                     help=f"fault modes to inject ({modes}; 'none' for a healthy target)")
    sim.add_argument("--fault-after", type=_positive_int, default=40, metavar="N",
                     help="calls before a fault mode may trigger (default 40)")
    sim.add_argument("--seed", type=int, default=None, metavar="N", help="seed for faults and latency jitter")
    sim.add_argument("--latency-ms", type=_non_negative_float, default=0.0, metavar="X",
                     help="delay every completion by X ms (other connections keep being served)")
    sim.add_argument("--latency-jitter-ms", type=_non_negative_float, default=0.0, metavar="X",
                     help="add a uniform 0..X ms to each completion's delay (replies then come back "
                          "in completion order)")
    sim.add_argument("--poll-interval-ms", type=_non_negative_float, default=0.0, metavar="X",
                     help="look at the sockets once every X ms, as spdk_tgt's RPC poller does (~8); "
                          "default 0: as soon as bytes arrive")
    sim.add_argument("--defer-checksum-replies", action="store_true",
                     help="answer bdev_lvol_register_snapshot_checksum when its job is done, as spdk_tgt does "
                          "(default: at once, the job holding the snapshot across the next polls)")
    return parser


def _mem_size(text: str) -> int:
    """spdk_tgt's `-s`: MiB, or with a K/M/G suffix (spdk_parse_capacity)."""
    units = {"": 1, "M": 1, "MB": 1, "G": 1024, "GB": 1024}
    number = text.rstrip("KMGBkmgb")
    unit = text[len(number):].upper()
    if unit in ("K", "KB") and number.isdigit():
        return max(1, -(-int(number) // 1024))
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"expected a size in MiB (e.g. 2048 or 2G), got {text!r}")
    return int(number) * units[unit]


def _real_dispatcher(faults: str, seed: int | None, fault_after: int, memory_mib: int | None) -> object:
    return Dispatcher(faults=parse_faults(faults), seed=seed, fault_after=fault_after, memory_mib=memory_mib)


def _fail_start_without_memory(out: TextIO, memory_mib: int) -> int:
    """What spdk_tgt prints when the hugepages cannot hold its own pools (measured, spdk_memory), then its
    abort; no core (the harness would take it for a crash of the storm, and it is a start-up failure)."""
    for line in (f"spdk-sim: -s {memory_mib}: SPDK's own pools need {SPDK_BASE_MIB} MiB",
                 *START_WITHOUT_MEMORY_LOG):
        out.write(spdk_log_line(line) + "\n")
    out.flush()
    sys.stderr.write(START_WITHOUT_MEMORY_ABORT + "\n")
    sys.stderr.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.abort()


def main(argv: Sequence[str] | None = None, dispatcher_factory: DispatcherFactory | None = None) -> int:
    """Run the reference target until it is stopped (0) or dies; bad flags and paths exit 2."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    problem = check_socket_path(args.rpc_socket)
    if problem:
        sys.stderr.write(problem + "\n")
        return 2
    cores = cpumask_cores(args.cpumask)
    if cores is None:
        parser.error(f"-m/--cpumask: {args.cpumask!r} is not a core mask: use e.g. 0x1 or [0,1]")
    factory = dispatcher_factory or _real_dispatcher
    try:
        dispatcher = factory(faults=args.fault, seed=args.seed, fault_after=args.fault_after,
                             memory_mib=args.mem_size)
    except ValueError as exc:  # parse_faults: an unknown fault mode
        sys.stderr.write(f"spdk-sim: --fault {args.fault}: {exc}\n")
        return 2
    if args.defer_checksum_replies:
        dispatcher.defer_checksum_replies = True  # type: ignore[attr-defined]
    out = sys.stdout
    for line in startup_lines(args.cpumask, args_list, os.getpid()):
        out.write((line if line.startswith("***") else spdk_log_line(line)) + "\n")
    out.flush()
    if args.mem_size is not None and args.mem_size < SPDK_BASE_MIB:
        return _fail_start_without_memory(out, args.mem_size)
    server = RpcServer(
        args.rpc_socket,
        dispatcher,  # type: ignore[arg-type]
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        poll_interval_ms=args.poll_interval_ms,
        seed=args.seed,
        out=out,
        core=cores[0],
    )
    try:
        server.listen()
    except ListenError as exc:
        for line in exc.lines:
            out.write(spdk_log_line(line) + "\n")
        out.flush()
        sys.stderr.write(f"spdk-sim: {exc}\n")
        return exc.exit_code
    return server.serve()


if __name__ == "__main__":
    sys.exit(main())
