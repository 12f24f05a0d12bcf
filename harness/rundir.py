"""The run directory: where every artefact of a run lands, so nothing is lost when the run ends badly.

Layout: config.yaml, target.log, history.jsonl (or .jsonl.zst), summary.json, crashes/<slug>/ (one per crash title).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.history import HISTORY_NAMES, history_in
from harness.target import AF_UNIX_PATH_MAX


def default_run_dir(profile: str, base: str | os.PathLike[str] = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / f"{stamp}-{profile}"
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{profile}-{n}"
    return path


def make_writable_dir(path: Path, what: str) -> None:
    """Make `path` (and its parents) and prove it takes a file, or say in one line why not: a run that finds
    out at its first write has started a target for nothing."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} is a file, not a directory: give a directory (it is made if missing)")
    probe = path / f".lvol-storm-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{what}: {path}: cannot write there ({exc.strerror or exc}): give a directory you "
                          "can write to") from None


class RunDir:
    """Paths of one run's artefacts, and atomic writes for the files a reader may open mid-run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        make_writable_dir(self.path, "--run-dir")
        sock = self.path / "spdk.sock"
        if len(str(sock).encode()) > AF_UNIX_PATH_MAX:
            raise ConfigError(
                f"--run-dir: {self.path} makes the RPC socket path {len(str(sock).encode())} bytes, over the "
                f"AF_UNIX limit of {AF_UNIX_PATH_MAX}: choose a shorter --run-dir"
            )

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history(self) -> Path:
        """The history this run wrote (plain or compressed); `history.jsonl` before it has one."""
        return history_in(self.path) or self.path / HISTORY_NAMES[0]

    def history_for(self, compress: str) -> Path:
        """Where a run that compresses its history (`history.compress`) writes it."""
        return self.path / HISTORY_NAMES[1 if compress == "zstd" else 0]

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def target_log(self) -> Path:
        return self.path / "target.log"

    @property
    def crashes(self) -> Path:
        return self.path / "crashes"

    def write_json(self, name: str, data: Any) -> Path:
        """Write via a temporary file and rename, so a reader (or a power cut) never sees half a file."""
        dest = self.path / name
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, dest)
        return dest

    def __str__(self) -> str:
        return str(self.path)
