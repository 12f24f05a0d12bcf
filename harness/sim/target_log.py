"""The reference target's log, in SPDK's layouts: the timestamp prefix, `file.c:LINE:func: *LEVEL*: message`,
and the start-up lines (with a banner saying loudly what this target is)."""

from __future__ import annotations

import re
import time
from datetime import datetime

SPDK_VERSION_LINE = "SPDK v24.09.1-pre git sha1 1975133e9 / DPDK 22.11.11"
BANNER = (
    "*** lvol-storm REFERENCE TARGET (spdk-sim): a Python model of spdk_tgt serving SPDK's JSON-RPC, "
    "NOT spdk_tgt; its crashes are simulated faults ***"
)

_STAMPED = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\] ")


def spdk_log_line(text: str, now: float | None = None) -> str:
    """`[YYYY-MM-DD HH:MM:SS.ffffff] text`, SPDK's log prefix (local time); stamped lines pass unchanged."""
    if _STAMPED.match(text):
        return text
    stamp = datetime.fromtimestamp(time.time() if now is None else now).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"[{stamp}] {text}"


def spdk_log_text(file: str, line: int, func: str, level: str, message: str) -> str:
    """`file.c:LINE:func: *LEVEL*: message`, SPDK's SPDK_ERRLOG/NOTICELOG layout (line right-aligned to 4)."""
    return f"{file}:{line:4d}:{func}: *{level}*: {message}"


def startup_lines(cpumask: str, argv: list[str], pid: int) -> list[str]:
    """SPDK's start-up lines (spdk_app_start), with the banner saying loudly what this target is."""
    cores = cpumask_cores(cpumask) or [0]
    eal = " ".join(
        ["spdk_tgt", "--no-shconf", f"-c {cpumask}", *[a for a in argv if a in ("--no-pci", "--no-huge")],
         "--huge-unlink", "--log-level=lib.eal:6", "--iova-mode=pa", f"--file-prefix=spdk_pid{pid}"]
    )
    return [
        f"Starting {SPDK_VERSION_LINE} initialization...",
        f"[ DPDK EAL parameters: {eal} ]",
        BANNER,
        spdk_log_text("app.c", 917, "spdk_app_start", "NOTICE", f"Total cores available: {len(cores)}"),
    ]


def cpumask_cores(mask: str) -> list[int] | None:
    """Cores named by an SPDK core mask (`0x3`, `3`, `[0,1]`, `[0-3]`), or None if it is not one."""
    text = mask.strip()
    try:
        if text.startswith("[") and text.endswith("]"):
            cores: set[int] = set()
            for part in filter(None, (p.strip() for p in text[1:-1].split(","))):
                low, _, high = part.partition("-")
                cores.update(range(int(low), int(high or low) + 1))
            return sorted(cores) or None
        value = int(text, 16)
    except ValueError:
        return None
    return [bit for bit in range(value.bit_length()) if value >> bit & 1] or None
