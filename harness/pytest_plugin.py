"""pytest plugin (a face): the options of `lvol-storm run` (one table, harness.options), the markers, and the
fixtures `host`, `target`, `rpc`, `bdev`, `lvstore`, `nodes` for your own tests.

The fixtures run under the same `TargetSession` a storm does: hugepages for the configured bdev, core_pattern,
a watchdog from the first line. A test whose target dies fails with the crash title and its bundle (written
before anything is torn down), not a bare `RpcConnectionLost`. Nothing is started or provisioned at collection
(`--collect-only`, `--help`): nodes come up when the first test asks for them.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.bdev import BaseBdev, Lvstore, verify_clean
from harness.config import RunConfig, load_config
from harness.errors import ConfigError, HarnessError
from harness.history import History
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.nodes import (
    Node,
    check_terraform_module,
    inventory_nodes,
    parse_tf_vars,
    terraform_nodes,
)
from harness.options import add_to_pytest, config_overrides
from harness.rpc.sync import SyncRpc
from harness.rundir import RunDir, default_run_dir
from harness.session import TargetNeeds, TargetSession
from harness.target import SIM_BANNER, find_spdk_tgt

MARKERS = (
    "spdk_tgt: needs a real spdk_tgt (set SPDK_TGT); skipped otherwise",
    "slow: longer end-to-end test (still bounded)",
    "netns: needs root and ip netns (creates network namespaces)",
)
SESSION_KEY = pytest.StashKey[TargetSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_to_pytest(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Markers, and the node options checked in one line before any node is provisioned."""
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    try:
        module, inventory = config.getoption("terraform"), config.getoption("inventory")
        if module and inventory:
            raise ConfigError("--inventory and --terraform exclude each other: pick one")
        if module:
            check_terraform_module(module, parse_tf_vars(config.getoption("tf_var") or []))
        elif inventory:
            inventory_nodes(inventory)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


def option_config(config: pytest.Config) -> RunConfig:
    """The profile, the flags, then `--set`: the same composition `lvol-storm run` makes."""
    return load_config(config.getoption("profile"), overrides=config.getoption("lvs_set"),
                       cli=config_overrides(config.getoption, "pytest"))


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    try:
        return option_config(pytestconfig)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def session_run_dir(pytestconfig: pytest.Config, run_config: RunConfig) -> Path:
    base = pytestconfig.getoption("run_dir")
    path = Path(base) if base else default_run_dir("pytest")
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(run_config.dump_yaml())
    return path.absolute()


def _slug(nodeid: str) -> str:
    name = nodeid.split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "test"


@pytest.fixture
def run_dir(request: pytest.FixtureRequest, session_run_dir: Path) -> RunDir:
    """A directory per test under the session's run directory."""
    return RunDir(session_run_dir / _slug(request.node.nodeid))


# -- nodes and hosts --------------------------------------------------------------------------------------------


def node_count(config: pytest.Config) -> int:
    """How many nodes `--inventory` or `--terraform` give (0: none asked for, this machine)."""
    if config.getoption("inventory"):
        return len(inventory_nodes(config.getoption("inventory")))
    if config.getoption("terraform"):
        return config.getoption("nodes") or 1
    return 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With nodes, a test that asks for `host` runs once per node (by position: Terraform names come later)."""
    if "host" not in metafunc.fixturenames or "node" in metafunc.fixturenames:
        return
    count = node_count(metafunc.config)
    if count:
        inventory = metafunc.config.getoption("inventory")
        names = [n.name for n in inventory_nodes(inventory)] if inventory else [f"node{i}" for i in range(count)]
        metafunc.parametrize("host", range(count), indirect=True, ids=names)


@pytest.fixture(scope="session")
def nodes(pytestconfig: pytest.Config, session_run_dir: Path) -> Iterator[list[Node]]:
    """The machines to run on: `--inventory FILE`'s nodes, `--terraform MODULE`'s (provisioned when the first
    test asks, state under the session's run dir, destroyed after the session unless `--keep-nodes`), else
    this one."""
    module, inventory = pytestconfig.getoption("terraform"), pytestconfig.getoption("inventory")
    if module:
        with terraform_nodes(module, session_run_dir, nodes=pytestconfig.getoption("nodes") or 1,
                             keep=bool(pytestconfig.getoption("keep_nodes")),
                             tf_vars=parse_tf_vars(pytestconfig.getoption("tf_var") or [])) as found:
            yield found
        return
    if inventory:
        found = inventory_nodes(inventory)
        hosts = [n.host() for n in found]
        try:
            yield [Node(n.name, spec=n.spec, given_host=h) for n, h in zip(found, hosts, strict=True)]
        finally:
            for h in hosts:
                with contextlib.suppress(Exception):
                    getattr(h, "close", lambda: None)()
        return
    yield [Node("local", given_host=LocalHost())]


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Host:
    """This machine, or (with --inventory / --terraform) each node in turn."""
    index = getattr(request, "param", None)
    if index is None:
        return LocalHost()
    return request.getfixturevalue("nodes")[index].host()


# -- the target and its clients ---------------------------------------------------------------------------------


@pytest.fixture
def target(request: pytest.FixtureRequest, host: Host, run_config: RunConfig,
           run_dir: RunDir) -> Iterator[TargetSession]:
    """A started target under the same session a storm gets: hugepages for the configured bdev, core_pattern,
    the watchdog. If it dies during the test, the test fails with the crash title and the crash bundle's path
    (the report is on disk before the target is torn down)."""
    work_dir = str(run_dir.path) if host.is_local else host.private_dir()  # the node's copies come home
    session = TargetSession(host, run_config.target, work_dir,
                            needs=TargetNeeds.of_run(run_config.bdev), watch=run_config.watch,
                            evidence_dir=run_dir.path, history_path=run_dir.history_for(run_config.history.compress))
    try:
        with session:
            request.node.stash[SESSION_KEY] = session
            yield session
    finally:
        if not host.is_local:
            host.run(["rm", "-rf", work_dir], timeout=60)


@pytest.fixture
def history(target: TargetSession) -> History:
    """The target session's history: every call the fixtures' clients make, streamed to the test's run dir."""
    assert target.history is not None
    return target.history


@pytest.fixture
def rpc(target: TargetSession, history: History) -> Iterator[SyncRpc]:
    client = SyncRpc(target.host, target.sock_path, history=history, timeout=target.config.rpc_timeout_s)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def bdev(rpc: SyncRpc, target: TargetSession, run_config: RunConfig) -> Iterator[BaseBdev]:
    base = BaseBdev(target.host, run_config.bdev, target.work_dir)
    base.create(rpc)
    try:
        yield base
    finally:
        if target.alive():
            base.delete(rpc)
            problems = verify_clean(rpc, base.bdev_name)
            assert not problems, "; ".join(problems)


@pytest.fixture
def lvstore(rpc: SyncRpc, bdev: BaseBdev, target: TargetSession, run_config: RunConfig) -> Iterator[Lvstore]:
    lvs = Lvstore(run_config.lvstore, bdev.bdev_name)
    lvs.create(rpc)
    try:
        yield lvs
    finally:
        if target.alive():
            problems = lvs.teardown(rpc)
            assert not problems, "; ".join(problems)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                          pytest.TestReport]:
    """A test whose target died fails with the crash title and bundle, not a bare `RpcConnectionLost`."""
    report = yield
    session = item.stash.get(SESSION_KEY, None)
    if session is None or report.when != "call" or not session.wait_for_death(lost_target=report.failed):
        return report
    path = session.save_crash()
    title = session.report.title if session.report is not None else "the target died"
    report.outcome = "failed"
    report.longrepr = f"target crashed: {title} (crash bundle: {path})"
    return report


# -- what the session says about its target ---------------------------------------------------------------------


def describe_target(config: pytest.Config) -> str:
    kind = config.getoption("target") or os.environ.get("LVOL_STORM_TARGET") or "auto"
    if kind == "sim":
        return "sim"
    try:
        path = find_spdk_tgt(LocalHost(), config.getoption("spdk_tgt"))
    except HarnessError:
        return "sim" if kind == "auto" else "spdk (not found)"
    return f"spdk ({path})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    kind = describe_target(config)
    lines = [f"lvol-storm target: {kind}"]
    if kind == "sim":
        lines.append(SIM_BANNER)
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `spdk_tgt` run only when a real spdk_tgt is there to run them."""
    if describe_target(config).startswith("spdk ("):
        return
    skip = pytest.mark.skip(reason="needs a real spdk_tgt: set SPDK_TGT or pass --spdk-tgt")
    for item in items:
        if "spdk_tgt" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if describe_target(config) == "sim":
        terminalreporter.write_line(SIM_BANNER, yellow=True, bold=True)
