"""Pure lvstore semantics shared by the reference target and the storm's checker (no sockets, no processes)."""

from harness.model.lvstore import (
    CLUSTERS_PER_TICK,
    MODEL_FAULTS,
    NAME_MAX,
    Job,
    Lvol,
    LvolStore,
    ModelCrash,
    ModelError,
)

__all__ = ["CLUSTERS_PER_TICK", "MODEL_FAULTS", "NAME_MAX", "Job", "Lvol", "LvolStore", "ModelCrash", "ModelError"]
