"""Open-ended storm on lab nodes from an inventory: until `--duration` (e.g. 12h) or Ctrl-C.

A health line every minute (stderr and health.log), summary.json and report.html rewritten atomically every
minute so they are valid whenever someone opens them, and the target restarted after every crash.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

from harness.suite import LongRunOutcome, known_issue_notice, long_run_failure


def test_soak(long_run: Callable[[], LongRunOutcome]) -> None:
    outcome: Any = long_run()
    message = long_run_failure(outcome)
    if message:
        pytest.fail(message, pytrace=False)
    assert outcome.incarnations, "no incarnation ran"
    notice = known_issue_notice(outcome)
    if notice:
        warnings.warn(notice, UserWarning, stacklevel=1)
