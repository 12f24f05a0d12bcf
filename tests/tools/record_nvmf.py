"""Record the NVMe-oF RPCs the storm's I/O uses from a real spdk_tgt: a tool, not a test.

    PYTHONPATH=. python -m tests.tools.record_nvmf --spdk-tgt /path/to/spdk_tgt [--cpumask 0x2] [--out FILE]

One fresh target (started through `TargetSession`), one request at a time on one connection, written in the
format of /work/shared/spdk/transcripts (`{target, bdev, how, steps: [{tag, request, response}]}`). The
listener's port is this machine's free port at the time; the transcript shows it as PORT (the conformance
replay puts a free port of its own there).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.hosts.local import LocalHost
from harness.rpc.framing import ReplyParser, encode_request
from harness.session import TargetNeeds, TargetSession
from harness.target import TargetConfig

OUT = Path(__file__).resolve().parent.parent / "data" / "nvmf" / "longhorn-v24.09-nvmf_tcp.json"
PORT = "PORT"
NQN = "nqn.2016-06.io.spdk:rec1"


class Recorder:
    def __init__(self, sock: socket.socket, port: str) -> None:
        self.sock, self.port, self.parser = sock, port, ReplyParser()
        self.steps: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []

    def call(self, tag: str, method: str, params: Any = None) -> Any:
        rid = len(self.steps) + 1
        self.sock.sendall(encode_request(method, params, rid))
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{tag}: the target closed the connection")
            self.pending.extend(self.parser.feed(data))
        reply = self.pending.pop(0)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            request["params"] = params
        self.steps.append({"tag": tag, "request": _port(request, self.port), "response": _port(reply, self.port)})
        return reply.get("result")


def _port(value: Any, port: str) -> Any:
    if isinstance(value, str):
        return value.replace(port, PORT) if port in value else value
    if isinstance(value, list):
        return [_port(v, port) for v in value]
    if isinstance(value, dict):
        return {k: _port(v, port) for k, v in value.items()}
    return value


def scenario(r: Recorder, port: str) -> None:
    lsn = {"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": port}
    r.call("malloc", "bdev_malloc_create", {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096})
    r.call("lvstore", "bdev_lvol_create_lvstore", {"bdev_name": "Malloc0", "lvs_name": "lvs0", "cluster_sz": 1 << 20})
    v1 = r.call("create_v1", "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "v1", "size_in_mib": 8,
                                                  "thin_provision": True})
    v2 = r.call("create_v2", "bdev_lvol_create", {"lvs_name": "lvs0", "lvol_name": "v2", "size_in_mib": 4,
                                                  "thin_provision": False})
    s1 = r.call("snapshot_v2", "bdev_lvol_snapshot", {"lvol_name": "lvs0/v2", "snapshot_name": "s1"})
    r.call("get_transports_none", "nvmf_get_transports")
    r.call("create_subsystem_before_transport", "nvmf_create_subsystem",
           {"nqn": NQN, "allow_any_host": True, "max_namespaces": 8})
    r.call("add_listener_without_transport", "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": lsn})
    r.call("create_transport_unknown_type", "nvmf_create_transport", {"trtype": "bogus"})
    r.call("create_transport_missing_type", "nvmf_create_transport", {})
    r.call("create_transport_tcp", "nvmf_create_transport", {"trtype": "TCP"})
    r.call("create_transport_tcp_again", "nvmf_create_transport", {"trtype": "TCP"})
    r.call("create_transport_unknown_param", "nvmf_create_transport", {"trtype": "TCP", "bogus": 1})
    r.call("get_transports", "nvmf_get_transports")
    r.call("get_transports_tcp", "nvmf_get_transports", {"trtype": "tcp"})
    r.call("create_subsystem_again", "nvmf_create_subsystem", {"nqn": NQN})
    r.call("create_subsystem_bad_nqn", "nvmf_create_subsystem", {"nqn": "foo"})
    r.call("create_subsystem_missing_nqn", "nvmf_create_subsystem", {"allow_any_host": True})
    r.call("create_subsystem_unknown_param", "nvmf_create_subsystem", {"nqn": NQN + "x", "bogus": 1})
    r.call("add_ns_missing_bdev", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "nope"}})
    r.call("add_ns_missing_subsystem", "nvmf_subsystem_add_ns",
           {"nqn": NQN + "-none", "namespace": {"bdev_name": v1}})
    r.call("add_ns_no_namespace", "nvmf_subsystem_add_ns", {"nqn": NQN})
    r.call("add_ns_nsid_over_max", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": v1, "nsid": 9}})
    r.call("add_ns_v1_nsid_3", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": v1, "nsid": 3}})
    r.call("add_ns_v1_again", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": v1}})
    r.call("add_ns_nsid_3_taken", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": v2, "nsid": 3}})
    r.call("add_ns_v2_by_alias_auto_nsid", "nvmf_subsystem_add_ns",
           {"nqn": NQN, "namespace": {"bdev_name": "lvs0/v2"}})
    r.call("add_ns_snapshot_auto_nsid", "nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": s1}})
    r.call("get_bdev_v1_claimed", "bdev_get_bdevs", {"name": v1})
    r.call("add_listener", "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": lsn})
    r.call("add_listener_again", "nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": lsn})
    r.call("add_listener_missing_subsystem", "nvmf_subsystem_add_listener",
           {"nqn": NQN + "-none", "listen_address": lsn})
    r.call("get_subsystems", "nvmf_get_subsystems")
    r.call("get_subsystems_one", "nvmf_get_subsystems", {"nqn": NQN})
    r.call("get_subsystems_missing", "nvmf_get_subsystems", {"nqn": NQN + "-none"})
    r.call("snapshot_exported_v1", "bdev_lvol_snapshot", {"lvol_name": v1, "snapshot_name": "s2"})
    r.call("resize_exported_v1", "bdev_lvol_resize", {"name": v1, "size_in_mib": 12})
    r.call("delete_exported_snapshot_s1_one_clone", "bdev_lvol_delete", {"name": s1})
    r.call("get_subsystems_after_snapshot_delete", "nvmf_get_subsystems", {"nqn": NQN})
    r.call("delete_exported_v2", "bdev_lvol_delete", {"name": v2})
    r.call("get_subsystems_after_delete", "nvmf_get_subsystems", {"nqn": NQN})
    r.call("remove_ns_missing", "nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 7})
    r.call("remove_ns_over_max", "nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 99})
    r.call("remove_ns_3", "nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 3})
    r.call("remove_ns_3_again", "nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 3})
    r.call("get_bdev_v1_released", "bdev_get_bdevs", {"name": v1})
    r.call("remove_listener", "nvmf_subsystem_remove_listener", {"nqn": NQN, "listen_address": lsn})
    r.call("remove_listener_again", "nvmf_subsystem_remove_listener", {"nqn": NQN, "listen_address": lsn})
    r.call("delete_subsystem_missing", "nvmf_delete_subsystem", {"nqn": NQN + "-none"})
    r.call("delete_subsystem", "nvmf_delete_subsystem", {"nqn": NQN})
    r.call("get_subsystems_end", "nvmf_get_subsystems")


def main() -> int:
    ap = argparse.ArgumentParser(prog="record_nvmf")
    ap.add_argument("--spdk-tgt", required=True)
    ap.add_argument("--cpumask", default="0x1")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp, TargetSession(
            LocalHost(), TargetConfig(kind="spdk", spdk_tgt=args.spdk_tgt, cpumask=args.cpumask,
                                      extra_args=["--disable-cpumask-locks"]),
            tmp, needs=TargetNeeds(malloc_mib=66)) as session:
        sock = LocalHost().connect_unix(session.sock_path)
        r = Recorder(sock, port)
        try:
            scenario(r, port)
        finally:
            sock.close()
        version = session.info.version
    out = {"target": f"{version} (longhorn-v24.09 @1975133e9 + the NULL check)", "bdev": "malloc",
           "how": "tests/tools/record_nvmf.py", "steps": r.steps}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(r.steps)} steps -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
