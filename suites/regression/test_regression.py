"""The lvol destroy fix: each named race aimed at `bdev_lvol_delete`, alone, bounded by the profile's duration.

A target with the bug fails here with the crash title in the failure (and so in the JUnit XML); a fixed one
passes. Nothing is ever suppressed: known issues do not apply to this suite. A new crash is minimized after
the failure is reported (`storm_run`), so the title shows the moment the target dies.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness.config import RunConfig
from harness.hosts.base import Host
from harness.longrun import with_storm
from harness.run import RunOutcome
from harness.rundir import RunDir
from harness.suite import storm_failure_message


def test_delete_race(strategy: str, run_config: RunConfig, run_dir: RunDir, host: Host,
                     storm_run: Callable[..., RunOutcome], request: pytest.FixtureRequest) -> None:
    """One strategy as the only episode kind (the profile's mix runs beside it); crash or finding = fail."""
    cfg = with_storm(run_config, strategies={strategy: 1.0}, strategy_share=1.0)
    request.node.user_properties.append(("strategy", strategy))
    outcome = storm_run(cfg, run_dir, host)
    message = storm_failure_message(outcome.summary)
    if message:
        pytest.fail(message, pytrace=False)
    storm = outcome.storm.to_dict() if outcome.storm else {}
    assert storm.get("ops", 0) > 0, f"{strategy}: the storm sent no operations (stop: {storm.get('stop_reason')})"
