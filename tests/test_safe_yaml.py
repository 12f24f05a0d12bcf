"""YAML from users is read with bounds everywhere (harness/safe_yaml.py): an alias bomb, an oversized file, a
binary file and a key given twice are each one line naming the file (and line) and the fix, and no error
echoes more than a bounded slice of what the user wrote."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import ConfigError
from harness.known_issues import KnownIssues
from harness.nodes import parse_tf_vars
from harness.provision.inventory import load_inventory
from harness.report.html import reproducer_commands
from harness.safe_yaml import MAX_BYTES, load_yaml, read_yaml_file

REPO = Path(__file__).resolve().parent.parent


def alias_bomb(levels: int, fan: int = 9, field: str = "storm: {workers: *a%d}") -> str:
    """`levels` of anchors, each a list of `fan` aliases of the one before: fan**levels values expanded."""
    lines = ["a0: &a0 [x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    return "\n".join([*lines, field % levels]) + "\n"


def test_a_nine_level_alias_bomb_is_refused_at_once_through_the_cli(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(9))

    def one_gib() -> None:  # the old loader took 5.7 GB: let it fail here rather than take the machine
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--target", "sim", "--profile", str(bomb),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=one_gib)
    assert time.monotonic() - start < 20
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == (f"lvol-storm: {bomb}:6:40: its aliases expand to more than 100,000 values (an alias "
                           "bomb?): write the repeated values out, or nest fewer aliases\n")


def test_a_small_bomb_prints_a_short_error(tmp_path: Path) -> None:
    # 7 levels of 9 (a 412-byte file) printed a 34.7 MB error; 4 levels pass the budget, and validation's
    # `got` must still print a bounded slice of their 30,000 values
    for levels, fan in ((7, 9), (4, 9)):
        bomb = tmp_path / f"bomb{levels}.yaml"
        bomb.write_text(alias_bomb(levels, fan))
        with pytest.raises(ConfigError) as info:
            load_config(str(bomb))
        assert len(str(info.value)) < 2000, len(str(info.value))
    assert "storm.workers: Input should be a valid integer, got [[[[...], [...]," in str(info.value)


def test_a_key_given_twice_is_an_error_naming_key_and_lines(tmp_path: Path) -> None:
    profile = tmp_path / "dup.yaml"
    profile.write_text("storm:\n  workers: 4\n  depth: 2\n  workers: 16\n")
    with pytest.raises(ConfigError, match=r"^\S+dup\.yaml:4: duplicate key 'workers' \(first on line 2\): keep "
                                          r"one of them$"):
        load_config(str(profile))
    # a merge key's values may be overridden on purpose
    assert load_yaml("base: &b {workers: 2, depth: 3}\nstorm:\n  <<: *b\n  workers: 5\n", "x")["storm"] == \
        {"workers": 5, "depth": 3}


def test_size_and_binary_files_are_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\nstorm: {}\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"big\.yaml: more than 1,048,576 bytes, far more than a profile holds"):
        load_config(str(big))
    assert time.monotonic() - start < 1.0
    binary = tmp_path / "tool.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"tool\.yaml: not UTF-8 text \(byte 136 is 0x80\), so not YAML: a binary "
                                          r"file\? give the profile here$"):
        load_config(str(binary))
    with pytest.raises(ConfigError, match=r"cannot read inventory: Is a directory"):
        read_yaml_file(tmp_path, "inventory")
    with pytest.raises(ConfigError, match=r"recursive\.yaml:1:\d+: an alias refers to a value that contains it"):
        load_yaml("a: &a [1, *a]\n", "recursive.yaml")


def test_every_reader_of_user_yaml_uses_the_bounded_loader(tmp_path: Path) -> None:
    dup = "nodes:\n  - name: a\n    name: b\n"
    (tmp_path / "lab.yaml").write_text(dup)
    with pytest.raises(ConfigError, match=r"lab\.yaml:3: duplicate key 'name'"):
        load_inventory(tmp_path / "lab.yaml")
    (tmp_path / "ki.yaml").write_text("issues: []\nissues: []\n")
    with pytest.raises(ConfigError, match=r"ki\.yaml:2: duplicate key 'issues'"):
        KnownIssues.load(tmp_path / "ki.yaml")
    with pytest.raises(ConfigError, match=r"^--set storm\.mix:1:\d+: its aliases expand"):
        load_config(None, overrides=["storm.mix={" + ", ".join(alias_bomb(6, field="m: *a%d").splitlines()) + "}"])
    with pytest.raises(ConfigError, match=r"^--tf-var x:1:\d+: not valid YAML"):
        parse_tf_vars(["x=[1, 2"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(alias_bomb(9))
    assert reproducer_commands(run, {})[0].startswith("lvol-storm run --profile default")  # the page is drawn


def test_inventory_errors_do_not_echo_a_long_value(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    (tmp_path / "lab.yaml").write_text(
        f"nodes:\n  - {{name: a, address: h, key: key, insecure_host_keys: true, port: '{'9' * 100_000}'}}\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path / "lab.yaml")
    assert "nodes[0].port:" in str(info.value) and len(str(info.value)) < 300
