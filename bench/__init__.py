"""`python -m bench` (`make bench`): how hard, how fast and how long the harness can push a target.

Each sub-benchmark measures one claim a user has to trust (throughput against a raw client, crash detection
latency, flat memory, watchdog cost, time to first operation, scaling) and returns `Figure` rows; the
entry point prints them as one table with each goal and whether this machine met it.
"""
