"""lvol-storm: stress and crash-hunting harness for SPDK's lvol layer (Longhorn v2 data engine)."""

__version__ = "0.1.0"
