"""Under two minutes, every operation at least once: what `make test` runs against the reference target.

"Every operation" is every method the storm knows that the target offers (`rpc_get_methods`), checked from the
run's own counts (summary.json ops_by_method), so a target that lacks a Longhorn-only RPC is not blamed for it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.config import RunConfig
from harness.hosts.base import Host
from harness.longrun import with_storm
from harness.run import RunOutcome
from harness.rundir import RunDir
from harness.storm.operations import KNOWN_METHODS
from harness.storm.strategies import STRATEGIES
from harness.suite import storm_failure_message

# Strategies that reach methods the plain mix does not send: the shallow copy, and the lvstore rename (raced
# against a delete, and against every read or create that names the lvstore).
COVERAGE_STRATEGIES = ("busy-delete", "delete-during-lvstore-rename")


def test_every_operation(run_config: RunConfig, run_dir: RunDir, host: Host,
                         storm_run: Callable[..., RunOutcome]) -> None:
    strategies = dict(run_config.storm.strategies)
    for name in COVERAGE_STRATEGIES:
        if name in STRATEGIES:
            strategies.setdefault(name, 0.5)
    cfg = with_storm(run_config, strategies=strategies)
    outcome = storm_run(cfg, run_dir, host)
    message = storm_failure_message(outcome.summary)
    if message:
        pytest.fail(message, pytrace=False)
    offered = outcome.offered
    assert offered, "rpc_get_methods gave no methods"
    done = outcome.summary.ops_by_method
    expected = sorted(m for m in KNOWN_METHODS if m in offered)
    missing = [m for m in expected if not done.get(m)]
    assert not missing, (f"smoke: never sent {', '.join(missing)} in {outcome.summary.wall_s} s "
                         f"(the target offers them); raise --duration or the mix weights")
