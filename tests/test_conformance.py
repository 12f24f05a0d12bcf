"""Conformance: replay every recorded spdk_tgt transcript against the reference target's Dispatcher in-process.

Replies must equal the recording except for generated values: UUIDs (a recorded UUID is mapped to ours the
first time both appear at the same place, then substituted in later requests and compared in later replies),
`creation_time`, and the reference target's version suffix. Data checksums are compared exactly: the data is
all zeroes and the model computes SPDK's CRC-64 of it. `rpc_get_methods` lists are
compared by shape: ours is a subsequence of the recorded list (same names, same order). Steps sent as raw
bytes are transport-level (the server's tests cover them) and are skipped here with their reason.

The transcripts in tests/data/transcripts were recorded by this project (tests/tools/record_transcript.py)
from the same fork: external snapshots, set_parent_bdev, degraded esnap clones, nested lvstores, a reload of
many lvols, parameter bounds. A step noted `deferred` was sent on a second connection and answered only after
the step its note names (a delete of an external snapshot an esnap clone holds); the replay asks the reference
target's `DeferredReply` for it after that step.

Transcript 05 shows Longhorn's forced-removal bug. Healthy mode must answer steps 48/58 with the same EBUSY
but keep the snapshot, so the steps that show it gone are asserted against the healthy expectation
(HEALTHY_05, derived below); with faults={"forced-removal"} the recording must be reproduced step for step.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.recordings import recordings_dir
from harness.sim.framework_methods import REFERENCE_SUFFIX
from harness.sim.methods import Dispatcher
from harness.sim.protocol import DeferredReply, RpcFault

TRANSCRIPTS = recordings_dir() / "transcripts"
OUR_TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "transcripts"
"""Transcripts this project recorded from a real build (tests/tools/record_transcript.py)."""
DEFERRED_AFTER = re.compile(r"answered after step (\d+)")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
IGNORED_KEYS = frozenset({"creation_time"})
AIO_FILE = "/usr/src/spdk/aio0.img"

pytestmark = pytest.mark.skipif(not TRANSCRIPTS.is_dir(), reason=f"{TRANSCRIPTS} not present")


def _transcripts() -> list[Path]:
    shared = sorted(TRANSCRIPTS.glob("*.json")) if TRANSCRIPTS.is_dir() else []
    return shared + sorted(OUR_TRANSCRIPTS.glob("*.json"))


def deferred_until(step: dict[str, Any]) -> int | None:
    """For a step whose reply came only after later steps: the step after which it came (-1: it never came
    while the recording ran). None for an ordinary step."""
    note = step.get("note") or ""
    if not note.startswith("deferred"):
        return None
    m = DEFERRED_AFTER.search(note)
    if m:
        return int(m.group(1))
    return None if step.get("response") is not None else -1


@dataclass
class Outcome:
    """What a replay found: per step, `match`, `skip: reason` or `MISMATCH: ...`."""

    name: str
    results: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return sum(r == "match" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.startswith("skip") for r in self.results)

    @property
    def mismatches(self) -> list[str]:
        return [f"step {i}: {r}" for i, r in enumerate(self.results) if r.startswith("MISMATCH")]


class Replayer:
    """Replays one transcript's steps in order against one Dispatcher, mapping recorded UUIDs to ours."""

    def __init__(self, dispatcher: Dispatcher, tmp_path: Path) -> None:
        self.d = dispatcher
        self.uuids: dict[str, str] = {}
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.aio_file = tmp_path / "aio0.img"

    def substitute(self, value: Any) -> Any:
        if isinstance(value, str):
            if value == AIO_FILE:
                return str(self.aio_file)
            return self.uuids.get(value, value)
        if isinstance(value, list):
            return [self.substitute(v) for v in value]
        if isinstance(value, dict):
            return {k: self.substitute(v) for k, v in value.items()}
        return value

    def compare(self, expected: Any, actual: Any, path: str = "") -> str | None:
        """None when equal modulo generated values; else where they differ. Learns UUID mappings on the way."""
        if isinstance(actual, str) and actual == str(self.aio_file):
            actual = AIO_FILE  # our aio file, shown under the recording's conventional path
        if isinstance(expected, str) and UUID_RE.match(expected):
            if not isinstance(actual, str):
                return f"{path}: expected a UUID, got {actual!r}"
            mapped = self.uuids.get(expected)
            if mapped is None:
                if not UUID_RE.match(actual) or actual in self.uuids.values():
                    return f"{path}: expected a new UUID, got {actual!r}"
                self.uuids[expected] = actual
                return None
            return None if mapped == actual else f"{path}: expected {mapped} (recorded {expected}), got {actual!r}"
        if isinstance(expected, dict):
            if not isinstance(actual, dict):
                return f"{path}: expected an object, got {actual!r}"
            if set(expected) != set(actual):
                missing, extra = set(expected) - set(actual), set(actual) - set(expected)
                return f"{path}: keys differ: missing {missing}, extra {extra}"
            for key in expected:
                if key in IGNORED_KEYS:
                    continue
                problem = self.compare(expected[key], actual[key], f"{path}.{key}")
                if problem:
                    return problem
            return None
        if isinstance(expected, list):
            if not isinstance(actual, list) or len(expected) != len(actual):
                return f"{path}: expected a list of {len(expected)}, got {json.dumps(actual)[:300]}"
            for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
                problem = self.compare(e, a, f"{path}[{i}]")
                if problem:
                    return problem
            return None
        if type(expected) is not type(actual) or expected != actual:
            return f"{path}: expected {json.dumps(expected)[:200]}, got {json.dumps(actual)[:200]}"
        return None

    def call(self, method: str, params: Any) -> dict[str, Any]:
        try:
            return {"result": self.d.handle(method, params)}
        except RpcFault as fault:
            return {"error": {"code": fault.code, "message": fault.message}}

    def send_deferred(self, step: dict[str, Any]) -> Any:
        """A step whose reply SPDK sends later: the DeferredReply the reference target gives for it (or the
        reply it gave at once)."""
        request = step["request"]
        return self.call(request["method"], self.substitute(request.get("params")))

    def collect_deferred(self, step: dict[str, Any], pending: Any) -> str:
        """The deferred step's verdict, now that the steps before its reply have run."""
        request = step["request"]
        got = pending.get("result")
        if isinstance(got, DeferredReply):
            if not got.ready():
                if step.get("response") is None:
                    return "match"
                return f"MISMATCH: {request['method']}: no reply yet where the recording has one"
            try:
                pending = {"result": got.result()}
            except RpcFault as fault:
                pending = {"error": {"code": fault.code, "message": fault.message}}
        if step.get("response") is None:
            return f"MISMATCH: {request['method']}: answered {json.dumps(pending)[:200]}, the recording got none"
        expected = {k: v for k, v in step["response"].items() if k in ("result", "error")}
        return self.judge(request["method"], request, expected, pending)

    def step(self, step: dict[str, Any], expected_override: dict[str, Any] | None = None) -> str:
        if "raw" in step or "raw" in (step.get("request") or {}):
            return f"skip: raw bytes are transport-level ({step.get('note', '')[:60]})"
        request, response = step["request"], expected_override or step["response"]
        method = request["method"]
        if step["tag"] == "bdev_aio_create":
            self.aio_file.write_bytes(b"")
            with self.aio_file.open("r+b") as f:
                f.truncate(64 * 1024 * 1024)  # the recording: a 64 MiB file ...
        if step["tag"] == "bdev_aio_rescan":
            with self.aio_file.open("r+b") as f:
                f.truncate(128 * 1024 * 1024)  # ... grown to 128 MiB before the rescan
        reply = self.call(method, self.substitute(request.get("params")) if "params" in request else None)
        expected = {k: v for k, v in response.items() if k in ("result", "error")}
        return self.judge(method, request, expected, reply)

    def judge(self, method: str, request: dict[str, Any], expected: dict[str, Any], reply: dict[str, Any]) -> str:
        if set(expected) != set(reply):
            return f"MISMATCH: {method}: expected {json.dumps(expected)[:300]}, got {json.dumps(reply)[:300]}"
        if "error" in expected:
            problem = self.compare(expected["error"], reply["error"], "error")
            return f"MISMATCH: {method}: {problem}" if problem else "match"
        exp, got = expected["result"], reply["result"]
        if method == "spdk_get_version" and isinstance(got, dict) and isinstance(got.get("version"), str):
            if not got["version"].endswith(REFERENCE_SUFFIX):
                return "MISMATCH: spdk_get_version: the reference target must identify itself"
            got = {**got, "version": got["version"][: -len(REFERENCE_SUFFIX)]}
        if method == "rpc_get_methods" and isinstance(exp, list):
            return self.judge_methods(exp, got)
        problem = self.compare(exp, got, "result")
        return f"MISMATCH: {method}: {problem}" if problem else "match"

    @staticmethod
    def judge_methods(recorded: list[str], ours: Any) -> str:
        if not isinstance(ours, list) or not ours or not all(isinstance(m, str) for m in ours):
            return f"MISMATCH: rpc_get_methods: not a list of names: {ours!r}"
        position = {name: i for i, name in enumerate(recorded)}
        missing = [m for m in ours if m not in position]
        if missing:
            return f"MISMATCH: rpc_get_methods: names the recording does not have: {missing}"
        order = [position[m] for m in ours]
        if order != sorted(order):
            return "MISMATCH: rpc_get_methods: not in the recorded order"
        lvol = {m for m in recorded if m.startswith("bdev_lvol_")}
        if not lvol <= set(ours):
            return f"MISMATCH: rpc_get_methods: lvol methods missing: {sorted(lvol - set(ours))}"
        return "match"


def replay(path: Path, dispatcher: Dispatcher, tmp_path: Path,
           overrides: dict[int, dict[str, Any]] | None = None) -> Outcome:
    data = json.loads(path.read_text())
    replayer = Replayer(dispatcher, tmp_path)
    outcome = Outcome(path.stem)
    steps = data["steps"]
    waiting: dict[int, tuple[int, Any]] = {}  # deferred step -> (the step after which it is answered, its reply)
    for i, step in enumerate(steps):
        until = deferred_until(step)
        if until is None:
            outcome.results.append(replayer.step(step, (overrides or {}).get(i)))
        else:
            waiting[i] = (until if until >= 0 else len(steps) - 1, replayer.send_deferred(step))
            outcome.results.append("match")  # judged below, once its reply is due
        for j, (after, pending) in list(waiting.items()):
            if after == i:
                outcome.results[j] = replayer.collect_deferred(steps[j], pending)
                del waiting[j]
    return outcome


# ---- transcript 05 in healthy mode: the snapshots stay -------------------------------------------------------------

T05 = TRANSCRIPTS / "longhorn-v24.09-05_longhorn_extras.json"


def healthy_05_expectations() -> dict[int, dict[str, Any]]:
    """The replies a correct target gives where the recording shows the forced removal's effects."""
    steps = json.loads(T05.read_text())["steps"]
    bs_uuid = steps[46]["request"]["params"]["src_lvol_name"]  # BS

    def with_parent(step: int, parent: str) -> dict[str, Any]:
        bdev = copy.deepcopy(steps[step]["response"]["result"][0])
        lvol = bdev["driver_specific"]["lvol"]
        items = list(lvol.items())
        pos = [k for k, _ in items].index("clone") + 1
        bdev["driver_specific"]["lvol"] = dict([*items[:pos], ("base_snapshot", parent), *items[pos:]])
        return {"result": [bdev]}

    def snapshot_bdev(template_step: int, snap_uuid: str, name: str, clones: list[str]) -> dict[str, Any]:
        bdev = copy.deepcopy(steps[template_step]["response"]["result"][0])
        bdev.update(name=snap_uuid, uuid=snap_uuid, aliases=[f"lvs0/{name}"])
        bdev["supported_io_types"].update(write=False, unmap=False, write_zeroes=False)
        lvol = {"lvol_store_uuid": bdev["driver_specific"]["lvol"]["lvol_store_uuid"], "base_bdev": "Malloc0",
                "thin_provision": False, "num_allocated_clusters": 200, "snapshot": True, "clone": False}
        if clones:
            lvol["clones"] = clones
        lvol["esnap_clone"] = False
        bdev["driver_specific"]["lvol"] = lvol
        return {"result": [bdev]}

    final = copy.deepcopy(steps[64]["response"]["result"])
    final.append({**copy.deepcopy(final[3]), "alias": "lvs0/BS", "uuid": bs_uuid, "name": "BS",
                  "is_thin_provisioned": False, "is_snapshot": True, "is_clone": False})
    stores = copy.deepcopy(steps[65]["response"]["result"])
    stores[0]["free_clusters"] = 301  # BS keeps its 200 clusters, BS2 (deleted in 63) gave its 200 back
    return {
        49: snapshot_bdev(51, bs_uuid, "BS", ["B"]),
        51: with_parent(51, "BS"),
        54: snapshot_bdev(51, bs_uuid, "BS", []),
        60: with_parent(60, "BS2"),
        63: {"result": True},
        64: {"result": final},
        65: {"result": stores},
    }


# ---- the tests ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", _transcripts(), ids=lambda p: p.stem)
def test_transcript_replays_in_healthy_mode(path: Path, tmp_path: Path) -> None:
    overrides = healthy_05_expectations() if path == T05 else None
    outcome = replay(path, Dispatcher(seed=1), tmp_path, overrides)
    assert not outcome.mismatches, "\n".join(outcome.mismatches)
    assert outcome.matched + outcome.skipped == len(outcome.results)


@pytest.mark.timeout(60)
def test_transcript_05_reproduced_step_for_step_with_forced_removal(tmp_path: Path) -> None:
    dispatcher = Dispatcher(faults=frozenset({"forced-removal"}), seed=2)
    outcome = replay(T05, dispatcher, tmp_path)
    assert not outcome.mismatches, "\n".join(outcome.mismatches)
    assert outcome.matched == len(outcome.results)


@pytest.mark.timeout(60)
def test_healthy_05_differs_from_the_recording_exactly_where_the_bug_shows(tmp_path: Path) -> None:
    """Without the overrides, healthy mode must disagree with the recording on precisely those steps."""
    outcome = replay(T05, Dispatcher(seed=3), tmp_path)
    bad = {int(m.split(":")[0].split()[1]) for m in outcome.mismatches}
    assert bad == set(healthy_05_expectations())


@pytest.mark.timeout(60)
def test_forced_removal_logs_the_recorded_lines_at_the_removal(tmp_path: Path) -> None:
    steps = json.loads(T05.read_text())["steps"]
    dispatcher = Dispatcher(faults=frozenset({"forced-removal"}), seed=4)
    replayer = Replayer(dispatcher, tmp_path)
    for i, step in enumerate(steps[:48]):
        assert replayer.step(step) == "match", i
    dispatcher.drain_log_lines()
    assert replayer.step(steps[48]) == "match"
    lines = dispatcher.drain_log_lines()
    recorded = (recordings_dir() / "target-log" / "longhorn-v24.09-forced-removal-then-segv.log").read_text()
    tail = [re.sub(r"^\[[^\]]*\] ", "", line) for line in recorded.splitlines()[-3:]]
    assert lines == tail


def test_conformance_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prints the per-transcript score (run with -s to see it); fails if any transcript regressed."""
    rows = []
    for i, path in enumerate(_transcripts()):
        overrides = healthy_05_expectations() if path == T05 else None
        out = replay(path, Dispatcher(seed=10 + i), tmp_path / str(i), overrides)
        rows.append((out.name, out.matched, out.skipped, len(out.results)))
        if path == T05:
            forced = replay(path, Dispatcher(faults=frozenset({"forced-removal"}), seed=99), tmp_path / "f")
            rows.append((out.name + " [forced-removal]", forced.matched, forced.skipped, len(forced.results)))
    with capsys.disabled():
        print()
        for name, matched, skipped, total in rows:
            print(f"  {name:55s} {matched:3d}/{total - skipped:3d} steps match ({skipped} raw skipped)")
    assert all(m + s == t for _, m, s, t in rows)
