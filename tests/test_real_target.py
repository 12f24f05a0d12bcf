"""Against a real spdk_tgt (set SPDK_TGT): the same recordings, lifecycle and storm as against the reference target.

These run only where a real build is installed (marker `spdk_tgt`); CI has none, so everything here also has a
reference-target twin elsewhere in tests/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.config import load_config
from harness.hosts.local import LocalHost
from harness.rpc.errors import RpcError
from harness.rpc.framing import ReplyParser, encode_request
from harness.rpc.sync import SyncRpc
from harness.run import StormRun
from harness.rundir import RunDir
from harness.session import TargetNeeds, TargetSession
from harness.target import Target, TargetConfig, find_spdk_tgt
from tests.test_conformance import Outcome, Replayer, _transcripts, deferred_until

pytestmark = pytest.mark.spdk_tgt


def _send_pair(target: Target, first: tuple[str, Any], second: tuple[str, Any]) -> list[dict[str, Any]]:
    """Send `first` on one connection and, before reading its reply, `second` on another (as recorded)."""
    socks = [target.host.connect_unix(target.sock_path) for _ in range(2)]
    try:
        for i, (sock, (method, params)) in enumerate(zip(socks, (first, second), strict=True)):
            sock.sendall(encode_request(method, params, i + 1))
        replies = []
        for sock in socks:
            sock.settimeout(30)
            parser, got = ReplyParser(), []
            while not got:
                got = parser.feed(sock.recv(65536))
            replies.append({k: v for k, v in got[0].items() if k in ("result", "error")})
        return replies
    finally:
        for sock in socks:
            sock.close()


class RealTargetReplayer(Replayer):
    """The conformance replayer, sending each step to a live spdk_tgt instead of the in-process model."""

    def __init__(self, rpc: SyncRpc, tmp_path: Path) -> None:
        super().__init__(None, tmp_path)  # type: ignore[arg-type]
        self.rpc = rpc

    def call(self, method: str, params: Any) -> dict[str, Any]:
        try:
            return {"result": self.rpc.call_params(method, params)}
        except RpcError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}

    def judge(self, method: str, request: dict[str, Any], expected: dict[str, Any], reply: dict[str, Any]) -> str:
        if method == "spdk_get_version" and "result" in expected:  # no reference-target suffix here
            return "match" if reply.get("result") == expected["result"] else f"MISMATCH: spdk_get_version: {reply}"
        if method == "rpc_get_methods" and "result" in reply:
            # Build options add or drop unrelated methods (cuse, fsdev); the lvol ones must all be there.
            lvol = {m for m in expected["result"] if m.startswith("bdev_lvol_")}
            missing = lvol - set(reply["result"])
            return f"MISMATCH: rpc_get_methods: lvol methods missing: {sorted(missing)}" if missing else "match"
        if method == "bdev_lvol_check_shallow_copy" and isinstance(reply.get("result"), dict) and "result" in expected:
            # How far a copy got when polled depends on this machine's speed; the shape and bounds do not.
            got, exp = reply["result"], expected["result"]
            total = got.get("total_clusters")
            if isinstance(total, int) and 0 <= got.get("copied_clusters", -1) <= total:
                reply = {"result": {**got, "copied_clusters": exp.get("copied_clusters"), "state": exp.get("state")}}
        return super().judge(method, request, expected, reply)


class Deferred:
    """A step whose reply comes only after later steps: sent on a connection of its own, read when due."""

    def __init__(self, target: Target, request: dict[str, Any], params: Any) -> None:
        self.sock = target.host.connect_unix(target.sock_path)
        self.sock.sendall(encode_request(request["method"], params, request["id"]))
        self.parser = ReplyParser()
        # As recorded: the steps after it go out once the target has had it for a while (its polls are ~8 ms).
        self.early = self._read(1.0)

    def _read(self, timeout: float) -> dict[str, Any] | None:
        self.sock.settimeout(timeout)
        try:
            while True:
                got = self.parser.feed(self.sock.recv(65536))
                if got:
                    return {k: v for k, v in got[0].items() if k in ("result", "error")}
        except TimeoutError:
            return None

    def reply(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.early if self.early is not None else self._read(timeout)
        finally:
            self.sock.close()


def transcript_needs() -> TargetNeeds:
    """The most hugepages any recording's malloc bdevs hold at once: what a fresh target must be given."""
    calls = []
    for path in _transcripts():
        steps = json.loads(path.read_text())["steps"]
        calls.append(TargetNeeds.of_calls((s["request"].get("method"), s["request"].get("params"),
                                           (s["response"] or {}).get("result")) for s in steps if "request" in s))
    return max(calls, key=lambda n: n.malloc_mib)


@pytest.fixture
def real_target(tmp_path: Path):
    binary = find_spdk_tgt(LocalHost(), os.environ.get("SPDK_TGT"))
    cpumask = os.environ.get("SPDK_TGT_CPUMASK", "0x1")  # another target on core 0: SPDK_TGT_CPUMASK=0x2
    with TargetSession(LocalHost(), TargetConfig(kind="spdk", spdk_tgt=binary, cpumask=cpumask), str(tmp_path / "t"),
                       needs=transcript_needs()) as session:
        yield session.target


def test_lifecycle_version_methods_and_clean_stop(real_target: Target) -> None:
    assert real_target.info.version.startswith("SPDK v")
    assert "bdev_lvol_create" in real_target.info.methods
    assert real_target.stop() == "exit 0"
    assert not Path(real_target.sock_path).exists()


@pytest.mark.parametrize("path", _transcripts(), ids=lambda p: p.stem)
def test_recording_replays_against_the_real_target(path: Path, real_target: Target, tmp_path: Path) -> None:
    """The recordings were made on a real build: a real build must answer them the same way today."""
    data = json.loads(path.read_text())
    with SyncRpc(real_target.host, real_target.sock_path) as rpc:
        replayer = RealTargetReplayer(rpc, tmp_path / "aio")
        outcome = Outcome(path.stem)
        steps = data["steps"]
        waiting: dict[int, tuple[int, Deferred]] = {}
        i = 0
        while i < len(steps) and real_target.alive():
            for j, (after, pending) in list(waiting.items()):
                if after < i:
                    outcome.results[j] = _judge_deferred(replayer, steps[j], pending.reply(10.0))
                    del waiting[j]
            until = deferred_until(steps[i])
            if until is not None:
                request = steps[i]["request"]
                waiting[i] = (until, Deferred(real_target, request, replayer.substitute(request.get("params"))))
                outcome.results.append("match")  # judged when its reply is due
                i += 1
                continue
            nxt = steps[i + 1] if i + 1 < len(steps) else {}
            if "concurrent" in (nxt.get("note") or ""):
                pair = [steps[i], nxt]
                requests = [(s["request"]["method"], replayer.substitute(s["request"].get("params"))) for s in pair]
                replies = _send_pair(real_target, requests[0], requests[1])
                for s, reply in zip(pair, replies, strict=True):
                    expected = {k: v for k, v in s["response"].items() if k in ("result", "error")}
                    outcome.results.append(replayer.judge(s["request"]["method"], s["request"], expected, reply))
                i += 2
                continue
            outcome.results.append(replayer.step(steps[i]))
            i += 1
        for j, (_, pending) in waiting.items():
            outcome.results[j] = _judge_deferred(replayer, steps[j], pending.reply(2.0 if steps[j]["response"]
                                                                                      is None else 10.0))
    print(f"{path.stem}: {outcome.matched}/{len(data['steps'])} match, {outcome.skipped} skipped")
    log = Path(real_target.log_path).read_text(errors="replace")
    if outcome.mismatches and path.stem.endswith("05_longhorn_extras") and "forced removal" not in log:
        # Recorded on a build that force-removes a busy snapshot; a build with longhorn#10474's fix keeps it,
        # so the steps after the busy delete (the snapshot still listed, its clusters not leaked) differ.
        pytest.xfail("this build does not force-remove the busy snapshot (fixed): transcript 05 records the bug")
    assert not outcome.mismatches, "\n".join(outcome.mismatches[:10])


def _judge_deferred(replayer: RealTargetReplayer, step: dict[str, Any], reply: dict[str, Any] | None) -> str:
    request = step["request"]
    if step["response"] is None:
        return "match" if reply is None else f"MISMATCH: {request['method']}: answered {reply}, recorded none"
    if reply is None:
        return f"MISMATCH: {request['method']}: no reply when the recording got one"
    expected = {k: v for k, v in step["response"].items() if k in ("result", "error")}
    return replayer.judge(request["method"], request, expected, reply)


def test_default_storm_runs_and_reports(tmp_path: Path) -> None:
    """A short storm on the real target: it ends clean, with findings, or with a crash report that has a title."""
    cfg = load_config("smoke", cli={"target.kind": "spdk", "target.spdk_tgt": os.environ.get("SPDK_TGT"),
                                    "target.cpumask": os.environ.get("SPDK_TGT_CPUMASK", "0x1"),
                                    "storm.duration": 10, "minimize.enabled": False})
    outcome = StormRun(cfg, RunDir(tmp_path / "run"), progress=False).execute()
    assert outcome.summary.ops > 0
    assert outcome.summary.target["reference_target"] is False
    for crash_dir in outcome.crash_dirs:
        crash = json.loads((crash_dir / "crash.json").read_text())
        assert crash["title"] and crash["title"] != "exit: target exited unexpectedly (exit code unknown)"
