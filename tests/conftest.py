"""The harness's own tests: at the end, one line of what was skipped and how to get it (a fresh machine skips
the SSH, Terraform and real-target tests unless their tools are there; .ci/run installs them)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        parts = "; ".join(f"{n} {why}" for why, n in reasons.most_common())
        terminalreporter.write_line(f"lvol-storm tests: {sum(reasons.values())} skipped: {parts}", yellow=True)
