"""`python -m bench [--only NAME,...] [--quick] [--minutes 1,5,15] [--long]`: run the benchmarks, print the table.

Every figure is measured in this one invocation on this machine; goals are printed beside them (met / MISSED),
never asserted. Each benchmark runs in a fresh interpreter (`--child`), so one's heap, threads and leftovers
do not colour the next one's RSS or CPU. `--markdown PATH` also writes the table as Markdown, `--json PATH`
as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.figures import Figure, markdown_table, table_text, to_json

REPO = Path(__file__).resolve().parent.parent

ORDER = ("throughput", "io", "detection", "scaling", "memory", "watchdog", "first_op")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _minutes(text: str) -> list[float]:
    try:
        marks = sorted(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes like 1,5,15, got {text!r}") from None
    if not marks or marks[0] <= 0:
        raise argparse.ArgumentTypeError(f"expected positive minutes like 1,5,15, got {text!r}")
    return marks


def _depths(text: str) -> list[int]:
    try:
        depths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected depths like 4,16,64, got {text!r}") from None
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(f"expected depths >= 1 like 4,16,64, got {text!r}")
    return depths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(ORDER)}")
    p.add_argument("--quick", action="store_true", help="tiny configurations (seconds, not minutes)")
    p.add_argument("--minutes", type=_minutes, default=None,
                   help="memory: RSS sample points in minutes of storm (default 1,5,15)")
    p.add_argument("--long", action="store_true", help="memory: run for an hour (marks 1,5,15,30,60)")
    p.add_argument("--crashes", type=int, default=20, help="detection: crashes to cause (default 20)")
    p.add_argument("--seconds", type=float, default=None, help="throughput/scaling: seconds per storm")
    p.add_argument("--depth", type=_depths, default=None,
                   help="throughput: requests in flight per connection on the reference target, e.g. 64 or "
                        "4,16,64 (one setting each; default 4 and 64, plus depth 4 polling every 8 ms); "
                        "only these settings when given")
    p.add_argument("--profile", type=Path, default=None,
                   help="throughput: cProfile the storm rounds, write pstats here (one file per setting, "
                        "suffixed with the depth) and print their top entries")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help="run every benchmark in this interpreter")
    return p


def _child_argv(args: argparse.Namespace, name: str, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "bench", "--child", "--only", name, "--json", str(out),
            "--crashes", str(args.crashes)]
    if args.quick:
        argv.append("--quick")
    if args.long:
        argv.append("--long")
    if args.minutes:
        argv += ["--minutes", ",".join(f"{m:g}" for m in args.minutes)]
    if args.seconds:
        argv += ["--seconds", f"{args.seconds:g}"]
    if args.depth:
        argv += ["--depth", ",".join(str(d) for d in args.depth)]
    if args.profile:
        argv += ["--profile", str(args.profile.resolve())]
    return argv


def run_in_child(args: argparse.Namespace, name: str) -> list[Figure]:
    """One benchmark in a fresh interpreter; its progress lines pass through, its figures come back as JSON."""
    with tempfile.TemporaryDirectory(prefix="lsb-") as tmp:
        out = Path(tmp) / "figures.json"
        proc = subprocess.run(_child_argv(args, name, out), cwd=REPO, check=False)
        if not out.exists():
            return [Figure(name, "failed", None, note=f"benchmark process exited {proc.returncode}")]
        return [Figure(**row) for row in json.loads(out.read_text())]


def runners(args: argparse.Namespace) -> dict[str, Callable[[], list[Figure]]]:
    quick = args.quick

    def throughput() -> list[Figure]:
        from bench import throughput as m

        secs = args.seconds or (2.0 if quick else 6.0)
        return m.run(seconds=secs, rounds=1 if quick else 3, peer_seconds=1.0 if quick else 4.0, log=_log,
                     depths=args.depth, profile=args.profile)

    def io() -> list[Figure]:
        from bench import io_cost as m

        return m.run(seconds=args.seconds or (3.0 if quick else 10.0), rounds=1 if quick else 2, log=_log)

    def detection() -> list[Figure]:
        from bench import detection as m

        return m.run(crashes=2 if quick else args.crashes, quick=quick, log=_log)

    def scaling() -> list[Figure]:
        from bench import scaling as m

        return m.run(seconds=args.seconds or (1.0 if quick else 4.0), quick=quick, log=_log)

    def memory() -> list[Figure]:
        from bench import memory as m

        marks = list(m.LONG_MARKS_MIN) if args.long else (args.minutes or list(m.MARKS_MIN))
        if quick and args.minutes is None and not args.long:
            marks = [0.1, 0.2, 0.3]
        return m.run(marks, log=_log)

    def watchdog() -> list[Figure]:
        from bench import watchdog_cpu as m

        return m.run(seconds=5.0 if quick else 60.0, log=_log)

    def first_op() -> list[Figure]:
        from bench import first_op as m

        return m.run(repeats=1 if quick else 3, log=_log)

    return {"throughput": throughput, "io": io, "detection": detection, "scaling": scaling, "memory": memory,
            "watchdog": watchdog, "first_op": first_op}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The watchdog logs each crash and target-log finding it sees; here crashes are the point, and each
    # benchmark prints its own line per crash.
    logging.getLogger("harness").setLevel(logging.CRITICAL)
    table = runners(args)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(ORDER)
    unknown = [n for n in chosen if n not in table]
    if unknown:
        print(f"python -m bench: --only: unknown {', '.join(unknown)}; known: {', '.join(ORDER)}", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    t0 = time.monotonic()
    for name in chosen:
        _log(f"bench: {name} ...")
        t = time.monotonic()
        if args.child or args.in_process:
            try:
                got = table[name]()
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                got = [Figure(name, "failed", None, note=f"{type(exc).__name__}: {exc}")]
        else:
            got = run_in_child(args, name)
        figures += got
        if not args.child:
            _log(f"bench: {name} done in {time.monotonic() - t:.0f} s")
    if args.child:
        if args.json:
            args.json.write_text(to_json(figures) + "\n")
        return 0
    print(table_text(figures))
    met = sum(1 for f in figures if f.met)
    judged = sum(1 for f in figures if f.goal is not None)
    print(f"\n{met} of {judged} goals met; {time.monotonic() - t0:.0f} s in all")
    if args.markdown:
        args.markdown.write_text(markdown_table(figures) + "\n")
    if args.json:
        args.json.write_text(to_json(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
