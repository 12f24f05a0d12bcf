"""The harness's pytest plugin comes in by its entry point (pyproject.toml `pytest11`): nothing to register here."""
