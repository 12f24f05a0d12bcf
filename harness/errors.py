"""Errors a user can act on: each names the thing that is wrong and how to fix it, in one line."""

from __future__ import annotations

import reprlib


class HarnessError(Exception):
    """Base of every error the harness raises on purpose (as opposed to a bug in the harness)."""


class ConfigError(HarnessError):
    """A profile, CLI flag, inventory or Terraform output is wrong: `file: field.path: expected X, got Y`."""


class TargetError(HarnessError):
    """The target could not be found, started, reached or stopped."""


class HostError(HarnessError):
    """A host could not run what it was asked to (unreachable, auth failed, command failed)."""


class Stopped(HarnessError):
    """Asked to stop (the first Ctrl-C or SIGTERM) before the target was up: nothing ran, nothing to judge."""


SHOWN_MAX = 80
"""How much of a user's value an error line repeats: enough to recognise it, never a file's worth."""


def shown(value: object, limit: int = SHOWN_MAX, *, quote: bool = True) -> str:
    """`value` as an error line quotes it (its repr, or its str with `quote=False`), cut to `limit` characters:
    an error must never echo unbounded input (a 300-byte alias bomb once printed a 34.7 MB line)."""
    text = _SHORT.repr(value) if quote else str(value)  # reprlib walks no more of a container than it shows
    return text if len(text) <= limit else text[: limit - 3] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 8, 8, 8, 8
_SHORT.maxstring = _SHORT.maxother = 2 * SHOWN_MAX
