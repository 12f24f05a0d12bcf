"""The effective configuration of a run: a profile YAML, then CLI flags, then `--set a.b=c` overrides.

Every mistake becomes one ConfigError line: `profiles/x.yaml: storm.workers: must be >= 1, got 0`.
Each section's schema lives with its concept (target, bdev, storm); this module only composes and loads them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.bdev import BdevConfig, LvstoreConfig
from harness.crash_budget import EvidenceConfig
from harness.errors import ConfigError, shown
from harness.io.config import IoConfig
from harness.minimize.config import MinimizeConfig
from harness.safe_yaml import load_yaml, read_yaml_file
from harness.steering import SteeringConfig
from harness.storm.config import StormConfig
from harness.target import TargetConfig
from harness.watch.config import WatchConfig

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
"""The built-in profiles: package data, so an installed wheel has them too."""
MESSAGE_MAX = 300
"""A section's own validator writes the user's value into its message: at most this much of it is shown."""


class HistoryConfig(BaseModel):
    """How the run's full history is kept on disk (memory keeps a bounded tail either way)."""

    model_config = ConfigDict(extra="forbid")

    compress: Literal["none", "zstd"] = "none"
    """zstd: history.jsonl.zst, about 11x smaller (a storm at full rate writes ~12 GB an hour plain);
    read it with `zstdcat`, replay and minimize read it as is."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = "default"
    target: TargetConfig = Field(default_factory=TargetConfig)
    bdev: BdevConfig = Field(default_factory=BdevConfig)
    lvstore: LvstoreConfig = Field(default_factory=LvstoreConfig)
    storm: StormConfig = Field(default_factory=StormConfig)
    io: IoConfig = Field(default_factory=IoConfig)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    minimize: MinimizeConfig = Field(default_factory=MinimizeConfig)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    steer: SteeringConfig = Field(default_factory=SteeringConfig)

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation(source: str, exc: ValidationError, data: dict[str, Any]) -> ConfigError:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: {path}: unknown field (check its spelling; see profiles/smoke.yaml)")
            continue
        if err["type"] == "value_error":
            # Our own validators say "field: what is wrong, got X"; fold the field into the path.
            m = re.match(r"^([\w.\[\]-]+): (.*)$", msg, re.S)
            if m:
                field = m.group(1)
                if path == "(top level)":
                    path = field
                elif not (path == field or path.endswith("." + field)):
                    path = f"{path}.{field}"
                msg = m.group(2)
            lines.append(f"{source}: {path}: {shown(msg, MESSAGE_MAX, quote=False)}")
            continue
        got_text = "" if err["type"] == "missing" else f", got {shown(err.get('input'))}"
        lines.append(f"{source}: {path}: {msg}{got_text}")
    return ConfigError(lines[0] if len(lines) == 1 else "\n".join(lines))


def profile_dirs() -> list[Path]:
    """Where profile names are looked up: the user's own `profiles/` in the current directory first (it wins),
    then the ones that come with lvol-storm."""
    own = Path.cwd() / "profiles"
    return [own, PROFILES_DIR] if own.resolve() != PROFILES_DIR.resolve() else [PROFILES_DIR]


def known_profiles() -> dict[str, Path]:
    """Every profile name and the file it names (the first directory of `profile_dirs` that has it)."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def profile_path(name_or_path: str) -> Path:
    """A profile is a file path, or a name (`smoke` -> profiles/smoke.yaml, the user's own or the built-in)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file() or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"--profile: {p} does not exist" if not p.exists() else
                              f"--profile: {p} is not a file")
        return p
    known = known_profiles()
    if name_or_path not in known:
        raise ConfigError(f"--profile: no profile named {name_or_path!r}; known: {', '.join(known) or '(none)'}")
    return known[name_or_path]


def read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path, "profile") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (target, bdev, storm, ...), got "
                          f"{type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """`storm.workers=16`: the value is parsed as YAML, so numbers, booleans and lists keep their type."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected FIELD.PATH=VALUE, e.g. storm.workers=16")
    key, _, raw = assignment.partition("=")
    value = load_yaml(raw, f"--set {shown(key.strip(), quote=False)}") if raw.strip() else ""
    if isinstance(value, int | float) and not isinstance(value, bool) and ":" in raw:
        value = raw.strip()  # YAML 1.1 reads 0000:00:04.0 (a PCI address) as a base-60 number: 4.0
    set_path(data, key.strip(), value)


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    profile: str | None = None,
    overrides: list[str] | None = None,
    cli: dict[str, Any] | None = None,
) -> RunConfig:
    """Profile, then CLI flags (a dotted-path mapping), then `--set` overrides; validated once, at the end."""
    data: dict[str, Any] = {}
    source = "defaults"
    if profile:
        path = profile_path(profile)
        data = read_yaml(path)
        data.setdefault("profile", path.stem)
        source = str(path)
    for key, value in (cli or {}).items():
        if value is not None:
            set_path(data, key, value)
    for assignment in overrides or []:
        apply_override(data, assignment)
        source = f"{source} + --set" if "--set" not in source else source
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(source, exc, data) from exc
