"""The lvol destroy fix: each named race aimed at `bdev_lvol_delete`, alone, bounded by the profile's duration.

A target with the bug fails here with the crash title in the failure (and so in the JUnit XML); a fixed one
passes. Nothing is ever suppressed: known issues do not apply to this suite.
"""

from __future__ import annotations

import pytest

from harness.config import RunConfig
from harness.hosts.base import Host
from harness.run import StormRun
from harness.rundir import RunDir
from harness.suite import storm_failure_message, with_storm


def test_delete_race(strategy: str, run_config: RunConfig, run_dir: RunDir, host: Host,
                     request: pytest.FixtureRequest) -> None:
    """One strategy as the only episode kind (the profile's mix runs beside it); crash or finding = fail."""
    cfg = with_storm(run_config, strategies={strategy: 1.0}, strategy_share=1.0)
    outcome = StormRun(cfg, run_dir, host, progress=False).execute()
    request.node.user_properties.append(("run_dir", str(run_dir.path)))
    request.node.user_properties.append(("strategy", strategy))
    message = storm_failure_message(outcome.summary)
    if message:
        pytest.fail(message, pytrace=False)
    storm = outcome.summary.get("storm") or {}
    assert storm.get("ops", 0) > 0, f"{strategy}: the storm sent no operations (stop: {storm.get('stop_reason')})"
