"""`io.jsonl`: every command the I/O lanes sent, one compact JSON array a line, streamed and bounded.

`[t_start, t_end, lane, op, nsid, lvol, lba, blocks, write_id, status]`: `op` is `r`, `w` or `f`, `lvol` the
lvol bdev's UUID, `write_id` 0 for reads, `status` `ok`, an NVMe status name, `lost` (the queue went down) or
`mismatch` (a read that showed the wrong block: the finding names it). Memory keeps a bounded tail (the crash
report's last I/O); the file stops growing at `max_bytes` and its last line says so.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import IO, Any

TAIL = 2000
FLUSH_LINES = 256


class IoHistory:
    def __init__(self, path: Path | None, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail: deque[list[Any]] = deque(maxlen=TAIL)
        self.written = 0
        self.cut = False
        self._buf: list[str] = []
        self._file: IO[str] | None = path.open("w", encoding="utf-8") if path is not None else None

    def record(self, row: list[Any]) -> None:
        self.tail.append(row)
        if self._file is None or self.cut:
            return
        line = json.dumps(row, separators=(",", ":"))
        if self.written + len(line) + 1 > self.max_bytes:
            self.cut = True
            self._buf.append(json.dumps(["cut", f"io.jsonl stops here: io.history_max_mb reached after "
                                                 f"{self.written} bytes"]))
            self.flush()
            return
        self.written += len(line) + 1
        self._buf.append(line)
        if len(self._buf) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if self._file is not None and self._buf:
            self._file.write("\n".join(self._buf) + "\n")
            self._file.flush()
            self._buf.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
