"""pytest plugin: options that mirror `lvol-storm run`, and the fixtures `host`, `target`, `rpc`, `bdev`, `lvstore`.

Fixtures tear down only after evidence is on disk: the target's log lives in the test's run directory from the
first line, and a target that died is never "cleaned up" by deleting its state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.bdev import BaseBdev, Lvstore, verify_clean
from harness.config import RunConfig, load_config
from harness.errors import ConfigError, HarnessError
from harness.history import History
from harness.hosts.base import Host
from harness.hosts.local import LocalHost
from harness.rpc.sync import SyncRpc
from harness.rundir import RunDir, default_run_dir
from harness.session import TargetNeeds, TargetSession
from harness.target import SIM_BANNER, find_spdk_tgt

SUITES_REFUSING_SIM = ("regression", "nightly", "soak")


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    g = parser.getgroup("lvol-storm", "lvol-storm: the target under test and the run")
    g.addoption("--target", choices=["auto", "spdk", "sim"], default=None,
                help="spdk: a real spdk_tgt; sim: the reference target; auto: spdk if found, else sim (loudly)")
    g.addoption("--spdk-tgt", default=None, help="path to spdk_tgt (else $SPDK_TGT, PATH, $SPDK_DIR/build/bin)")
    g.addoption("--bdev", choices=["malloc", "aio", "nvme"], default=None, help="base bdev kind")
    g.addoption("--run-dir", default=None, help="where artefacts go (default runs/<time>-pytest)")
    g.addoption("--profile", default=None, help="profile name under profiles/ or a YAML file")
    g.addoption("--sim-fault", default=None, help="reference target fault mode(s), comma-separated")
    g.addoption("--seed", type=int, default=None, help="storm seed")
    g.addoption("--duration", default=None, help="storm duration, e.g. 30s, 5m, 1h")
    g.addoption("--workers", type=int, default=None, help="storm workers (connections)")
    g.addoption("--target-arg", action="append", default=[], help="extra spdk_tgt argument (repeatable)")
    g.addoption("--no-minimize", action="store_true", default=False,
                help="do not cut new crashes down to a minimal reproducer")
    g.addoption("--set", dest="lvs_set", action="append", default=[], metavar="FIELD=VALUE",
                help="override a config field, e.g. --set storm.depth=8 (repeatable)")
    _add_node_options(g, pluginmanager.get_plugin("pytestconfig"))


SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


def _suites_conftest_loads(config: pytest.Config | None) -> bool:
    """Will suites/conftest.py be loaded (a path argument inside, or above, suites/)? Then its own
    --inventory/--nodes/--keep-nodes/--tf-var are used, and defining them here too would clash."""
    ns = getattr(config, "known_args_namespace", None)
    paths = [str(a).split("::", 1)[0] for a in (getattr(ns, "file_or_dir", None) or []) if not str(a).startswith("-")]
    invocation = Path(config.invocation_params.dir) if config is not None else Path.cwd()
    if not paths and config is not None and invocation == config.rootpath:
        try:
            paths = [str(p) for p in config.getini("testpaths")]  # what pytest collects without arguments
        except (ValueError, KeyError):
            paths = []
    for raw in paths or [str(invocation)]:
        path = (invocation / raw).resolve()
        if path == SUITES_DIR or SUITES_DIR in path.parents or path in SUITES_DIR.parents:
            return True
    return False


def _add_node_options(g: Any, config: pytest.Config | None) -> None:
    """Nodes to run on: `--inventory FILE` or `--terraform MODULE [--nodes N] [--keep-nodes]` (fixture `nodes`)."""
    g.addoption("--terraform", default=None, metavar="MODULE",
                help="provision nodes with terraform/MODULE (local, aws-sles) for the `nodes` fixture; destroyed "
                     "at the end unless --keep-nodes")
    if _suites_conftest_loads(config):
        return
    g.addoption("--inventory", default=None, help="YAML list of lab nodes for the `nodes` fixture")
    g.addoption("--nodes", type=int, default=1, help="with --terraform: how many nodes")
    g.addoption("--keep-nodes", action="store_true", help="with --terraform: do not destroy the nodes")
    g.addoption("--tf-var", action="append", default=[], metavar="NAME=VALUE",
                help="with --terraform: a module variable, e.g. --tf-var subnet_octet=201 (repeatable)")


def cli_overrides(get: Any) -> dict[str, Any]:
    """Map CLI flags to config paths; shared by the pytest options and `lvol-storm run`."""
    mapping: dict[str, Any] = {
        "target.kind": get("target"),
        "target.spdk_tgt": get("spdk_tgt"),
        "target.sim_fault": get("sim_fault"),
        "bdev.kind": get("bdev"),
        "storm.seed": get("seed"),
        "storm.duration": get("duration"),
        "storm.workers": get("workers"),
    }
    if get("no_minimize"):
        mapping["minimize.enabled"] = False
    extra = get("target_arg")
    if extra:
        mapping["target.extra_args"] = list(extra)
    return mapping


def _get_option(config: pytest.Config) -> Any:
    return lambda name: config.getoption(name)


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    try:
        return load_config(
            pytestconfig.getoption("profile"),
            overrides=pytestconfig.getoption("lvs_set"),
            cli=cli_overrides(_get_option(pytestconfig)),
        )
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


@pytest.fixture(scope="session")
def host() -> Host:
    return LocalHost()


def _option(config: pytest.Config, name: str, default: Any = None) -> Any:
    try:
        return config.getoption(name)
    except ValueError:
        return default


def pytest_configure(config: pytest.Config) -> None:
    """A bad inventory, an unknown module or missing credentials: one line before any node is provisioned."""
    from harness.fleet import check_terraform_module, parse_tf_vars

    module, inventory = _option(config, "terraform"), _option(config, "inventory")
    try:
        if module and inventory:
            raise ConfigError("--inventory and --terraform exclude each other: pick one")
        if module:
            check_terraform_module(module, parse_tf_vars(_option(config, "tf_var", []) or []))
        elif inventory:
            from harness.provision.inventory import load_inventory

            if not Path(inventory).is_file():
                raise ConfigError(f"--inventory: {inventory} does not exist")
            load_inventory(inventory)
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def nodes(pytestconfig: pytest.Config, session_run_dir: Path) -> Iterator[list[Host]]:
    """The machines to run on, as Hosts: `--inventory FILE`'s nodes, `--terraform MODULE`'s (provisioned
    here, state under the session's run dir, destroyed after the session unless `--keep-nodes`), else this one.

    Inside suites/, suites/conftest.py provisions `--terraform-module` itself and points `--inventory` at the
    nodes it made, so this fixture hands back those same nodes."""
    from harness.fleet import parse_tf_vars, terraform_hosts
    from harness.provision.inventory import load_inventory

    module, inventory = _option(pytestconfig, "terraform"), _option(pytestconfig, "inventory")
    if module:
        with terraform_hosts(module, session_run_dir, nodes=_option(pytestconfig, "nodes", 1) or 1,
                             keep=bool(_option(pytestconfig, "keep_nodes", False)),
                             tf_vars=parse_tf_vars(_option(pytestconfig, "tf_var", []) or [])) as hosts:
            yield hosts
        return
    if inventory:
        hosts: list[Host] = list(load_inventory(inventory).hosts())
        try:
            yield hosts
        finally:
            for h in hosts:
                close = getattr(h, "close", None)
                if close is not None:
                    close()
        return
    yield [LocalHost()]


SESSION_KEY = pytest.StashKey["TargetSession"]()


@pytest.fixture
def target(request: pytest.FixtureRequest, host: Host, run_config: RunConfig,
           run_dir: RunDir) -> Iterator[TargetSession]:
    """A started target under the same session a storm gets: hugepages for the configured bdev, core_pattern,
    the watchdog. If it dies during the test, the test fails with the crash title and the crash bundle's path
    (the report is on disk before the target is torn down)."""
    session = TargetSession(host, run_config.target, str(run_dir.path),
                            needs=TargetNeeds.of_run(run_config.bdev), watch=run_config.watch,
                            evidence_dir=run_dir.path, history_path=run_dir.history_for(run_config.history.compress))
    with session:
        request.node.stash[SESSION_KEY] = session
        yield session


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test whose target died fails with the crash title and bundle, not a bare `RpcConnectionLost`."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    session = item.stash.get(SESSION_KEY, None)
    if session is None or report.when != "call":
        return
    if not session.wait_for_death(lost_target=report.failed):
        return
    path = session.save_crash()
    title = session.report.title if session.report is not None else "the target died"
    report.outcome = "failed"
    report.longrepr = f"target crashed: {title} (crash bundle: {path})"


@pytest.fixture
def bdev(rpc: SyncRpc, target: TargetSession, run_config: RunConfig, run_dir: RunDir) -> Iterator[BaseBdev]:
    base = BaseBdev(target.host, run_config.bdev, str(run_dir.path))
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
