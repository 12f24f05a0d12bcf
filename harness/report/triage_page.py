"""triage.html: the bug table of `lvol-storm triage`, one page a developer reads without opening JSON."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from pathlib import Path

from harness.triage import BugRow

_CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#1a202c}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #e2e8f0;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f7fafc}
td.n{text-align:right}.h-new{color:#9b2c2c;font-weight:600}.h-back{color:#c05621;font-weight:600}
.h-gone{color:#718096}code{font-size:12px}"""


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else ""


def render(rows: Sequence[BugRow], runs: Sequence[Path], db: Path | None) -> str:
    e = html.escape
    body = []
    for r in rows:
        example = f'<a href="{e(str(r.example))}">{e(r.example.name)}</a>' if r.example else ""
        body.append(
            f'<tr class="bug"><td class="h-{e(r.history.replace(" ", "-"))}">{e(r.history)}</td>'
            f"<td><code>{e(r.title)}</code></td><td class='n'>{r.count}</td><td>{e(_when(r.first))}</td>"
            f"<td>{e(_when(r.last))}</td><td>{e(', '.join(sorted(r.builds)))}</td><td>{example}</td>"
            f"<td class='n'>{r.reproducer_ops if r.reproducer_ops is not None else ''}</td>"
            f"<td>{e(r.known or '')}</td></tr>")
    total = sum(r.count for r in rows)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>lvol-storm triage</title>
<style>{_CSS}</style></head><body><h1>lvol-storm triage: {len([r for r in rows if r.count])} bugs, {total} crashes</h1>
<p>runs: {e(', '.join(str(p) for p in runs))}{f"; database {e(str(db))}" if db else ""}</p>
<table id="bugs"><thead><tr><th>history</th><th>title</th><th>count</th><th>first seen</th><th>last seen</th>
<th>builds</th><th>example</th><th>reproducer ops</th><th>known</th></tr></thead><tbody>{"".join(body)}</tbody></table>
</body></html>
"""


def write(path: Path, rows: Sequence[BugRow], runs: Sequence[Path], db: Path | None) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(rows, runs, db), encoding="utf-8")
    os.replace(tmp, path)
    return path
