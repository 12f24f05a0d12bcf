"""Profiles and overrides: every mistake is one line naming the file, the field and what was expected."""

from __future__ import annotations

import pytest

from harness.config import PROFILES_DIR, load_config
from harness.errors import ConfigError


@pytest.mark.parametrize("name", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_every_shipped_profile_validates(name: str) -> None:
    cfg = load_config(name)
    assert cfg.profile == name
    assert cfg.storm.workers >= 1


def test_required_profiles_exist() -> None:
    names = {p.stem for p in PROFILES_DIR.glob("*.yaml")}
    assert {"smoke", "regression", "nightly", "soak", "lab-nvme"} <= names


def test_set_overrides_keep_types_and_win_over_profile() -> None:
    cfg = load_config("smoke", overrides=["storm.workers=16", "storm.duration=5m", "target.cpumask=0x3"],
                      cli={"target.kind": "sim"})
    assert cfg.storm.workers == 16 and cfg.storm.duration == 300.0
    assert cfg.target.kind == "sim"


def test_cli_string_values_are_not_reinterpreted() -> None:
    assert load_config(None, cli={"target.cpumask": "0x1"}).target.cpumask == "0x1"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("storm.workers=0", r"storm.workers: must be >= 1, got 0$"),
        ("storm.bogus=1", r"storm.bogus: unknown field"),
        ("storm.duration=-5s", r"storm.duration: must not be negative"),
        ("storm.mix={bdev_lvol_frobnicate: 3}", r"storm.mix: unknown method 'bdev_lvol_frobnicate'"),
        ("storm.strategies=[no-such-race]", r"unknown strategy 'no-such-race'"),
        ("bdev.kind=floppy", r"bdev.kind: .*got 'floppy'"),
        ("lvstore.cluster_size=3000", r"cluster_size: expected a power of two"),
        ("storm.workers", r"expected FIELD.PATH=VALUE"),
    ],
)
def test_bad_overrides_are_one_clear_line(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config("smoke", overrides=[override])
    assert "\n" not in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("storm:\n  workers: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        load_config(str(bad))


def test_unknown_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no profile named 'nope'; known: .*smoke"):
        load_config("nope")


def test_profile_that_is_not_a_mapping(tmp_path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(str(bad))
