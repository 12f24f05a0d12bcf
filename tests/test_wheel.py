"""lvol-storm as users install it: a wheel in a fresh venv, used from a directory that is not this checkout.
The profiles come with it, the pytest plugin loads by its entry point (no -p, no conftest.py, markers known),
and a user's three-line test gets the fixtures, and the crash title when its target dies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

USER_TEST = '''
import pytest

@pytest.mark.slow
def test_lvols(rpc, lvstore):
    for i in range(50):
        rpc.call("bdev_lvol_create", lvs_name=lvstore.name, lvol_name=f"v{i}", size_in_mib=4, thin_provision=True)
'''


# What a user's shell has: none of this checkout's PYTHONPATH (with it, pip in the new venv found lvol-storm
# "already satisfied" through the checkout's egg-info and installed no scripts).
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and two suites in one
    # checkout (make test-stress) would build into the same ones at once.
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", ".stress", "runs", "__pycache__", ".*_cache", "dist", ".terraform"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300, env=USER_ENV)
    wheel = next((root / "dist").glob("lvol_storm-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120, env=USER_ENV)
    install = subprocess.run([str(root / "venv/bin/pip"), "install", "-q", str(wheel)], capture_output=True,
                             text=True, timeout=600, env=USER_ENV)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return root / "venv"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_installed_wheel_has_its_profiles_and_version(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(venv / "bin/lvol-storm"), "profiles"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60, env=USER_ENV)
    names = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert {"default", "smoke", "regression", "nightly", "soak"} <= set(names), out.stdout + out.stderr
    assert all("site-packages/harness/profiles/" in line for line in out.stdout.splitlines())
    version = subprocess.run([str(venv / "bin/lvol-storm"), "--version"], capture_output=True, text=True,
                             timeout=60, env=USER_ENV)
    assert version.stdout.startswith("lvol-storm ")
    (tmp_path / "profiles").mkdir()  # a user's own profiles/ wins over the built-in one of the same name
    (tmp_path / "profiles" / "smoke.yaml").write_text("profile: mine\n")
    mine = subprocess.run([str(venv / "bin/lvol-storm"), "profiles"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60, env=USER_ENV)
    assert f"smoke\t{tmp_path / 'profiles' / 'smoke.yaml'}" in mine.stdout, mine.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_users_own_test_gets_the_fixtures_and_the_crash_title(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(USER_TEST)
    base = [str(venv / "bin/python"), "-m", "pytest", "-q", "-W", "error::pytest.PytestUnknownMarkWarning",
            "-p", "no:cacheprovider", "--target", "sim"]
    ok = subprocess.run([*base, "--run-dir", str(tmp_path / "ok")], capture_output=True, text=True,
                        cwd=tmp_path, timeout=300, env=USER_ENV)
    assert ok.returncode == 0 and "1 passed" in ok.stdout, ok.stdout[-3000:] + ok.stderr[-2000:]
    bad = subprocess.run([*base, "--sim-fault", "exit", "--run-dir", str(tmp_path / "bad")], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300, env=USER_ENV)
    assert bad.returncode == 1, bad.stdout[-3000:]
    assert "target crashed: exit: target exited 0 unexpectedly (crash bundle: " in bad.stdout, bad.stdout[-3000:]
    assert list((tmp_path / "bad").glob("test_lvols/crashes/001-*/crash.json"))
