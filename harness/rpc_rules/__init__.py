"""One table of SPDK's RPCs (`RULES`, one `Rule` per method) and the name sets derived from it.

Data only: it imports nothing from the harness, so rpc, model, sim, storm and minimize all read it.
"""

from harness.rpc_rules.rule import DST_SIZE_BYTES, Draw, Judge, Param, Rule, StormUse, Transition
from harness.rpc_rules.table import (
    BY_METHOD,
    LONGHORN_FORK_METHODS,
    MUTATING_LVOL_METHODS,
    OPTIONAL_LONGHORN_METHODS,
    READ_METHODS,
    READS,
    REQUIRED_LVOL_METHODS,
    RULES,
    SERVED_METHODS,
    rule_for,
)

__all__ = [
    "BY_METHOD",
    "DST_SIZE_BYTES",
    "LONGHORN_FORK_METHODS",
    "MUTATING_LVOL_METHODS",
    "OPTIONAL_LONGHORN_METHODS",
    "READS",
    "READ_METHODS",
    "REQUIRED_LVOL_METHODS",
    "RULES",
    "SERVED_METHODS",
    "Draw",
    "Judge",
    "Param",
    "Rule",
    "StormUse",
    "Transition",
    "rule_for",
]
