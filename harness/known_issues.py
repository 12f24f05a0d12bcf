"""Known issues: crashes and findings we already know about, and what a long run does when it meets one again.

A nightly or a soak must not stop at the first known bug, and must not let a known bug hide a new one, so each
entry names a policy: `fail` (the default: the run fails), `xfail` (record it, restart the target on a fresh
lvstore, go on, do not fail the run), `avoid` (stop issuing the operation pattern that triggers it: the
strategies and mix methods it names are dropped). The regression suite never consults this file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import ConfigError, shown
from harness.report.title import crash_key
from harness.safe_yaml import read_yaml_file
from harness.storm.operations import KNOWN_METHODS
from harness.storm.strategies import STRATEGIES

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "known-issues.yaml"
Policy = Literal["fail", "xfail", "avoid"]
POLICIES: tuple[str, ...] = ("fail", "xfail", "avoid")


@dataclass(frozen=True)
class KnownIssue:
    """One entry: a regex on crash titles or finding kinds/messages, a link, a policy."""

    id: str
    link: str
    policy: Policy = "fail"
    crash: re.Pattern[str] | None = None
    finding: re.Pattern[str] | None = None
    avoid_strategies: tuple[str, ...] = ()
    avoid_methods: tuple[str, ...] = ()
    note: str = ""

    def matches_crash(self, title: str) -> bool:
        """The regex finds the title, or its key (a pattern written for one build's line numbers, or for
        none, matches every build's title of the same bug)."""
        return self.crash is not None and (self.crash.search(title) is not None
                                           or self.crash.search(crash_key(title)) is not None)

    def matches_finding(self, finding: dict[str, Any]) -> bool:
        if self.finding is None:
            return False
        text = f"{finding.get('kind', '')}: {finding.get('message', '')}"
        return self.finding.search(text) is not None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "link": self.link, "policy": self.policy,
                "crash": self.crash.pattern if self.crash else None,
                "finding": self.finding.pattern if self.finding else None,
                "avoid": {"strategies": list(self.avoid_strategies), "methods": list(self.avoid_methods)}}


@dataclass
class KnownIssues:
    """The parsed file; lookups return the first matching entry (order in the file is priority)."""

    entries: list[KnownIssue] = field(default_factory=list)
    source: str = "(none)"

    def for_crash(self, title: str) -> KnownIssue | None:
        return next((e for e in self.entries if e.matches_crash(title)), None)

    def for_finding(self, finding: dict[str, Any]) -> KnownIssue | None:
        return next((e for e in self.entries if e.matches_finding(finding)), None)

    def avoided(self) -> tuple[set[str], set[str]]:
        """(strategies, methods) that every `avoid` entry asks a long run not to issue."""
        strategies: set[str] = set()
        methods: set[str] = set()
        for e in self.entries:
            if e.policy == "avoid":
                strategies.update(e.avoid_strategies)
                methods.update(e.avoid_methods)
        return strategies, methods

    @classmethod
    def load(cls, path: str | Path | None = None) -> KnownIssues:
        """Read and validate a known-issues YAML; a missing default file means no known issues."""
        p = Path(path) if path else DEFAULT_PATH
        if not p.exists():
            if path:
                raise ConfigError(f"--known-issues: {p} does not exist")
            return cls([], "(none)")
        data = read_yaml_file(p, "known-issues file") or {}
        raw = data.get("issues", []) if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ConfigError(f"{p}: expected `issues:` with a list of entries (see the comment at its top)")
        return cls([_entry(p, i, item) for i, item in enumerate(raw)], str(p))


def _regex(where: str, value: Any) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a regular expression (a string), got {shown(value)}")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression {shown(value)}: {exc}") from exc


def _names(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of names, got {shown(value)}")
    return tuple(value)


def _entry(path: Path, i: int, item: Any) -> KnownIssue:
    where = f"{path}: issues[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with id, link, policy and crash or finding")
    unknown = set(item) - {"id", "link", "policy", "crash", "finding", "avoid", "note"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                          "known: id, link, policy, crash, finding, avoid, note")
    ident = item.get("id") or f"issue-{i + 1}"
    link = item.get("link")
    if not isinstance(link, str) or not link:
        raise ConfigError(f"{where}.link: every known issue needs a link (issue, PR, or a note's URL)")
    policy = item.get("policy", "fail")
    if policy not in POLICIES:
        raise ConfigError(f"{where}.policy: expected one of {', '.join(POLICIES)}, got {shown(policy)}")
    crash = _regex(f"{where}.crash", item.get("crash"))
    finding = _regex(f"{where}.finding", item.get("finding"))
    if crash is None and finding is None:
        raise ConfigError(f"{where}: give `crash:` (regex on crash titles) or `finding:` (regex on 'kind: message')")
    avoid = item.get("avoid") or {}
    if not isinstance(avoid, dict):
        raise ConfigError(f"{where}.avoid: expected {{strategies: [...], methods: [...]}}, got {shown(avoid)}")
    strategies = _names(f"{where}.avoid.strategies", avoid.get("strategies"))
    methods = _names(f"{where}.avoid.methods", avoid.get("methods"))
    for s in strategies:
        if s not in STRATEGIES:
            raise ConfigError(f"{where}.avoid.strategies: unknown strategy {s!r}; "
                              f"known: {', '.join(sorted(STRATEGIES))}")
    for m in methods:
        if m not in KNOWN_METHODS:
            raise ConfigError(f"{where}.avoid.methods: unknown method {m!r}")
    if policy == "avoid" and not (strategies or methods):
        raise ConfigError(f"{where}.avoid: policy avoid needs strategies or methods to stop issuing")
    return KnownIssue(str(ident), link, policy, crash, finding, strategies, methods, str(item.get("note", "")))
