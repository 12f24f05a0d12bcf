"""Crash reports: a stable title per bug, the decoded fault, symbols, core and backtrace, a reproducer."""

from harness.report.backtrace import Backtrace, parse_gdb_backtrace
from harness.report.core import CorePattern
from harness.report.crash import CrashReport
from harness.report.title import crash_title

__all__ = ["Backtrace", "CorePattern", "CrashReport", "crash_title", "parse_gdb_backtrace"]
