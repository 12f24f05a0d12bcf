"""Where the data recorded from real spdk_tgt builds lives (transcripts, kernel lines, logs, backtraces).

The checkout sits beside `shared/` (CI clones the repo next to a copy of it), so look there first;
`LVOL_STORM_RECORDINGS` points elsewhere. Conformance tests must not pass by finding nothing: a missing
folder is an error that says where we looked.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def candidates() -> list[Path]:
    env = os.environ.get("LVOL_STORM_RECORDINGS")
    out = [Path(env)] if env else []
    return [*out, REPO.parent / "shared" / "spdk", Path("/work/shared/spdk")]


def recordings_dir() -> Path:
    """The folder holding transcripts/, kernel-log/, target-log/, backtraces/."""
    for path in candidates():
        if (path / "transcripts").is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates())
    raise ConfigError(f"recordings from real spdk_tgt not found; looked at {looked}: "
                      "set LVOL_STORM_RECORDINGS to the folder that holds transcripts/")
