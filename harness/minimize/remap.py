"""`Remap`: recorded UUIDs (and ids, generated names) -> the ones a fresh target handed out on replay.

A replayed `bdev_lvol_create` returns a new UUID; every later call that used the recorded one must use the
new one. Names given by the caller are the same on replay, so only what the target generated is mapped:
string results (UUIDs, generated bdev names) and the id fields of dict results (`operation_id`). An alias
`lvs/<uuid>` is mapped part by part.
"""

from __future__ import annotations

from typing import Any

from harness.minimize.deps import ID_KEYS


class Remap:
    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.ints: dict[int, int] = {}

    def learn(self, recorded: Any, replayed: Any) -> None:
        """Pair what the history recorded with what the fresh target answered for the same call."""
        if isinstance(recorded, str) and isinstance(replayed, str):
            if recorded and recorded != replayed:
                self.strings[recorded] = replayed
        elif isinstance(recorded, dict) and isinstance(replayed, dict):
            for key in ID_KEYS:
                self.learn_scalar(recorded.get(key), replayed.get(key))

    def learn_scalar(self, recorded: Any, replayed: Any) -> None:
        if isinstance(recorded, bool) or isinstance(replayed, bool):
            return
        if isinstance(recorded, int) and isinstance(replayed, int) and recorded != replayed:
            self.ints[recorded] = replayed
        elif isinstance(recorded, str) and isinstance(replayed, str) and recorded and recorded != replayed:
            self.strings[recorded] = replayed

    def _text(self, text: str) -> str:
        hit = self.strings.get(text)
        if hit is not None:
            return hit
        if "/" in text:
            return "/".join(self.strings.get(part, part) for part in text.split("/"))
        return text

    def apply(self, value: Any, key: str | None = None, depth: int = 0) -> Any:
        """`value` (params) with every recorded UUID/id replaced; a new object, the input is not changed."""
        if depth > 20:
            return value
        if isinstance(value, str):
            return self._text(value) if self.strings else value
        if isinstance(value, dict):
            return {k: self.apply(v, str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.apply(v, key, depth + 1) for v in value]
        if isinstance(value, int) and not isinstance(value, bool) and key in ID_KEYS:
            return self.ints.get(value, value)
        return value

    def __len__(self) -> int:
        return len(self.strings) + len(self.ints)
