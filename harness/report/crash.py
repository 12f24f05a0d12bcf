"""`CrashReport`: one directory per crash, with a stable title, everything a person needs, and crash.json.

Built from the watchdog's evidence after the fact: decode the fault, symbolize its ip in the file the
kernel named (found through the target's recorded /proc/PID/maps), pull the core and its gdb backtrace,
slice the kernel and target logs, keep the last operations of every worker and write a reproducer.
Same title, same bug: `index.json` in the crashes directory counts each title once per run.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.crash_budget import Keep
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.report.backtrace import Backtrace, parse_gdb_backtrace
from harness.report.core import CORE_PATTERN, CorePattern, compress_core, fetch_core, gdb_backtrace
from harness.report.reproducer import SPDK_RPC_NOTE, last_operations, reproducer_script
from harness.report.symbolize import Symbolization, locate_file, symbolize
from harness.report.title import crash_key, crash_title, primary_evidence, title_slug
from harness.watch.evidence import CrashEvidence, MapEntry
from harness.watch.kmsg import UserFault


@dataclass
class CrashReport:
    """Everything known about one crash; `write()` lays it out on disk."""

    title: str
    evidence: list[CrashEvidence]
    fault: UserFault | None = None
    symbolization: Symbolization | None = None
    backtrace: Backtrace | None = None
    backtrace_text: str | None = None
    core_path: Path | None = None
    kernel_lines: list[str] = field(default_factory=list)
    target_log: list[str] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    target_info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    executable: str | None = None

    @classmethod
    def build(
        cls,
        evidence: list[CrashEvidence],
        host: Host,
        run_dir: str | Path,
        history_tail: list[Any],
        target_info: dict[str, Any],
        *,
        cores: CorePattern | None = None,
        binary_paths: tuple[str, ...] | list[str] = (),
        executable: str | None = None,
        per_worker: int = 20,
        notes: list[str] | None = None,
        mirrored: str | None = None,
    ) -> CrashReport:
        """Gather the report (call `Watchdog.settle()` first). `target_info` should hold `pid` (to find the
        core) and may hold `log_path` (the target log is then sliced from the file itself) and `executable`;
        it is copied into crash.json. `mirrored`: a directory whose files this machine holds too under the
        same path (this machine's spdk_tgt installed on a remote node, harness.target_bundle): the faulting
        file under it is symbolized here, and the core is fetched and read by gdb here, where the tools are."""
        if not evidence:
            raise ValueError("CrashReport.build needs at least one piece of evidence (Watchdog.evidence)")
        report_notes = list(notes or [])
        primary = primary_evidence(evidence)
        fault = next((ev.fault for ev in evidence if ev.fault is not None and ev.fault.kind != "oom-kill"), None)
        maps: list[MapEntry] = next((ev.maps for ev in evidence if ev.maps), [])
        executable = executable or target_info.get("executable") or _main_executable(maps, binary_paths)

        sym: Symbolization | None = None
        if fault is not None:
            path, offset = locate_file(fault, maps, binary_paths)
            here = mirrored is not None and path is not None and path.startswith(mirrored.rstrip("/") + "/")
            sym = symbolize(LocalHost() if here else host, path, offset)
            if sym.hint:
                report_notes.append(f"symbolize: {sym.hint}")

        backtrace_text: str | None = None
        backtrace: Backtrace | None = None
        core_path: Path | None = None
        staging = Path(run_dir) / "crashes" / f".staging-{int(time.time() * 1000)}"
        pid = target_info.get("pid")
        if cores is None:
            report_notes.append("core: not collected (no CorePattern given to the report)")
        elif not cores.active:
            report_notes.append(f"core: {cores.reason}")
        elif pid is None:
            report_notes.append("core: target_info has no pid; cannot find its core")
        elif primary.kind == "hang":
            report_notes.append("core: none for a hang (the target was alive); kill it with SIGABRT for one")
        elif _killed_without_core(evidence):
            report_notes.append(f"core: none: the kernel writes no core for {_exit_signal(evidence)} (the target "
                                "was killed, it did not crash)")
        else:
            found = cores.find_core(int(pid), timeout=10.0 if _died_by_signal(evidence) else 1.0)
            if found is None:
                changed = "" if cores.still_ours() else (
                    f"; {CORE_PATTERN} no longer points there: another run changed it")
                report_notes.append(f"core: no core for pid {pid} in {cores.core_dir} (ulimit -c 0 for the "
                                    f"target? spawn it with core_unlimited=True){changed}")
            else:
                if not found.startswith(cores.core_dir + "/"):
                    report_notes.append(f"core: found in {found.rsplit('/', 1)[0]}, another lvol-storm run's core "
                                        "dir (core_pattern is machine-wide and that run held it at the crash)")
                read_here = mirrored is not None and not host.is_local
                core_host: Host = host
                if read_here:  # the node has no gdb: the core comes here first, and gdb reads it beside the build
                    core_host, found = LocalHost(), str(fetch_core(host, found, staging))
                backtrace_text, how = gdb_backtrace(core_host, executable, found)
                if backtrace_text is None or "#0" not in backtrace_text:
                    report_notes.append(f"backtrace: {how}")
                else:
                    backtrace = parse_gdb_backtrace(backtrace_text)
                    where = (f"here, from the core fetched from {host.name} (its spdk_tgt is this machine's, "
                             f"mirrored in {mirrored})" if read_here else f"on {host.name} at the crash")
                    report_notes.append(f"backtrace: taken {where} by {how}; the core has moved into this "
                                        "bundle, gzipped: crash.json `gdb` opens it there")
                core_path = compress_core(core_host, found, staging)

        target_log = _merge_lines(evidence, "log_tail")
        log_path = target_info.get("log_path")
        if log_path:
            # The file itself is the fullest record of what the target said last.
            tail = host.run(["tail", "-n", "200", str(log_path)], timeout=30)
            if tail.ok and tail.stdout.strip():
                target_log = tail.stdout.splitlines()

        title = crash_title(evidence, symbol=sym.symbol if sym else None, backtrace=backtrace)
        t_crash = min(ev.t for ev in evidence)
        latest = max(evidence, key=lambda ev: ev.t)
        operations = last_operations(history_tail, before=t_crash, per_worker=per_worker)
        return cls(
            title=title, evidence=list(evidence), fault=fault, symbolization=sym, backtrace=backtrace,
            backtrace_text=backtrace_text, core_path=core_path,
            kernel_lines=_merge_lines(evidence, "kernel_lines") or list(latest.kernel_lines),
            target_log=target_log,
            operations=operations, target_info=dict(target_info), notes=report_notes, executable=executable,
        )

    def to_json(self) -> dict[str, Any]:
        primary = primary_evidence(self.evidence)
        out: dict[str, Any] = {
            "title": self.title,
            "key": crash_key(self.title),
            "kind": primary.kind,
            "time": self.created,
            "detected_at": min(ev.t for ev in self.evidence),
            "evidence": [ev.to_json() for ev in self.evidence],
            "target": self.target_info,
            "notes": self.notes,
            "reproducer": {"script": "repro.py", "operations": len(self.operations), "note": SPDK_RPC_NOTE},
        }
        if self.fault is not None:
            out["fault"] = {**self.fault.to_json(), "location": self.fault.location(),
                            "decoded": self.fault.describe()}
        if self.symbolization is not None:
            s = self.symbolization
            out["symbolized"] = {
                "binary": s.binary, "file_offset": hex(s.file_offset) if s.file_offset is not None else None,
                "address": hex(s.address) if s.address is not None else None, "command": s.command,
                "hint": s.hint,
                **({"function": s.symbol.function, "file": s.symbol.file, "line": s.symbol.line,
                    "inlined_into": s.symbol.inlined_into} if s.symbol else {}),
            }
        if self.backtrace is not None:
            out["backtrace"] = {
                "signal": self.backtrace.signal,
                "frames": [{"n": f.n, "func": f.func, "file": f.file, "line": f.line,
                            "pc": hex(f.pc) if f.pc is not None else None, "lib": f.lib}
                           for f in self.backtrace.frames],
                "file": "backtrace.txt",
            }
        out["core"] = self.core_path.name if self.core_path else None
        out["gdb"] = self.gdb_command()
        out["last_operations"] = self.operations
        return out

    def gdb_command(self) -> str | None:
        """The command that opens the kept core where it lies now (moved into the bundle and gzipped)."""
        if self.core_path is None:
            return None
        core = str(self.core_path)
        plain = core[:-3] if core.endswith(".gz") else core
        unpack = f"gzip -dk {shlex.quote(core)} && " if core.endswith(".gz") else ""
        gdb = ["gdb", "-nx", *([self.executable] if self.executable else ["-c"]), plain]
        return unpack + shlex.join(gdb)

    def write(self, crashes_dir: str | Path, *, keep: Keep = Keep.ALL) -> Path:
        """Write the report into a new `crashes_dir/NNN-<title slug>/`; update `crashes_dir/index.json`.
        `keep` (harness.crash_budget): a REPEAT leaves out the core, the backtrace and repro.py (and the last
        operations from crash.json: they are in last-operations.jsonl); COUNT writes crash.json alone."""
        root = Path(crashes_dir)
        root.mkdir(parents=True, exist_ok=True)
        index_path = root / "index.json"
        index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {}
        number = 1 + sum(entry["count"] for entry in index.values())
        out = root / f"{number:03d}-{title_slug(self.title)}"
        out.mkdir(parents=True, exist_ok=False)
        if keep is not Keep.COUNT:
            self._write_evidence(out, keep)
        data = self.to_json()
        data["kept"] = keep.value
        if keep is not Keep.ALL:
            data["core"] = data["gdb"] = None
            data.pop("last_operations", None)
            data["target"] = {k: v for k, v in data.get("target", {}).items() if k != "methods"}
        if keep is Keep.COUNT:
            data = {k: data[k] for k in ("title", "key", "kind", "time", "detected_at", "notes", "kept") if k in data}
        key = crash_key(self.title)
        seen = next((entry for title, entry in index.items() if crash_key(title) == key), None)
        if seen is not None:
            data["duplicate_of"] = seen["dirs"][0]
        (out / "title.txt").write_text(self.title + "\n")
        (out / "crash.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        entry = index.setdefault(self.title, {"count": 0, "dirs": [], "key": key})
        entry["count"] += 1
        entry["dirs"].append(out.name)
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        tmp.replace(index_path)
        return out

    def _write_evidence(self, out: Path, keep: Keep) -> None:
        (out / "kernel.log").write_text("\n".join(self.kernel_lines) + ("\n" if self.kernel_lines else ""))
        (out / "target.log").write_text("\n".join(self.target_log) + ("\n" if self.target_log else ""))
        with open(out / "last-operations.jsonl", "w", encoding="utf-8") as f:
            for op in self.operations:
                f.write(json.dumps(op, default=str) + "\n")
        if keep is not Keep.ALL:
            return
        if self.backtrace_text:
            (out / "backtrace.txt").write_text(self.backtrace_text)
        if self.core_path is not None and self.core_path.exists():
            moved = out / self.core_path.name
            self.core_path.replace(moved)
            try:
                self.core_path.parent.rmdir()
            except OSError:
                pass
            self.core_path = moved
        repro = out / "repro.py"
        repro.write_text(reproducer_script(self.operations, self.title))
        repro.chmod(0o755)


CORE_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                          signal.SIGQUIT, signal.SIGSYS, signal.SIGTRAP, signal.SIGXCPU, signal.SIGXFSZ})
"""Signals whose default action dumps core (signal(7)); a target killed by another (SIGKILL) leaves none."""


def _died_by_signal(evidence: list[CrashEvidence]) -> bool:
    return any(ev.kind in {"fault", "abort"} or (ev.exit_rc is not None and ev.exit_rc < 0) for ev in evidence)


def _exit_signal(evidence: list[CrashEvidence]) -> str:
    rc = next((ev.exit_rc for ev in evidence if ev.exit_rc is not None and ev.exit_rc < 0), None)
    return signal.Signals(-rc).name if rc is not None and -rc in signal.Signals._value2member_map_ else "that signal"


def _killed_without_core(evidence: list[CrashEvidence]) -> bool:
    """Killed by a signal that dumps no core, with no fault or abort of its own: no core to wait for."""
    if any(ev.kind in {"fault", "abort"} for ev in evidence):
        return False
    rcs = [ev.exit_rc for ev in evidence if ev.exit_rc is not None and ev.exit_rc < 0]
    return bool(rcs) and all(-rc not in CORE_SIGNALS for rc in rcs)


def _main_executable(maps: list[MapEntry], binary_paths: tuple[str, ...] | list[str]) -> str | None:
    if binary_paths:
        return binary_paths[0]
    return maps[0].path if maps else None


def _merge_lines(evidence: list[CrashEvidence], attr: str) -> list[str]:
    """The longest snapshot wins: later evidence saw more of the same log."""
    best: list[str] = []
    for ev in evidence:
        lines = getattr(ev, attr)
        if len(lines) >= len(best):
            best = list(lines)
    return best
