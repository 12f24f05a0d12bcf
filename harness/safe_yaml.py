"""YAML from users (profiles, `--set` values, inventories, known issues, a history's config.yaml), read with
bounds: a file is small, its aliases cannot multiply it, and a key said twice is a mistake, not a choice.

PyYAML shares an aliased node instead of copying it, so a 300-byte file of nested aliases loads in a blink as
a graph that everything after (validation, an error that prints the value, `yaml.safe_dump`) walks expanded:
nine levels took 5.7 GB and never answered. Composing counts every value as it will be expanded and stops at
`MAX_VALUES`; the file is refused beyond `MAX_BYTES` before it is parsed. Every refusal is one ConfigError
line naming the file (and line) and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, SequenceNode

from harness.errors import ConfigError, shown

MAX_BYTES = 1 << 20
"""1 MiB: some 500 times the largest profile lvol-storm ships, and parsed in well under a second."""
MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) the document holds with every alias expanded; a lab inventory of a
thousand nodes has some 20,000."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that charges each composed value, an alias at its expanded size, and refuses duplicate keys."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.values = 0
        self.sizes: dict[int, int] = {}
        """id(node) -> the number of values it holds expanded (itself included), once it is composed."""

    def _charge(self, count: int, mark: Mark) -> None:
        self.values += count
        if self.values > MAX_VALUES:
            raise ConfigError(
                f"{self.source}:{mark.line + 1}:{mark.column + 1}: its aliases expand to more than {MAX_VALUES:,} "
                "values (an alias bomb?): write the repeated values out, or nest fewer aliases")

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        alias = self.peek_event() if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if alias is not None:
            mark = alias.start_mark
            size = self.sizes.get(id(node))
            if size is None:  # the alias is inside the node it names: not finished, so not sized
                raise ConfigError(f"{self.source}:{mark.line + 1}:{mark.column + 1}: an alias refers to a value "
                                  "that contains it: a configuration cannot contain itself; write it out")
            self._charge(size, mark)
            return node
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self.sizes[id(child)] for child in node.value)
        elif isinstance(node, MappingNode):
            size += sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        self.sizes[id(node)] = size
        self._charge(1, node.start_mark)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *base`: keys written beside it override the merged ones, on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: SafeConstructor says so below
            if line != key_node.start_mark.line + 1:
                raise ConfigError(f"{self.source}:{key_node.start_mark.line + 1}: duplicate key {shown(key)} (first "
                                  f"on line {line}): keep one of them")
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` (None when empty), bounded as the module says; `source` names it in errors."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters of YAML, more than the {MAX_BYTES:,} lvol-storm reads: "
                          "is it the right file?")
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0]
        raise ConfigError(f"{source}{where}: not valid YAML: {shown(problem, quote=False)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to read: flatten it") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | os.PathLike[str], what: str = "YAML file") -> Any:
    """A user's YAML file (`what` it should be: "profile", "inventory", ...): at most MAX_BYTES, UTF-8 text,
    then `load_yaml`. Every failure, a missing or unreadable file included, is one ConfigError line."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_BYTES + 1)  # not stat(): a FIFO or /dev/zero has no size to ask
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{p}: more than {MAX_BYTES:,} bytes, far more than a {what} holds: is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}), so not YAML: a "
                          f"binary file? give the {what} here") from None
    return load_yaml(text, str(p))
