"""What every suite shares (a face over harness.suite, harness.longrun, harness.nodes): which suite this is,
the checks that run before anything starts, where the run directory and JUnit XML go, the nodes (this
machine, an inventory, or Terraform), each test's time limit, and the merged report.

`pytest suites/<name>` picks the suite from the path; its profile is the default `--profile`. Errors a user can
fix (a refused reference target, a bad `--set`, no credentials, no inventory) stop pytest with one line before
a target is started or a node provisioned; `--collect-only` provisions nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

import harness
from harness.config import RunConfig
from harness.errors import ConfigError, HarnessError
from harness.hosts.local import LocalHost
from harness.interrupts import interrupt_sets
from harness.known_issues import KnownIssues
from harness.longrun import LongRun, LongRunOutcome
from harness.nodes import (
    LOCAL_NODE,
    Node,
    check_terraform_module,
    inventory_from_terraform,
    inventory_nodes,
    parse_tf_vars,
)
from harness.provision.terraform import Terraform, TerraformSession
from harness.pytest_plugin import option_config
from harness.report.html import write_report_html
from harness.report.timeline import Timeline
from harness.run import RunOutcome, StormRun
from harness.rundir import RunDir, default_run_dir
from harness.sim.faults import parse_faults
from harness.storm.config import parse_duration
from harness.suite import (
    TERRAFORM_MODULE,
    SuiteSpec,
    TestResult,
    check_target_choice,
    failure_line,
    rerun_commands,
    resolve_where,
    session_summary,
    suite_of_paths,
    time_limit,
)
from harness.summary import Summary
from harness.target import find_spdk_tgt
from harness.triage import crashes_in, record_runs

SUITES_DIR = Path(__file__).resolve().parent
SUITE_KEY = pytest.StashKey[SuiteSpec]()
WHERE_KEY = pytest.StashKey[str]()
CONFIG_KEY = pytest.StashKey[RunConfig]()
RESULTS_KEY = pytest.StashKey[list[TestResult]]()  # appended to by pytest_runtest_logreport
PROVISION_KEY = pytest.StashKey[contextlib.ExitStack]()
TERMINAL_KEY = pytest.StashKey[TextIO]()
ROLLER_KEY = pytest.StashKey[tuple[threading.Event, threading.Thread]]()
LONG_RUN_KEY = pytest.StashKey[LongRun]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        spec = suite_of_paths(config.args, SUITES_DIR)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if spec is None:
        return
    config.stash[SUITE_KEY] = spec
    config.stash[RESULTS_KEY] = []
    _CONFIG["config"] = config
    if config.getoption("profile") is None:
        config.option.profile = spec.profile
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        config.option.run_dir = worker["lvs_run_dir"]
        if worker.get("lvs_inventory"):  # nodes the controller provisioned (or was given): use those
            config.option.inventory = worker["lvs_inventory"]
            config.option.terraform = None
    else:
        if config.getoption("run_dir") is None:
            config.option.run_dir = str(default_run_dir(spec.name).absolute())
        if getattr(config.option, "xmlpath", None) is None:
            config.option.xmlpath = str(Path(config.option.run_dir) / "junit.xml")
    try:
        cfg = option_config(config)
        parse_faults(cfg.target.sim_fault)
        target_flag = config.getoption("target")
        where = resolve_where(spec, inventory=config.getoption("inventory"), target_flag=target_flag,
                              terraform=config.getoption("terraform"))
        if where == "inventory":
            inventory_nodes(config.getoption("inventory"))
        elif where == "terraform" and worker is None:
            check_terraform_module(config.getoption("terraform") or TERRAFORM_MODULE,
                                   parse_tf_vars(config.getoption("tf_var") or []), who=f"{spec.name}: --terraform")
        found = True
        if where == "local" and spec.refuses_sim and target_flag != "sim":
            try:
                find_spdk_tgt(LocalHost(), config.getoption("spdk_tgt") or cfg.target.spdk_tgt)
            except HarnessError:
                found = False
        check_target_choice(spec, target_flag, cfg, remote=where != "local", spdk_tgt_found=found)
        if where == "local" and cfg.bdev.kind == "nvme" and (target_flag == "sim" or cfg.target.kind == "sim"):
            raise ConfigError(f"bdev.kind: nvme (profile {cfg.profile}) needs a PCI NVMe device, which the "
                              "reference target does not have: add --bdev malloc")
        if spec.suppresses:
            KnownIssues.load(config.getoption("known_issues"))
        for opt in ("health_every", "report_every"):
            if parse_duration(config.getoption(opt), f"--{opt.replace('_', '-')}") <= 0:
                raise ConfigError(f"--{opt.replace('_', '-')}: must be > 0")
    except (HarnessError, ValueError) as exc:
        raise pytest.UsageError(f"{spec.name}: {exc}" if not str(exc).startswith(spec.name) else str(exc)) from None
    config.stash[WHERE_KEY] = where
    config.stash[CONFIG_KEY] = cfg
    if TERMINAL_KEY not in config.stash:
        # pytest captures fd 2 during a test; configure runs with capture suspended, so this is the real one.
        config.stash[TERMINAL_KEY] = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's time limit is its suite's own (duration, minimizer budget, start and teardown), not the
    blanket `timeout` of the ini file or of `-o timeout=`; an explicit marker on a test still wins."""
    spec = config.stash.get(SUITE_KEY, None)
    cfg = config.stash.get(CONFIG_KEY, None)
    if spec is None or cfg is None:
        return
    limit = time_limit(spec, cfg)
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(limit))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker writes into the controller's run directory and uses its (provisioned) inventory.
    The controller runs no test, so on Terraform it provisions here, before the first worker starts (each
    worker provisioning for itself ran two applies on one state at once); `--collect-only` still provisions
    nothing."""
    config = node.config
    if SUITE_KEY in config.stash:
        if not config.option.collectonly:
            _provision(config)
        node.workerinput["lvs_run_dir"] = config.option.run_dir
        node.workerinput["lvs_inventory"] = config.getoption("inventory")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` is one worker per node: the inventory's nodes, or `--nodes` for Terraform, else one.

    xdist asks before pytest_configure, so this reads the command line itself."""
    try:
        spec = suite_of_paths(config.args, SUITES_DIR)
        if spec is None:
            return None
        inventory = config.getoption("inventory")
        if inventory:
            return len(inventory_nodes(inventory))
    except HarnessError:
        return None  # pytest_configure reports it in one line
    if config.getoption("terraform") or (spec.where == "terraform" and config.getoption("target") is None):
        return max(1, config.getoption("nodes") or 1)
    return 1


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _start_session_roller(session)


def _provision(config: pytest.Config) -> None:
    """Nightly on Terraform: provision once, in the controller, when the first test needs nodes (never at
    collection: `--collect-only` provisions nothing); destroyed at the end of the session."""
    if config.stash.get(WHERE_KEY, "local") != "terraform" or PROVISION_KEY in config.stash:
        return
    if getattr(config, "workerinput", None) is not None:
        raise pytest.UsageError("an xdist worker was asked to provision Terraform nodes: the controller "
                                "provisions them (pytest_configure_node); this is a harness bug")
    run_dir = Path(config.option.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    config.stash[PROVISION_KEY] = stack
    variables = {"run_id": hashlib.sha1(str(run_dir).encode()).hexdigest()[:8],
                 "node_count": config.getoption("nodes") or 1, **parse_tf_vars(config.getoption("tf_var") or [])}
    tf = Terraform(config.getoption("terraform") or TERRAFORM_MODULE, run_dir / "terraform", variables,
                   run_dir / "terraform.log")
    outputs = stack.enter_context(TerraformSession(tf, keep=config.getoption("keep_nodes")).active())
    config.option.inventory = str(inventory_from_terraform(outputs, run_dir))
    config.stash[WHERE_KEY] = "inventory"


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(PROVISION_KEY, None)
    if stack is not None:
        stack.close()
    terminal = config.stash.get(TERMINAL_KEY, None)
    if terminal is not None:
        terminal.close()


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def suite_spec(pytestconfig: pytest.Config) -> SuiteSpec:
    return pytestconfig.stash[SUITE_KEY]


@pytest.fixture(scope="session")
def known_issues(pytestconfig: pytest.Config, suite_spec: SuiteSpec) -> KnownIssues:
    """Long runs only; the regression and smoke suites get none, so nothing is ever suppressed there."""
    if not suite_spec.suppresses:
        return KnownIssues()
    return KnownIssues.load(pytestconfig.getoption("known_issues"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if SUITE_KEY not in config.stash:
        return
    if "node" in metafunc.fixturenames:
        if config.stash.get(WHERE_KEY, "local") == "terraform":
            ids = [f"node{i}" for i in range(config.getoption("nodes") or 1)]  # names come after apply
            metafunc.parametrize("node", ids, ids=ids, indirect=True)
        else:
            inventory = config.getoption("inventory")
            nodes = inventory_nodes(inventory) if inventory else [LOCAL_NODE]
            metafunc.parametrize("node", [n.name for n in nodes], ids=[n.name for n in nodes], indirect=True)
    if "strategy" in metafunc.fixturenames:
        names = list(config.stash[CONFIG_KEY].storm.strategies)
        metafunc.parametrize("strategy", names, ids=names)


@pytest.fixture
def node(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Node:
    """The node this test runs on (provisioned on first use when the suite runs on Terraform)."""
    _provision(pytestconfig)
    inventory = pytestconfig.getoption("inventory")
    if not inventory:
        return LOCAL_NODE
    nodes = inventory_nodes(inventory)
    name = request.param
    if name.startswith("node") and name[4:].isdigit() and all(n.name != name for n in nodes):
        return nodes[int(name[4:])]
    return next(n for n in nodes if n.name == name)


@pytest.fixture
def node_config(run_config: RunConfig, node: Node) -> RunConfig:
    """The run config with what the inventory says about this node (spdk_tgt, cpumask, hugepages, disk)."""
    return node.config(run_config)


def _announcer(pytestconfig: pytest.Config, log: Path | None = None) -> Callable[[str], None]:
    def announce(msg: str) -> None:
        """Past pytest's capture (a failure is seen at once, a soak is watched live), and into a log for later."""
        terminal = pytestconfig.stash.get(TERMINAL_KEY, None)
        if terminal is not None:
            with contextlib.suppress(OSError, ValueError):
                terminal.write(msg + "\n")
        if log is not None:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {msg}\n")
    return announce


@pytest.fixture
def storm_run(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Iterator[Callable[..., RunOutcome]]:
    """Runs one storm (regression, smoke) and hands back its outcome; its new crashes are minimized after the
    test's verdict is reported (in teardown), so a failure shows at once, not after the search."""
    runs: list[StormRun] = []

    def run(cfg: RunConfig, run_dir: RunDir, host: Any) -> RunOutcome:
        request.node.user_properties.append(("run_dir", str(run_dir.path)))
        storm = StormRun(cfg, run_dir, host, progress=False, defer_minimize=True,
                         announce=_announcer(pytestconfig, run_dir.path / "announce.log"))
        runs.append(storm)
        return storm.execute()

    yield run
    for storm in runs:
        with contextlib.suppress(Exception):
            storm.minimize_new_crashes()


@pytest.fixture
def long_run(pytestconfig: pytest.Config, suite_spec: SuiteSpec, node: Node, node_config: RunConfig,
             session_run_dir: Path, known_issues: KnownIssues,
             request: pytest.FixtureRequest) -> Iterator[Callable[[], LongRunOutcome]]:
    """Runs a nightly/soak on one node (Ctrl-C drains, saves, reports) and hands back its outcome."""

    def run() -> LongRunOutcome:
        run_dir = session_run_dir / node.name
        run_dir.mkdir(parents=True, exist_ok=True)
        # Known before the run starts: a test stopped by a time limit is still reported with its run's crashes.
        request.node.user_properties.append(("run_dir", str(run_dir)))
        request.node.user_properties.append(("node", node.name))
        request.node.user_properties.append(("worker", os.environ.get("PYTEST_XDIST_WORKER", "main")))
        host = node.host()
        stop = threading.Event()
        work_dir = None if node.is_local else host.private_dir()  # mktemp -d as the SSH user, 0700
        try:
            with interrupt_sets(stop):
                long = LongRun(
                    suite_spec.name, node_config, run_dir, host, known=known_issues, stop_event=stop,
                    announce=_announcer(pytestconfig, run_dir / "health.log"),
                    health_every_s=parse_duration(pytestconfig.getoption("health_every")),
                    report_every_s=parse_duration(pytestconfig.getoption("report_every")),
                    node=node.name, work_dir=work_dir,
                )
                request.node.stash[LONG_RUN_KEY] = long
                return long.execute()
        finally:
            if work_dir is not None:
                with contextlib.suppress(Exception):  # its evidence came home with each incarnation
                    host.run(["rm", "-rf", work_dir], timeout=60)
            close = getattr(host, "close", None)
            if close is not None and not node.is_local:
                close()

    yield run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                          pytest.TestReport]:
    """A long run stopped by anything but its own clock (a time limit, an error) fails with its crash titles
    first, then why it stopped; its summary.json already holds every crash counted so far."""
    report = yield
    long = item.stash.get(LONG_RUN_KEY, None)
    if long is None or report.when != "call" or not report.failed or call.excinfo is None:
        return report
    if call.excinfo.errisinstance(pytest.fail.Exception) and "Timeout" not in str(call.excinfo.value):
        return report  # the test's own failure line, already built from the summary
    why = str(call.excinfo.value).splitlines()[0] if str(call.excinfo.value) else call.excinfo.typename
    report.longrepr = failure_line(long.summary(final=True), why=f"stopped by: {why}")
    return report


# -- results and the merged report ---------------------------------------------------------------------


_CONFIG: dict[str, pytest.Config] = {}
"""The session's config, for hooks that are not given it (pytest_runtest_logreport)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect every test's outcome (xdist sends workers' reports to the controller) for the merged report."""
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    config = _CONFIG.get("config")
    if config is None or SUITE_KEY not in config.stash:
        return
    props = {k: str(v) for k, v in report.user_properties}
    crash = getattr(report.longrepr, "reprcrash", None)
    message = str(crash.message) if report.failed and crash is not None else (
        str(report.longrepr).splitlines()[0] if report.failed and report.longrepr else None)
    config.stash[RESULTS_KEY].append(TestResult(
        nodeid=report.nodeid, outcome=report.outcome, duration_s=round(report.duration, 3),
        run_dir=props.get("run_dir"), node=props.get("node", "local"), worker=props.get("worker"),
        message=message))


def _session_argv(config: pytest.Config) -> list[str]:
    argv = [str(a) for a in config.invocation_params.args]
    if not any(a == "--seed" or a.startswith("--seed=") for a in argv) and CONFIG_KEY in config.stash:
        argv += ["--seed", str(config.stash[CONFIG_KEY].storm.seed)]
    return argv


def _start_session_roller(session: pytest.Session) -> None:
    """Long runs: the main process rewrites the merged summary.json/report.html every `--report-every`, from
    the nodes' own rolling files, so the run directory's top page is valid at any moment too."""
    config = session.config
    spec = config.stash.get(SUITE_KEY, None)
    if spec is None or not spec.long_run or hasattr(config, "workerinput"):
        return
    stop = threading.Event()
    period = parse_duration(config.getoption("report_every"))
    timeline = Timeline()

    def roll() -> None:
        while not stop.wait(period):
            with contextlib.suppress(Exception):
                write_session_report(config, None, timeline=timeline)

    thread = threading.Thread(target=roll, name="lvol-storm-session-report", daemon=True)
    thread.start()
    config.stash[ROLLER_KEY] = (stop, thread)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if SUITE_KEY not in config.stash or hasattr(config, "workerinput"):
        return
    roller = config.stash.get(ROLLER_KEY, None)
    if roller is not None:
        roller[0].set()
        roller[1].join(timeout=30)
    write_session_report(config, int(exitstatus))
    db = config.getoption("crash_db")
    if db:  # the session's bugs into the crash database, for `lvol-storm triage --db` over many nights
        run_dir = Path(config.option.run_dir)
        record_runs(Path(db).absolute(), [run_dir], crashes_in(run_dir))


def write_session_report(config: pytest.Config, exitstatus: int | None, timeline: Timeline | None = None) -> Path:
    """One summary.json and report.html for the whole session (harness.suite.session_summary)."""
    run_dir = Path(config.option.run_dir)
    results = config.stash[RESULTS_KEY].copy()
    versions = {"harness": harness.__version__, "python": platform.python_version(), "pytest": pytest.__version__,
                "kernel": platform.release()}
    summary: Summary = session_summary(run_dir, config.stash[SUITE_KEY], results,
                                       config.stash.get(CONFIG_KEY, None), exitstatus, versions=versions,
                                       reproducer=rerun_commands(_session_argv(config), results))
    RunDir(run_dir).write_json("summary.json", summary.to_json())
    return write_report_html(run_dir, timeline, live=exitstatus is None)

