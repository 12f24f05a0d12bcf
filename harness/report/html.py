"""report.html: one self-contained page per run directory (inline CSS, JS and SVG; nothing fetched).

It must open from a CI artefact, a mail attachment or a lab box with no network, and be valid at any moment
(a soak rewrites it every minute): everything is derived from the files in the run directory, the history is
streamed through `Timeline` (memory stays flat), and the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.history import HISTORY_NAMES
from harness.outcome import Verdict
from harness.report.backtrace import is_death_frame
from harness.report.timeline import Timeline
from harness.safe_yaml import read_yaml_file

SKIP_DIRS = frozenset({"crashes", "cores", "terraform", ".pytest_cache"})
MAX_DEPTH = 3
MAX_TABLE_ROWS = 500
MAX_GLANCE = 20
"""Crash keys drawn at a glance (the table lists every crash; a nightly has tens of keys at most)."""
GLANCE_FRAMES = 6
GLANCE_STEPS = 40
MAX_BANDS = 2000

PANEL_W, PANEL_H, LEFT, RIGHT, TOP, BOTTOM = 960, 124, 70, 20, 18, 22


def _count(n: int, noun: str) -> str:
    """'1 key', '3 keys'."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def history_sources(run_dir: Path) -> list[tuple[str, Path]]:
    """Every history file (plain or compressed) of the run: its own, and those of sub-runs (tests,
    incarnations, nodes)."""
    found: list[tuple[str, Path]] = []
    base_depth = len(run_dir.parts)
    for root, dirs, files in os.walk(run_dir):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs[:] = []
        name = next((n for n in HISTORY_NAMES if n in files), None)
        if name is not None:
            rel = here.relative_to(run_dir).as_posix()
            found.append((rel if rel != "." else ".", here / name))
    return found


def run_summaries(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """summary.json of each leaf run (a directory with a history), relative path first."""
    out = []
    for rel, hist in history_sources(run_dir):
        data = _load_json(hist.parent / "summary.json")
        if isinstance(data, dict):
            out.append((rel, data))
    return out


def crash_bundles(run_dir: Path) -> list[dict[str, Any]]:
    """crash.json of every crash directory under the run, with its path relative to the run directory."""
    out = []
    for path in sorted(run_dir.rglob("crashes/*/crash.json")):
        if len(path.relative_to(run_dir).parts) > MAX_DEPTH + 3:
            continue
        data = _load_json(path)
        if isinstance(data, dict):
            out.append({"title": data.get("title", "?"), "time": data.get("detected_at") or data.get("time"),
                        "kind": data.get("kind"), "key": data.get("key") or data.get("title", "?"),
                        "href": path.relative_to(run_dir).as_posix(),
                        "dir": path.parent.relative_to(run_dir).as_posix(),
                        "duplicate_of": data.get("duplicate_of"),
                        "minimized": (path.parent / "repro.min.py").exists(),
                        **_glance_fields(data)})
    out.sort(key=lambda c: c.get("time") or 0)
    return out


def _glance_fields(data: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of one crash without the 50-100 KB crash.json: fault, evidence, frames, reduction."""
    fault: dict[str, Any] = data["fault"] if isinstance(data.get("fault"), dict) else {}
    evidence = [ev for ev in data.get("evidence") or [] if isinstance(ev, dict)]
    bt: dict[str, Any] = data["backtrace"] if isinstance(data.get("backtrace"), dict) else {}
    frames = [f for f in bt.get("frames") or [] if isinstance(f, dict)]
    dying = 0
    if bt.get("signal") == "SIGABRT":  # start where the bug is, past raise/abort/__assert_fail
        while dying < len(frames) - 1 and is_death_frame(str(frames[dying].get("func"))):
            dying += 1
    minimized = data.get("minimized") if isinstance(data.get("minimized"), dict) else None
    return {
        "decoded": fault.get("decoded"),
        "evidence": [f"{ev.get('kind')}: {ev.get('summary')} ({ev.get('source')})" for ev in evidence[:3]],
        "frames": [f"#{f.get('n')} {f.get('func') or '??'}"
                   + (f" ({f.get('file')}:{f.get('line')})" if f.get("file") else
                      (f" in {f.get('lib')}" if f.get("lib") else ""))
                   for f in frames[dying:dying + GLANCE_FRAMES]],
        "frames_total": len(frames), "frames_skipped": dying,
        "min": {k: minimized.get(k) for k in ("reproduced", "ops_before", "ops_after", "steps", "stop_reason")}
               | {"rate": (minimized.get("rate") or {}).get("text") if isinstance(minimized.get("rate"), dict)
                  else None} if minimized else None,
        "gdb": data.get("gdb"),
    }


def _head_lines(path: Path, n: int, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as f:
            text = f.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][:n]


def _brief(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def minimized_steps(path: Path, limit: int = GLANCE_STEPS) -> tuple[list[str], int]:
    """repro.min.jsonl as numbered steps (operations sent together share a step): (lines, operations)."""
    lines: list[str] = []
    groups: dict[Any, int] = {}
    count = 0
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return [], 0
    with f:
        for raw in f:
            try:
                op = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(op, dict):
                continue
            count += 1
            if len(lines) >= limit:
                continue
            step = groups.setdefault(op.get("group", count), len(groups) + 1)
            params: dict[str, Any] = op["params"] if isinstance(op.get("params"), dict) else {}
            args = " ".join(f"{k}={_brief(v)}" for k, v in params.items())
            if "error" in op:
                err = op["error"] if isinstance(op["error"], dict) else {}
                got = "error " + _brief(err.get("errno") or err.get("message") or err, 60)
            else:
                got = _brief(op.get("result"))
            lines.append(f"{step:>3}  {op.get('method')} {args}  -> {got}")
    return lines, count


def crash_glance(run_dir: Path, crashes: list[dict[str, Any]]) -> str:
    """One block per crash key (its first bundle): title, count, decoded fault, the kernel line, the top frames
    of the backtrace and the minimized steps; a developer triages from here without opening JSON."""
    counts: dict[str, int] = {}
    first: dict[str, dict[str, Any]] = {}
    for c in crashes:
        counts[c["key"]] = counts.get(c["key"], 0) + 1
        first.setdefault(c["key"], c)
    blocks = []
    for key, c in list(first.items())[:MAX_GLANCE]:
        bundle = run_dir / c["dir"]
        rows: list[tuple[str, str]] = []
        if c.get("decoded"):
            rows.append(("fault", _e(c["decoded"])))
        kernel = _head_lines(bundle / "kernel.log", 2) if c.get("decoded") else []  # the target's own fault line
        if kernel:
            rows.append(("kernel log", "<br>".join(f"<code>{_e(ln)}</code>" for ln in kernel)))
        elif c.get("evidence"):
            rows.append(("evidence", "<br>".join(_e(ev) for ev in c["evidence"])))
        if c.get("frames"):
            more = c["frames_total"] - len(c["frames"]) - c["frames_skipped"]
            skipped = (f'<span class="skipped">{c["frames_skipped"]} frames of abort() above</span><br>'
                       if c["frames_skipped"] else "")
            rows.append(("backtrace", skipped + "<br>".join(f"<code>{_e(fr)}</code>" for fr in c["frames"])
                         + (f'<br><a href="{_e(c["dir"])}/backtrace.txt">{more} more frames, all threads</a>'
                            if more > 0 else "")))
        m = c.get("min")
        if m:
            head = (f"{m.get('ops_before')} operations before the crash \u2192 {m.get('ops_after')}, "
                    f"{m.get('steps')} steps; reproduced {m.get('rate') or 'no'}" if m.get("reproduced") else
                    f"not reproduced on replay: {m.get('stop_reason')}")
            steps, total = minimized_steps(bundle / "repro.min.jsonl") if m.get("reproduced") else ([], 0)
            body = (f'<pre class="steps">{_e(chr(10).join(steps))}'
                    f'{_e(chr(10) + f"... {total - len(steps)} more in repro.min.jsonl") if total > len(steps) else ""}'
                    "</pre>" if steps else "")
            rows.append(("minimized", _e(head) + body))
        else:
            rows.append(("minimized", "not minimized (" + ("a repeat of this key" if c.get("duplicate_of") else
                                                           "minimize off, or still running") + ")"))
        if c.get("gdb"):
            rows.append(("core", f"<code>{_e(c['gdb'])}</code>"))
        files = "".join(f' <a href="{_e(c["dir"])}/{name}">{name}</a>'
                        for name in ("crash.json", "repro.min.py", "repro.py", "target.log", "kernel.log")
                        if (bundle / name).exists())
        rows.append(("files", files))
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        blocks.append(f'<div class="glance" data-key="{_e(key)}"><h3>{_e(c["title"])} '
                      f'<span class="count">\u00d7{counts[key]}</span></h3><table>{table}</table></div>')
    if len(first) > MAX_GLANCE:
        blocks.append(f"<p>{len(first) - MAX_GLANCE} more crash keys: see the table below and "
                      "<code>lvol-storm triage</code>.</p>")
    return "".join(blocks) or '<p class="empty glance-empty">No crashes.</p>'


def pause_bands(sources: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    """Every lane held (quiesce points, lvstore-wide calls), from each leaf run's storm.json."""
    bands: list[dict[str, Any]] = []
    for _rel, hist in sources:
        storm = _load_json(hist.parent / "storm.json")
        for pause in (storm.get("pauses") or []) if isinstance(storm, dict) else []:
            if isinstance(pause, list) and len(pause) == 2 and len(bands) < MAX_BANDS:
                bands.append({"t0": pause[0], "t1": pause[1], "kind": "pause",
                              "label": f"lanes paused {1000 * (pause[1] - pause[0]):.0f} ms (quiesce check)"})
    return bands


def down_bands(timeline: Timeline, crashes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From each crash to the first operation of the next incarnation beside it: the target was down."""
    starts: dict[tuple[str, ...], list[float]] = {}
    for rel, src in timeline.sources.items():
        if src.first_t is not None:
            starts.setdefault(Path(rel).parts[:-1], []).append(src.first_t)  # rel: the leaf run's dir
    bands: list[dict[str, Any]] = []
    for c in crashes:
        if c.get("time") is None:
            continue
        t = float(c["time"])
        later = [s for s in starts.get(Path(c["dir"]).parts[:-3], []) if s > t]
        if later and len(bands) < MAX_BANDS:
            bands.append({"t0": t, "t1": min(later), "kind": "down",
                          "label": f"target down {min(later) - t:.1f} s after {c['title']}"})
    return bands


def method_rows(timeline: Timeline) -> list[list[str]]:
    """Calls, rate, latency and errors per method (what Jepsen plots per operation type)."""
    rows = []
    for method, stats in sorted(timeline.per_method.items(), key=lambda kv: -kv[1].calls):
        d = stats.to_dict()
        top = ", ".join(f"{k} {n}" for k, n in sorted(d["errnos"].items(), key=lambda kv: -kv[1])[:3])
        rows.append([_td(method), _td(d["calls"], num=True), _td(d["calls_per_s"] or "-", num=True),
                     _td(d["p50_ms"] if d["p50_ms"] is not None else "-", num=True),
                     _td(d["p99_ms"] if d["p99_ms"] is not None else "-", num=True),
                     _td(d["errors"], num=True), _td(top)])
    return rows


def collect_findings(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    leaves = run_summaries(run_dir)
    findings: list[dict[str, Any]] = []
    for rel, data in leaves:
        for f in data.get("findings") or []:
            if isinstance(f, dict):
                findings.append({**f, "run": rel})
    if not leaves:
        findings = [f for f in summary.get("findings") or [] if isinstance(f, dict)]
    return findings


def reproducer_commands(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    """How to run this again: the same seed and profile, and a replay of the recorded operations."""
    if summary.get("reproducer"):
        given = summary["reproducer"]
        return list(given) if isinstance(given, list) else [str(given)]
    cfg = summary.get("config")
    if not isinstance(cfg, dict):
        loaded = None
        with contextlib.suppress(ConfigError):  # a page without the command beats no page
            loaded = read_yaml_file(run_dir / "config.yaml", "run's config.yaml")
        cfg = loaded if isinstance(loaded, dict) else {}
    target = cfg.get("target") or {}
    storm = cfg.get("storm") or {}
    argv = ["lvol-storm", "run", "--profile", str(cfg.get("profile") or summary.get("profile") or "default")]
    if target.get("kind"):
        argv += ["--target", str(target["kind"])]
    if target.get("sim_fault"):
        argv += ["--sim-fault", str(target["sim_fault"])]
    seed = storm.get("seed", summary.get("seed"))
    if seed is not None:
        argv += ["--seed", str(seed)]
    if storm.get("duration") is not None:
        argv += ["--duration", f"{storm['duration']:g}s" if isinstance(storm["duration"], int | float)
                 else str(storm["duration"])]
    strategies = storm.get("strategies")
    if isinstance(strategies, dict) and strategies:
        argv += ["--set", "storm.strategies=[" + ",".join(strategies) + "]"]
    cmds = [shlex.join(argv)]
    for _rel, hist in history_sources(run_dir):
        replay = ["lvol-storm", "replay", str(hist), "--target", str(target.get("kind") or "auto")]
        if target.get("sim_fault"):
            replay += ["--sim-fault", str(target["sim_fault"])]
        cmds.append(shlex.join(replay))
        if len(cmds) > 4:
            break
    return cmds


# -- SVG ------------------------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    if abs(v) < 0.01:
        return f"{v:.0e}"
    return f"{v:g}"


def _panel(title: str, series: list[tuple[str, str, list[tuple[float, float | None]]]], t0: float, t1: float,
           markers: list[dict[str, Any]], log_y: bool = False, unit: str = "",
           bands: list[dict[str, Any]] | None = None) -> str:
    """One chart: shaded bands (lanes paused, target down) under polylines for each (name, colour, points),
    a y axis, and vertical crash/finding markers."""
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
    values = [v for _, _, pts in series for _, v in pts if v is not None and (v > 0 or not log_y)]
    lo = 0.0
    hi = max(values) if values else 1.0
    if log_y and values:
        lo, hi = math.log10(min(values)), math.log10(hi)
        if hi - lo < 1:
            lo, hi = lo - 0.5, hi + 0.5
    if hi <= lo:
        hi = lo + 1.0
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return LEFT + (t - t0) / span * w

    def y(v: float) -> float:
        vv = math.log10(v) if log_y else v
        return TOP + h - (vv - lo) / (hi - lo) * h

    parts = [f'<svg class="panel" data-panel="{_e(title)}" viewBox="0 0 {PANEL_W} {PANEL_H}" '
             f'width="{PANEL_W}" height="{PANEL_H}" xmlns="http://www.w3.org/2000/svg" role="img">',
             f'<text x="{LEFT}" y="12" class="ptitle">{_e(title)}</text>',
             f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" class="frame"/>']
    for b in bands or []:
        bx0, bx1 = max(LEFT, x(float(b["t0"]))), min(LEFT + w, x(float(b["t1"])))
        if bx1 >= LEFT and bx0 <= LEFT + w:
            parts.append(f'<rect class="band {b["kind"]}" x="{bx0:.1f}" y="{TOP}" width="{max(bx1 - bx0, 1.0):.1f}" '
                         f'height="{h}"><title>{_e(b["label"])}</title></rect>')
    ticks = ([10 ** k for k in range(math.ceil(lo), math.floor(hi) + 1)] if log_y else _ticks(lo, hi))
    for tv in ticks:
        yy = y(tv)
        if TOP - 0.5 <= yy <= TOP + h + 0.5:
            parts.append(f'<line x1="{LEFT}" x2="{LEFT + w}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>'
                         f'<text x="{LEFT - 4}" y="{yy + 3:.1f}" class="ytick">{_e(_fmt(tv))}{_e(unit)}</text>')
    for _, colour, pts in series:
        runs: list[list[str]] = [[]]
        for t, v in pts:
            if v is None or (log_y and v <= 0):
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}" class="pt"/>')
            elif run:
                parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" '
                             f'data-n="{len(run)}" points="{" ".join(run)}"/>')
    for m in markers:
        if m.get("t") is None:
            continue
        mx = x(float(m["t"]))
        if LEFT <= mx <= LEFT + w:
            parts.append(f'<line class="marker {m["kind"]}" x1="{mx:.1f}" x2="{mx:.1f}" y1="{TOP}" '
                         f'y2="{TOP + h}"><title>{_e(m["label"])}</title></line>')
    legend_x = LEFT + w - 8
    for name, colour, _ in reversed(series):
        parts.append(f'<text x="{legend_x}" y="12" text-anchor="end" fill="{colour}" '
                     f'class="legend">{_e(name)}</text>')
        legend_x -= 8 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


ERRNO_COLOURS = ("#c05621", "#b7791f", "#805ad5", "#d53f8c", "#718096")
MAX_ERRNO_SERIES = 4
"""The most frequent errnos get a line each; the rest are summed as "other"."""


Series = list[tuple[str, str, list[tuple[float, float | None]]]]


def errno_series(points: list[dict[str, Any]], width_s: float) -> Series:
    """Errors per second by errno, one series per frequent errno (the run's whole error mix over time)."""
    totals: dict[str, int] = {}
    for p in points:
        for name, n in (p.get("errnos") or {}).items():
            totals[name] = totals.get(name, 0) + n
    top = sorted(totals, key=lambda k: -totals[k])[:MAX_ERRNO_SERIES]
    out = []
    for i, name in enumerate(top):
        out.append((name, ERRNO_COLOURS[i], [(p["t"] + width_s / 2, (p.get("errnos") or {}).get(name, 0) / width_s)
                                             for p in points]))
    if len(totals) > len(top):
        out.append(("other", ERRNO_COLOURS[-1], [
            (p["t"] + width_s / 2, sum(n for k, n in (p.get("errnos") or {}).items() if k not in top) / width_s)
            for p in points]))
    return out


def timeline_svg(points: list[dict[str, Any]], markers: list[dict[str, Any]], width_s: float,
                 bands: list[dict[str, Any]] | None = None) -> str:
    if not points:
        return '<p class="empty">No operations recorded (history.jsonl is empty or missing).</p>'
    t0, t1 = points[0]["t"], points[-1]["t"] + width_s
    late = [float(m["t"]) for m in markers if m.get("t") is not None and t1 < float(m["t"]) <= t1 + 60.0]
    t1 = max([t1, *late])  # a crash detected just after the last reply still gets its marker
    mid = [(p["t"] + width_s / 2, p) for p in points]

    def col(key: str) -> list[tuple[float, float | None]]:
        return [(t, p[key]) for t, p in mid]

    errnos = errno_series(points, width_s)
    panels = [
        _panel("operations/s", [("ops/s", "#2b6cb0", col("ops_per_s")), ("errors/s", "#c05621",
               [(t, p["errors"] / width_s) for t, p in mid])], t0, t1, markers, bands=bands),
        _panel("errors/s by errno", errnos or [("no errors", "#718096", [(t, 0.0) for t, _ in mid])],
               t0, t1, markers, bands=bands),
        _panel("RPC latency", [("p50", "#2f855a", col("p50_ms")), ("p99", "#9b2c2c", col("p99_ms"))],
               t0, t1, markers, log_y=True, unit=" ms", bands=bands),
        _panel("live lvols", [("lvols + snapshots + clones", "#6b46c1", col("live_lvols"))], t0, t1, markers,
               bands=bands),
        _panel("free clusters", [("free clusters", "#2c7a7b", col("free_clusters"))], t0, t1, markers,
               bands=bands),
    ]
    axis = [f'<svg class="axis" viewBox="0 0 {PANEL_W} 18" width="{PANEL_W}" height="18" '
            'xmlns="http://www.w3.org/2000/svg">']
    for tv in _ticks(0.0, t1 - t0, 8):
        xx = LEFT + tv / max(t1 - t0, 1e-9) * (PANEL_W - LEFT - RIGHT)
        axis.append(f'<text x="{xx:.1f}" y="12" text-anchor="middle" class="xtick">+{_e(_dur(tv))}</text>')
    axis.append("</svg>")
    return "\n".join(panels) + "".join(axis)


def _dur(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{round(seconds / 60, 1):g}m"
    return f"{round(seconds / 3600, 1):g}h"


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t))) + " UTC"
    except (TypeError, ValueError):
        return "-"


# -- the page -------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a202c;max-width:1000px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;width:100%;font-size:13px} td,th{border-bottom:1px solid #edf2f7;padding:3px 6px;
text-align:left;vertical-align:top} th{background:#f7fafc} td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.v-clean{background:#2f855a}.v-findings{background:#c05621}.v-crash{background:#9b2c2c}.v-running{background:#2b6cb0}
.v-error{background:#9b2c2c}.v-interrupted{background:#718096}.v-nothing-ran{background:#718096}
.banner{background:#fefcbf;border:1px solid #ecc94b;padding:6px 10px;margin:8px 0}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;background:#f7fafc} pre{padding:8px;overflow:auto}
svg.panel{display:block} .ptitle{font-size:11px;font-weight:600;fill:#4a5568}
.frame{fill:none;stroke:#cbd5e0} .grid{stroke:#edf2f7} .ytick,.xtick{font-size:10px;fill:#718096}
.ytick{text-anchor:end} .legend{font-size:11px}
.marker{stroke-width:2;stroke-dasharray:3 2} .marker.crash{stroke:#e53e3e} .marker.finding{stroke:#dd6b20}
#readout{font:12px ui-monospace,monospace;min-height:1.4em;color:#2d3748}
.band.pause{fill:#bee3f8;opacity:.55}.band.down{fill:#fed7d7;opacity:.8}
.swatch{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px}.swatch.pause{background:#bee3f8}
.swatch.down{background:#fed7d7} .legend-bands{font-size:12px;color:#4a5568;margin:2px 0}
.glance{border:1px solid #e2e8f0;border-left:4px solid #9b2c2c;padding:4px 10px;margin:8px 0}
.glance h3{font-size:14px;margin:4px 0} .glance th{width:90px;background:none;color:#718096;font-weight:500}
.glance .count{color:#9b2c2c} .skipped{color:#a0aec0;font-size:12px} pre.steps{margin:4px 0;max-height:320px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0} dt{color:#718096}
"""

_JS = """
(function(){
  var el=document.getElementById('timeline-data'); if(!el){return;}
  var data=JSON.parse(el.textContent); var pts=data.points||[]; var out=document.getElementById('readout');
  if(!pts.length||!out){return;}
  var L=%(left)d, W=%(w)d, t0=pts[0].t, t1=pts[pts.length-1].t+data.width_s;
  document.querySelectorAll('svg.panel').forEach(function(svg){
    svg.addEventListener('mousemove',function(ev){
      var r=svg.getBoundingClientRect(); var x=(ev.clientX-r.left)*(svg.viewBox.baseVal.width/r.width);
      var t=t0+(x-L)/W*(t1-t0); var i=Math.max(0,Math.min(pts.length-1,Math.floor((t-t0)/data.width_s)));
      var p=pts[i];
      out.textContent='+'+Math.round(p.t-t0)+'s  ops/s '+p.ops_per_s+'  errors '+p.errors+'  p50 '+
        (p.p50_ms===null?'-':p.p50_ms+' ms')+'  p99 '+(p.p99_ms===null?'-':p.p99_ms+' ms')+'  live lvols '+
        (p.live_lvols===null?'-':p.live_lvols)+'  free clusters '+(p.free_clusters===null?'-':p.free_clusters);
    });
  });
  document.body.setAttribute('data-timeline-ready', String(pts.length));
})();
"""


def _table(headers: list[str], rows: list[list[str]], cls: str, empty: str) -> str:
    if not rows:
        return f'<p class="empty {cls}-empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{cls}-row">' + "".join(rows[i]) + "</tr>" for i in range(len(rows)))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: Any, num: bool = False) -> str:
    return f'<td class="n">{_e(value)}</td>' if num else f"<td>{_e(value)}</td>"


VERDICTS = frozenset(v.value for v in Verdict)


def _verdict(summary: dict[str, Any], crashes: list[dict[str, Any]], findings: list[dict[str, Any]]) -> str:
    """The summary's own verdict (harness.outcome: the one the exit status and the JUnit result follow); a page
    drawn before a summary exists judges from the bundles on disk."""
    if summary.get("running"):
        return "running"
    if summary.get("verdict") in VERDICTS:
        return str(summary["verdict"])
    if crashes or summary.get("crashes"):
        return "crash"
    return "findings" if findings else "clean"


def _judgement(summary: dict[str, Any]) -> str:
    """A suite's pass/fail beside the verdict, when its rules differ from the verdict's (known issues)."""
    if summary.get("running") or "passed" not in summary or summary.get("kind") not in ("long-run", "suite"):
        return ""
    passed = bool(summary["passed"])
    css, text = ("clean", "passed") if passed else ("crash", "failed")
    return f' <span class="verdict v-{css}" id="judgement">{text}</span>'


def render_report(run_dir: Path, timeline: Timeline | None = None, *, live: bool = False) -> str:
    """The page as a string; `timeline` may be a long-lived one fed incrementally (soak)."""
    summary = _load_json(run_dir / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    if timeline is None:
        timeline = Timeline()
    sources = history_sources(run_dir)
    for rel, path in sources:
        timeline.feed_file(path, source=rel)
    points = timeline.points()
    crashes = crash_bundles(run_dir)
    findings = collect_findings(run_dir, summary)
    markers = ([{"t": c["time"], "kind": "crash", "label": f"crash: {c['title']}"} for c in crashes]
               + [{"t": f.get("t"), "kind": "finding", "label": f"{f.get('kind')}: {f.get('message')}"}
                  for f in findings[:MAX_TABLE_ROWS]])
    bands = pause_bands(sources) + down_bands(timeline, crashes)
    verdict = _verdict(summary, crashes, findings)
    css_verdict = verdict.replace(" ", "-")
    target = summary.get("target") or {}
    title = f"lvol-storm {summary.get('suite') or summary.get('profile') or 'run'}: {run_dir.name}"

    facts: list[tuple[str, Any]] = [
        ("run directory", run_dir),
        ("suite", summary.get("suite")),
        ("profile", summary.get("profile")),
        ("seed", summary.get("seed")),
        ("harness", summary.get("harness_version")),
        ("target", " ".join(str(target.get(k)) for k in ("kind", "version") if target.get(k))),
        ("kernel log", summary.get("kernel_log")),
        ("wall time", f"{summary['wall_s']:.1f} s" if isinstance(summary.get("wall_s"), int | float) else None),
        ("operations", timeline.records),
        ("span", f"{_when(timeline.span[0])} .. {_when(timeline.span[1])}" if timeline.span else None),
        ("incarnations", summary.get("incarnations")),
        ("generated", _when(time.time())),
    ]
    fact_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, ""))

    crash_counts: dict[str, int] = {}
    for c in crashes:
        crash_counts[c["title"]] = crash_counts.get(c["title"], 0) + 1
    crash_rows = [[_td(c["title"]), _td(crash_counts[c["title"]], num=True), _td(_when(c["time"])),
                   f'<td><a class="bundle" href="{_e(c["href"])}">{_e(c["dir"])}</a></td>']
                  for c in crashes[:MAX_TABLE_ROWS]]
    finding_rows = [[_td(f.get("kind")), _td(f.get("message")), _td(_when(f.get("t"))),
                     _td((f.get("op") or {}).get("method", "") if isinstance(f.get("op"), dict) else ""),
                     _td(f.get("run", ""))] for f in findings[:MAX_TABLE_ROWS]]
    op_rows = method_rows(timeline)
    errs = summary.get("errors_by_errno") or {}
    err_rows = [[_td(k), _td(n, num=True)] for k, n in sorted(errs.items(), key=lambda kv: -kv[1])]
    breakdown = summary.get("breakdown") or []
    breakdown_rows = [[_td(b.get("name")), _td(b.get("node", "")), _td(b.get("outcome", "")),
                       _td(b.get("ops", 0), num=True), _td(len(b.get("findings") or []), num=True),
                       _td("; ".join(f"{c['title']} x{c['count']}" for c in b.get("crashes") or []))]
                      for b in breakdown if isinstance(b, dict)]
    nodes: dict[str, Any] = summary["nodes"] if isinstance(summary.get("nodes"), dict) else {}
    node_rows = [[_td(name), _td(v.get("tests", 0), num=True), _td(v.get("failed", 0), num=True),
                  _td(v.get("ops", 0), num=True), _td(v.get("crashes", 0), num=True)]
                 for name, v in sorted(nodes.items()) if isinstance(v, dict)]
    repro = reproducer_commands(run_dir, summary)
    crash_repro = [f"python3 {c['dir']}/{'repro.min.py' if c.get('minimized') else 'repro.py'} /var/tmp/spdk.sock"
                   f"   # {c['title']}" for c in crashes[:5] if not c.get("duplicate_of")]
    notes = summary.get("notes") or []

    data = {"points": points, "width_s": timeline.width, "markers": markers}
    data_json = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    js = _JS % {"left": LEFT, "w": PANEL_W - LEFT - RIGHT}
    banner = (f'<div class="banner">{_e("REFERENCE TARGET (spdk-sim): not a real spdk_tgt")}</div>'
              if target.get("reference_target") or target.get("kind") == "sim" else "")
    refresh = '<meta http-equiv="refresh" content="60">' if live else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'; img-src data:">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body data-verdict="{verdict}">
<h1>{_e(title)} <span class="verdict v-{css_verdict}" id="verdict">{_e(verdict)}</span>{_judgement(summary)}</h1>
{banner}
<dl id="facts">{fact_html}</dl>
<h2>Timeline</h2>
<div id="timeline">{timeline_svg(points, markers, timeline.width, bands)}</div>
<div id="readout"></div>
<p class="legend-bands"><span class="swatch pause"></span> lanes paused (quiesce check)
<span class="swatch down"></span> target down (crash to restart)</p>
<h2>Crashes at a glance ({_count(len({c["key"] for c in crashes}), "key")})</h2>
<div id="glance">{crash_glance(run_dir, crashes)}</div>
<h2>Crashes ({len(crashes)})</h2>
{_table(["title", "count", "time", "bundle"], crash_rows, "crashes", "No crashes.")}
<h2>Findings ({len(findings)})</h2>
{_table(["kind", "message", "time", "operation", "run"], finding_rows, "findings", "No findings.")}
{"<h2>Nodes</h2>" + _table(["node", "tests", "failed", "ops", "crashes"], node_rows, "nodes", "")
 if len(node_rows) > 1 else ""}
{"<h2>Breakdown</h2>" + _table(["run", "node", "outcome", "ops", "findings", "crashes"], breakdown_rows,
                                "breakdown", "") if breakdown_rows else ""}
<h2>Reproduce</h2>
<pre id="reproducer">{_e(chr(10).join(repro + crash_repro))}</pre>
<h2>Operations by method</h2>
{_table(["method", "calls", "calls/s", "p50 ms", "p99 ms", "errors", "top errnos"], op_rows, "ops",
        "No operations.")}
<h2>Errors by errno</h2>
{_table(["errno", "count"], err_rows, "errors", "No errors.")}
{"<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>" if notes else ""}
<script type="application/json" id="timeline-data">{data_json}</script>
<script>{js}</script>
</body></html>
"""


def write_report_html(run_dir: str | os.PathLike[str], timeline: Timeline | None = None, *,
                      live: bool = False) -> Path:
    """Write `run_dir/report.html` atomically (a reader never sees half a page) and return its path."""
    path = Path(run_dir).absolute()
    page = render_report(path, timeline, live=live)
    dest = path / "report.html"
    tmp = path / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, dest)
    return dest
