"""Errors a user can act on: each names the thing that is wrong and how to fix it, in one line."""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose (as opposed to a bug in the harness)."""


class ConfigError(HarnessError):
    """A profile, CLI flag, inventory or Terraform output is wrong: `file: field.path: expected X, got Y`."""


class TargetError(HarnessError):
    """The target could not be found, started, reached or stopped."""


class HostError(HarnessError):
    """A host could not run what it was asked to (unreachable, auth failed, command failed)."""
