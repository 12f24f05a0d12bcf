"""What every suite shares: which suite this is, the checks that run before anything starts, where the run
directory and JUnit XML go, the nodes (this machine, an inventory, or Terraform), and the merged report.

`pytest suites/<name>` picks the suite from the path; its profile is the default `--profile`. Errors a user can
fix (a refused reference target, a bad `--set`, no credentials, no inventory) stop pytest with one line before
a target is started or a node provisioned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
import yaml

import harness
from harness.config import RunConfig, load_config
from harness.errors import ConfigError, HarnessError
from harness.hosts.local import LocalHost
from harness.known_issues import KnownIssues
from harness.pytest_plugin import cli_overrides
from harness.report.html import write_report_html
from harness.report.timeline import Timeline
from harness.rundir import RunDir, default_run_dir
from harness.sim.faults import parse_faults
from harness.storm.config import parse_duration
from harness.suite import (
    LOCAL_NODE,
    TERRAFORM_MODULE,
    LongRun,
    Node,
    SuiteSpec,
    check_target_choice,
    check_terraform_ready,
    inventory_from_terraform,
    load_nodes,
    resolve_where,
    suite_of_paths,
)
from harness.target import find_spdk_tgt

SUITES_DIR = Path(__file__).resolve().parent
SUITE_KEY = pytest.StashKey[SuiteSpec]()
WHERE_KEY = pytest.StashKey[str]()
CONFIG_KEY = pytest.StashKey[RunConfig]()
RESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()
PROVISION_KEY = pytest.StashKey[contextlib.ExitStack]()
TERMINAL_KEY = pytest.StashKey[TextIO]()
ROLLER_KEY = pytest.StashKey[tuple[threading.Event, threading.Thread]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("lvol-storm suites", "lvol-storm suites: nodes, known issues, long runs")
    g.addoption("--inventory", default=None, help="YAML list of lab nodes (see docs/SUITES.md); one xdist worker each")
    g.addoption("--terraform-module", default=None,
                help=f"module under terraform/ to provision nodes from (nightly's default: {TERRAFORM_MODULE}); "
                     "given explicitly, it wins over --target")
    g.addoption("--nodes", type=int, default=1, help="how many Terraform nodes to provision (nightly)")
    g.addoption("--keep-nodes", action="store_true", help="do not destroy Terraform nodes at the end")
    g.addoption("--tf-var", action="append", default=[], metavar="NAME=VALUE",
                help="Terraform variable for the node module, e.g. --tf-var runner_cidr=203.0.113.7/32 (repeatable)")
    g.addoption("--known-issues", default=None, help="known-issues YAML (default: known-issues.yaml at the repo "
                                                     "root); nightly and soak only")
    g.addoption("--health-every", default="60s", help="soak/nightly: health line period")
    g.addoption("--report-every", default="60s", help="soak/nightly: summary.json/report.html rewrite period")


def _usage(exc: HarnessError) -> pytest.UsageError:
    return pytest.UsageError(str(exc))


def _effective_config(config: pytest.Config) -> RunConfig:
    return load_config(config.getoption("profile"), overrides=config.getoption("lvs_set"),
                       cli=cli_overrides(lambda name: config.getoption(name)))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        spec = suite_of_paths(config.args, SUITES_DIR)
    except ConfigError as exc:
        raise _usage(exc) from None
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
            config.option.terraform_module = None
    else:
        if config.getoption("run_dir") is None:
            config.option.run_dir = str(default_run_dir(spec.name).absolute())
        if getattr(config.option, "xmlpath", None) is None:
            config.option.xmlpath = str(Path(config.option.run_dir) / "junit.xml")
    try:
        cfg = _effective_config(config)
        parse_faults(cfg.target.sim_fault)
        target_flag = config.getoption("target")
        where = resolve_where(spec, inventory=config.getoption("inventory"), target_flag=target_flag,
                              terraform_module=config.getoption("terraform_module"))
        if where == "inventory":
            load_nodes(config.getoption("inventory"))
        elif where == "terraform" and worker is None:
            check_terraform_ready(spec, config.getoption("terraform_module") or TERRAFORM_MODULE, tf_vars(config))
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
    if spec.long_run and TERMINAL_KEY not in config.stash:
        # pytest captures fd 2 during a test; configure runs with capture suspended, so this is the real one.
        config.stash[TERMINAL_KEY] = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker writes into the controller's run directory and uses its (provisioned) inventory."""
    config = node.config
    if SUITE_KEY in config.stash:
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
            return len(load_nodes(inventory))
    except HarnessError:
        return None  # pytest_configure reports it in one line
    if config.getoption("terraform_module") or (spec.where == "terraform" and config.getoption("target") is None):
        return max(1, config.getoption("nodes"))
    return 1


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _provision(session)
    _start_session_roller(session)


def _provision(session: pytest.Session) -> None:
    """Nightly on Terraform: provision once, in the controller, before any worker starts; destroy at the end."""
    config = session.config
    if SUITE_KEY not in config.stash or hasattr(config, "workerinput"):
        return
    if config.stash.get(WHERE_KEY, "local") != "terraform":
        return
    from harness.provision.terraform import Terraform, TerraformSession

    run_dir = Path(config.option.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    config.stash[PROVISION_KEY] = stack
    variables = {"run_id": hashlib.sha1(str(run_dir).encode()).hexdigest()[:8],
                 "node_count": config.getoption("nodes"), **tf_vars(config)}
    tf = Terraform(config.getoption("terraform_module") or TERRAFORM_MODULE, run_dir / "terraform", variables,
                   run_dir / "terraform.log")
    outputs = stack.enter_context(TerraformSession(tf, keep=config.getoption("keep_nodes")).active())
    config.option.inventory = str(inventory_from_terraform(outputs, run_dir))
    config.stash[WHERE_KEY] = "inventory"


def tf_vars(config: pytest.Config) -> dict[str, Any]:
    """`--tf-var name=value` (values parsed as YAML, so numbers stay numbers)."""
    out: dict[str, Any] = {}
    for item in config.getoption("tf_var"):
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--tf-var {item}: expected NAME=VALUE, e.g. runner_cidr=203.0.113.7/32")
        out[name.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


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


def suite_nodes(config: pytest.Config) -> list[Node]:
    inventory = config.getoption("inventory")
    return load_nodes(inventory) if inventory else [LOCAL_NODE]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    if SUITE_KEY not in config.stash:
        return
    if "node" in metafunc.fixturenames:
        nodes = suite_nodes(config)
        metafunc.parametrize("node", nodes, ids=[n.name for n in nodes])
    if "strategy" in metafunc.fixturenames:
        names = list(config.stash[CONFIG_KEY].storm.strategies)
        metafunc.parametrize("strategy", names, ids=names)


@pytest.fixture
def node_config(run_config: RunConfig, node: Node) -> RunConfig:
    """The run config with what the inventory says about this node (spdk_tgt, cpumask, hugepages, disk)."""
    return node.apply(run_config)


@pytest.fixture
def long_run(pytestconfig: pytest.Config, suite_spec: SuiteSpec, node: Node, node_config: RunConfig,
             session_run_dir: Path, known_issues: KnownIssues, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Runs a nightly/soak on one node (Ctrl-C drains, saves, reports) and hands back its outcome."""
    from harness.run import interrupt_sets

    def run() -> Any:
        run_dir = session_run_dir / node.name
        run_dir.mkdir(parents=True, exist_ok=True)
        host = node.host()
        stop = threading.Event()
        work_dir = None if node.is_local else f"/var/tmp/lvol-storm/{session_run_dir.name}/{node.name}"
        ctx = interrupt_sets(stop) if threading.current_thread() is threading.main_thread() \
            else contextlib.nullcontext()
        log = run_dir / "health.log"

        def announce(msg: str) -> None:
            """Past pytest's capture (a soak is watched live), and into health.log for later."""
            terminal = pytestconfig.stash.get(TERMINAL_KEY, None)
            if terminal is not None:
                with contextlib.suppress(OSError, ValueError):
                    terminal.write(msg + "\n")
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {msg}\n")

        try:
            with ctx:
                outcome = LongRun(
                    suite_spec.name, node_config, run_dir, host, known=known_issues, stop_event=stop,
                    announce=announce,
                    health_every_s=parse_duration(pytestconfig.getoption("health_every")),
                    report_every_s=parse_duration(pytestconfig.getoption("report_every")),
                    node=node.name, work_dir=work_dir,
                ).execute()
        finally:
            close = getattr(host, "close", None)
            if close is not None and not node.is_local:
                close()
        request.node.user_properties.append(("run_dir", str(run_dir)))
        request.node.user_properties.append(("node", node.name))
        request.node.user_properties.append(("worker", os.environ.get("PYTEST_XDIST_WORKER", "main")))
        return outcome

    yield run


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
    props = dict(report.user_properties)
    config.stash[RESULTS_KEY].append({
        "nodeid": report.nodeid, "outcome": report.outcome, "duration_s": round(report.duration, 3),
        "run_dir": props.get("run_dir"), "node": props.get("node", "local"), "worker": props.get("worker"),
        "message": str(report.longrepr.reprcrash.message) if report.failed and hasattr(report.longrepr, "reprcrash")
        and report.longrepr.reprcrash is not None else None,
    })


@pytest.hookimpl(trylast=True)
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
                write_session_report(Path(config.option.run_dir), spec, list(config.stash[RESULTS_KEY]),
                                     config.stash.get(CONFIG_KEY, None), None, _session_argv(config),
                                     timeline=timeline)

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
    write_session_report(Path(config.option.run_dir), config.stash[SUITE_KEY], config.stash[RESULTS_KEY],
                         config.stash.get(CONFIG_KEY, None), int(exitstatus), _session_argv(config))


def _still_running(run_dir: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes whose long run has a rolling summary.json but no test result yet."""
    done = {str(Path(r["run_dir"])) for r in results if r.get("run_dir")}
    out = []
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        data = _read_json(sub / "summary.json")
        if data.get("running") and str(sub) not in done:
            out.append({"nodeid": sub.name, "outcome": "running", "run_dir": str(sub),
                        "node": data.get("node", sub.name), "worker": None, "message": None})
    return out


def write_session_report(run_dir: Path, spec: SuiteSpec, results: list[dict[str, Any]],
                         cfg: RunConfig | None, exitstatus: int | None, argv: list[str] | None = None,
                         timeline: Timeline | None = None) -> Path:
    """One summary.json and report.html for the whole session: tests (and nodes) merged, crashes counted.

    `exitstatus` None means the session is still running (a long run's rolling rewrite)."""
    rd = RunDir(run_dir)
    running = exitstatus is None
    if running:
        results = results + _still_running(run_dir, results)
    breakdown: list[dict[str, Any]] = []
    ops: dict[str, int] = {}
    errors: dict[str, int] = {}
    crashes: dict[str, int] = {}
    target: dict[str, Any] = {}
    for res in results:
        sub = _read_json(Path(res["run_dir"]) / "summary.json") if res.get("run_dir") else {}
        for k, v in (sub.get("ops_by_method") or {}).items():
            ops[k] = ops.get(k, 0) + v
        for k, v in (sub.get("errors_by_errno") or {}).items():
            errors[k] = errors.get(k, 0) + v
        sub_crashes = sub.get("crashes") or []
        for c in sub_crashes:
            crashes[c["title"]] = crashes.get(c["title"], 0) + int(c.get("count", 1))
        target = sub.get("target") or target
        breakdown.append({"name": res["nodeid"].split("::")[-1], "node": res.get("node"),
                          "outcome": res["outcome"], "ops": sum((sub.get("ops_by_method") or {}).values()),
                          "findings": sub.get("findings") or [],
                          "crashes": [{"title": c["title"], "count": c.get("count", 1)} for c in sub_crashes],
                          "message": res.get("message"), "run_dir": res.get("run_dir"), "worker": res.get("worker"),
                          "incarnations": sub.get("incarnations")})
    nodes: dict[str, dict[str, Any]] = {}
    for b in breakdown:
        n = nodes.setdefault(str(b["node"]), {"tests": 0, "failed": 0, "ops": 0, "crashes": 0})
        n["tests"] += 1
        n["failed"] += b["outcome"] == "failed"
        n["ops"] += b["ops"]
        n["crashes"] += sum(c["count"] for c in b["crashes"])
    summary = {
        "suite": spec.name,
        "versions": {"harness": harness.__version__, "python": platform.python_version(),
                     "pytest": pytest.__version__, "kernel": platform.release(),
                     "target": target.get("version")},
        "profile": cfg.profile if cfg else spec.profile,
        "seed": cfg.storm.seed if cfg else None,
        "exit_status": exitstatus,
        "running": running,
        "updated": time.time(),
        "finished": time.time(),
        "target": target,
        "tests": len(results),
        "failed": sum(r["outcome"] == "failed" for r in results),
        "ops_by_method": ops,
        "errors_by_errno": errors,
        "crashes": [{"title": t, "count": n} for t, n in sorted(crashes.items(), key=lambda kv: -kv[1])],
        "nodes": nodes,
        "breakdown": breakdown,
        "junit": str(run_dir / "junit.xml"),
        "reproducer": _rerun_commands(argv or [], results),
        "config": cfg.model_dump(mode="json") if cfg else None,
    }
    rd.write_json("summary.json", summary)
    return write_report_html(run_dir, timeline, live=running)


def _rerun_commands(argv: list[str], results: list[dict[str, Any]]) -> list[str]:
    """The session's own command (same seed), then each failed test alone (`-k`), into a new run directory."""
    base: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("--run-dir", "--junitxml", "-k"):
            skip_next = True
        elif not arg.startswith(("--run-dir=", "--junitxml=", "-k=")):
            base.append(arg)
    head = [".venv/bin/python", "-m", "pytest", *base]
    cmds = [shlex.join([*head, *(["-k", argv[argv.index("-k") + 1]] if "-k" in argv[:-1] else [])])]
    for res in results:
        if res["outcome"] == "failed":
            node = res["nodeid"]
            ident = node.split("[", 1)[1].rstrip("]") if "[" in node else node.split("::")[-1]
            cmds.append(shlex.join([*head, "-k", ident]))
    return list(dict.fromkeys(cmds))[:6]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
