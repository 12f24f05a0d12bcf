"""Summary.merge: totals of parts that ran one after another (incarnations) or side by side (nodes)."""

from __future__ import annotations

from harness.summary import Part, Summary


def part(name: str, started: float, wall_s: float, ops: int) -> tuple[Part, Summary]:
    sub = Summary.model_validate({"kind": "run", "started": started, "wall_s": wall_s, "ops": ops,
                                  "ops_per_s": ops / wall_s, "verdict": "clean"})
    return Part(name=name, outcome="clean", ops=ops), sub


def test_rate_of_parts_in_sequence_is_not_their_sum() -> None:
    merged = Summary.merge("long-run", [part("inc-001", 1000.0, 10.0, 1000), part("inc-002", 1012.0, 10.0, 1000)])
    assert merged.ops == 2000 and merged.wall_s == 22.0 and merged.started == 1000.0
    assert round(merged.ops_per_s, 1) == round(2000 / 22.0, 1)


def test_rate_of_parts_side_by_side_adds_up() -> None:
    merged = Summary.merge("suite", [part("node-a", 1000.0, 10.0, 1000), part("node-b", 1000.5, 10.0, 1000)])
    assert 180 < merged.ops_per_s < 200 and merged.wall_s == 10.5


def test_a_part_without_timing_keeps_the_summed_rate_and_fields_override() -> None:
    untimed = (Part(name="x"), Summary.model_validate({"kind": "run", "ops": 5, "ops_per_s": 5.0}))
    merged = Summary.merge("suite", [part("a", 1000.0, 10.0, 100), untimed])
    assert merged.ops_per_s == 15.0 and merged.started is None
    given = Summary.merge("long-run", [part("a", 1000.0, 10.0, 100)], started=990.0, wall_s=30.0)
    assert given.started == 990.0 and given.wall_s == 30.0
