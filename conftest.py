"""Registers the harness's pytest plugin for `tests/` and `suites/` alike."""

pytest_plugins = ["harness.pytest_plugin"]
