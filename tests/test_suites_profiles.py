"""Profiles behind the suites load and validate; `--set` reaches any field; known-issues.yaml is valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from harness.config import PROFILES_DIR, RunConfig, load_config
from harness.errors import ConfigError
from harness.known_issues import DEFAULT_PATH, KnownIssues
from harness.longrun import with_storm, without_avoided
from harness.suite import SUITES, suite_of_paths

REGRESSION_RACES = ["busy-delete", "delete-vs-clone", "double-delete", "delete-vs-snapshot", "delete-vs-checksum",
                    "delete-vs-xattr", "purge-chain", "lvstore-delete-with-tree"]


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_validates_and_round_trips(path: Path) -> None:
    cfg = load_config(path.stem)
    assert cfg.profile == path.stem
    again = RunConfig.model_validate(yaml.safe_load(cfg.dump_yaml()))  # what config.yaml holds reloads the same
    assert again == cfg


def test_each_suite_has_its_profile_and_regression_aims_at_delete() -> None:
    for spec in SUITES.values():
        assert (PROFILES_DIR / f"{spec.profile}.yaml").exists(), spec
    reg = load_config("regression")
    assert sorted(reg.storm.strategies) == sorted(REGRESSION_RACES)
    assert reg.storm.duration == 120.0
    assert load_config("nightly").storm.duration == 3600.0
    assert load_config("soak").storm.duration == 0.0
    assert load_config("smoke").storm.duration < 120.0
    assert [s.name for s in SUITES.values() if s.refuses_sim] == ["regression", "nightly", "soak"]
    assert [s.name for s in SUITES.values() if s.suppresses] == ["nightly", "soak"]


@pytest.mark.parametrize(("assignment", "path", "value"), [
    ("storm.workers=16", ("storm", "workers"), 16),
    ("storm.duration=90s", ("storm", "duration"), 90.0),
    ("target.cpumask=0x3", ("target", "cpumask"), "0x3"),
    ("bdev.size_mib=2048", ("bdev", "size_mib"), 2048),
    ("watch.hang_after_s=5", ("watch", "hang_after_s"), 5.0),
    ("storm.strategies=[busy-delete]", ("storm", "strategies"), {"busy-delete": 1.0}),
])
def test_set_overrides_any_field(assignment: str, path: tuple[str, str], value: object) -> None:
    cfg = load_config("regression", overrides=[assignment]).model_dump()
    assert cfg[path[0]][path[1]] == value


def test_suite_is_read_from_the_paths() -> None:
    root = Path(__file__).resolve().parent.parent / "suites"
    assert suite_of_paths([str(root / "regression")], root) is SUITES["regression"]
    assert suite_of_paths([f"{root}/soak/test_soak.py::test_soak[lab1]", "-q"], root) is SUITES["soak"]
    assert suite_of_paths(["tests"], root) is None
    with pytest.raises(ConfigError, match="run one suite at a time"):
        suite_of_paths([str(root / "smoke"), str(root / "soak")], root)


def test_with_storm_and_without_avoided_revalidate() -> None:
    cfg = load_config("nightly")
    one = with_storm(cfg, strategies={"busy-delete": 1.0}, strategy_share=1.0)
    assert one.storm.strategies == {"busy-delete": 1.0} and cfg.storm.strategies != one.storm.strategies
    with pytest.raises(Exception, match="unknown strategy"):
        with_storm(cfg, strategies={"no-such": 1.0})
    less = without_avoided(cfg, {"purge-chain"}, {"bdev_lvol_inflate"})
    assert "purge-chain" not in less.storm.strategies and "bdev_lvol_inflate" not in less.storm.mix
    # never steer away from everything: the mix stays as it was (and the long run says so)
    assert without_avoided(cfg, set(cfg.storm.strategies), set(cfg.storm.mix)) is cfg


def test_repo_known_issues_file_is_valid_and_matches_the_recorded_bug() -> None:
    known = KnownIssues.load()
    assert known.source == str(DEFAULT_PATH) and known.entries
    assert all(e.link.startswith("https://") for e in known.entries)
    issue = known.for_crash("SIGSEGV in spdk_lvol_destroy (lvol.c:1884)")
    assert issue is not None and issue.policy == "fail"
    assert known.for_crash("SIGSEGV in spdk_bs_delete_blob (blobstore.c:1)") is None
    line = ("lvol.c:1084:lvol_delete_blob_cb: *ERROR*: Could not remove blob on lvol gracefully - forced removal")
    assert known.for_finding({"kind": "target-log", "message": line}) is not None


def test_known_issue_entries_are_checked(tmp_path: Path) -> None:
    def load(text: str) -> KnownIssues:
        path = tmp_path / "k.yaml"
        path.write_text(text)
        return KnownIssues.load(path)

    first = load("issues:\n- {id: a, crash: 'SIGSEGV', link: 'https://x/1', policy: xfail}\n"
                 "- {id: b, crash: 'SIGSEGV in foo', link: 'https://x/2'}\n")
    assert first.for_crash("SIGSEGV in foo").id == "a"  # the first match wins
    assert first.entries[1].policy == "fail"  # the default
    for text, message in [
        ("issues:\n- {crash: 'x'}\n", "issues[0].link: every known issue needs a link"),
        ("issues:\n- {link: 'https://x', policy: avoid, crash: 'x'}\n", "policy avoid needs strategies or methods"),
        ("issues:\n- {link: 'https://x', crash: '('}\n", "invalid regular expression"),
        ("issues:\n- {link: 'https://x'}\n", "give `crash:`"),
        ("issues:\n- {link: 'https://x', crash: 'x', policy: avoid, avoid: {strategies: [nope]}}\n",
         "unknown strategy 'nope'"),
        ("issues:\n- {link: 'https://x', crash: 'x', colour: red}\n", "unknown field(s) colour"),
        ("issues: 3\n", "expected `issues:` with a list"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(text)
    with pytest.raises(ConfigError, match="does not exist"):
        KnownIssues.load(tmp_path / "missing.yaml")
