"""The reference target's nvmf RPCs against what a real spdk_tgt answered (tests/data/nvmf, recorded with
tests/tools/record_nvmf.py on the nullcheck build), replayed in-process like the lvol recordings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.sim.methods import Dispatcher
from tests.test_conformance import Outcome, Replayer

NVMF = Path(__file__).resolve().parent / "data" / "nvmf" / "longhorn-v24.09-nvmf_tcp.json"


class NvmfReplayer(Replayer):
    """A namespace's NGUID is its bdev's UUID in hex: shown as recorded once the UUID is mapped."""

    def call(self, method: str, params: Any) -> dict[str, Any]:
        reply = super().call(method, params)
        if method == "nvmf_get_subsystems" and isinstance(reply.get("result"), list):
            back = {ours.replace("-", "").upper(): rec.replace("-", "").upper() for rec, ours in self.uuids.items()}
            for sub in reply["result"]:
                for ns in sub.get("namespaces", []):
                    ns["nguid"] = back.get(ns["nguid"], ns["nguid"])
        return reply


def test_nvmf_recording_replays_against_the_reference_target(tmp_path: Path) -> None:
    # The listener's port was this machine's at recording time, shown as PORT; in-process nothing listens.
    steps = json.loads(NVMF.read_text().replace('"PORT"', '"4420"'))["steps"]
    replayer = NvmfReplayer(Dispatcher(seed=1), tmp_path)
    outcome = Outcome(NVMF.stem, [replayer.step(s) for s in steps])
    assert len(outcome.results) == 51
    assert not outcome.mismatches, "\n".join(outcome.mismatches)


def test_nvmf_methods_are_listed_in_the_recorded_order() -> None:
    names = Dispatcher().method_names()
    nvmf = [n for n in names if n.startswith("nvmf_")]
    assert nvmf[0] == "nvmf_get_transports" and nvmf[-1] == "nvmf_get_subsystems" and len(nvmf) == 9
