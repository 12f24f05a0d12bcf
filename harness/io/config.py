"""The `io:` section of a profile (and `--io`): whether the storm does I/O, how much, and where it exports."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class IoConfig(BaseModel):
    """Reads and writes over NVMe/TCP to the storm's lvols while its workers change them."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="do I/O (the --io flag)")
    lanes: int = Field(2, description="I/O queues, one NVMe/TCP connection each")
    depth: int = Field(2, description="commands each lane keeps in flight (2 lanes x 2: the RPC storm kept 0.7 "
                                      "of its rate beside them on a real spdk_tgt, 0.46 with depth 4; bench io)")
    max_blocks: int = Field(4, description="blocks per command at most (1..max_blocks; over 1: R2T writes)")
    read_share: float = Field(0.5, description="fraction of commands that are reads")
    namespaces: int = Field(8, description="lvols exported at once")
    hot_clusters: int = Field(3, description="clusters per lvol the I/O lands in (the first ones and the last): "
                                             "bounds the space and memory writes take")
    rotate_share: float = Field(0.05, description="fraction of export rounds that unexport one lvol to export "
                                                  "another (nvmf_subsystem_remove_ns under I/O)")
    address: str = Field("127.0.0.1", description="the listener's address (the target host's, seen from here)")
    port: int = Field(0, description="the listener's TCP port; 0: a free one")
    io_timeout: float = Field(10.0, description="seconds a command may take before the target is unresponsive")
    rate_limit: float | None = Field(None, description="commands per second, all lanes together")
    history_max_mb: int = Field(256, description="io.jsonl is cut off past this size (a note says so)")

    @model_validator(mode="after")
    def _check(self) -> IoConfig:
        for name in ("lanes", "depth", "max_blocks", "namespaces", "hot_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_blocks > 32:
            raise ValueError(f"max_blocks: at most 32 (128 KiB, SPDK's max_io_size), got {self.max_blocks}")
        for name in ("read_share", "rotate_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be within [0, 1], got {getattr(self, name)}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port: must be 0..65535, got {self.port}")
        if self.io_timeout <= 0:
            raise ValueError(f"io_timeout: must be > 0, got {self.io_timeout}")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError(f"rate_limit: must be > 0 (or unset), got {self.rate_limit}")
        return self
