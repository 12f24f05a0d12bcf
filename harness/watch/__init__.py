"""Observe the target and signal (a threading.Event) when it dies or hangs; never act on the storm."""

from harness.watch.evidence import AbortMessage, CrashEvidence, Finding, MapEntry
from harness.watch.kmsg import UserFault, decode_error_bits, parse_fault
from harness.watch.targetlog import DEFAULT_ERROR_PATTERNS
from harness.watch.watchdog import Watchdog

__all__ = [
    "DEFAULT_ERROR_PATTERNS",
    "AbortMessage",
    "CrashEvidence",
    "Finding",
    "MapEntry",
    "UserFault",
    "Watchdog",
    "decode_error_bits",
    "parse_fault",
]
