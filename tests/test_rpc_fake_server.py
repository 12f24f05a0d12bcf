"""A small fake SPDK JSON-RPC server for the RPC client tests, steered over the wire by method name.

It runs in its own process (so benchmarks do not share the client's GIL) and speaks SPDK's framing:
concatenated JSON requests in, compact JSON replies each followed by "\\n", every reply produced by one
read written with one send (as SPDK's poller does). Methods:
`spdk_get_version`, `rpc_get_methods`, `echo` (result = params), `error` (error = params, verbatim),
`sleep {s}` (reply after s seconds; later requests still answered), `reorder {n}` (hold replies until n are
held, then send them newest first), `hang` (never answer this connection again), `close` (close the
connection without a reply), `raw {text}` (write text as is), `big {n}` (a string result of n characters),
the other FAKE_METHODS (`bdev_*`): `{"method", "params"}` as received (`"<absent>"` without params);
anything else: -32601 Method not found.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

FAKE_METHODS = [
    "spdk_get_version", "rpc_get_methods", "bdev_get_bdevs", "bdev_lvol_create", "bdev_lvol_delete",
    "bdev_lvol_snapshot", "bdev_lvol_clone", "bdev_lvol_get_lvols", "bdev_lvol_get_lvstores",
    "bdev_lvol_set_xattr", "bdev_lvol_get_xattr", "bdev_lvol_resize", "bdev_lvol_rename",
]
VERSION = {"version": "SPDK v24.09.1-pre git sha1 fake", "fields": {"major": 24, "minor": 9, "patch": 1,
                                                                     "suffix": "-pre", "commit": "fake"}}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    decoder = json.JSONDecoder()
    buf = ""
    held: list[bytes] = []
    hung = False
    while True:
        try:
            data = await reader.read(1 << 16)
        except ConnectionError:
            break
        if not data:
            break
        buf += data.decode()
        out: list[bytes] = []
        pos = 0
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos >= len(buf):
                break
            try:
                req, pos = decoder.raw_decode(buf, pos)
            except ValueError:
                break
            if hung:
                continue
            method = req.get("method")
            params = req.get("params") or {}
            rid = req.get("id")
            if method == "close":
                writer.transport.abort()
                return
            if method == "hang":
                hung = True
                continue
            if method == "raw":
                out.append(params["text"].encode())
                continue
            if method == "sleep":
                reply = _dumps({"jsonrpc": "2.0", "id": rid, "result": True})
                loop.call_later(float(params.get("s", 0.1)), _late_write, writer, reply)
                continue
            if method == "reorder":
                held.append(_dumps({"jsonrpc": "2.0", "id": rid, "result": params.get("tag")}))
                if len(held) >= int(params["n"]):
                    out.extend(reversed(held))
                    held = []
                continue
            if method == "error":
                reply = {"jsonrpc": "2.0", "id": rid, "error": params}
            elif method == "echo":
                reply = {"jsonrpc": "2.0", "id": rid, "result": params}
            elif method == "spdk_get_version":
                reply = {"jsonrpc": "2.0", "id": rid, "result": VERSION}
            elif method == "rpc_get_methods":
                reply = {"jsonrpc": "2.0", "id": rid, "result": FAKE_METHODS}
            elif method in FAKE_METHODS:
                # Any other known method echoes what arrived, so tests can check the wire params.
                reply = {"jsonrpc": "2.0", "id": rid,
                         "result": {"method": method, "params": req.get("params", "<absent>")}}
            elif method == "big":
                reply = {"jsonrpc": "2.0", "id": rid, "result": "é" * int(params["n"])}
            else:
                reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
            out.append(_dumps(reply))
        buf = buf[pos:]
        if out:
            writer.write(b"".join(out))
    writer.close()


def _late_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)


async def _main(sock_path: str) -> None:
    server = await asyncio.start_unix_server(_serve_connection, path=sock_path)
    async with server:
        await server.serve_forever()


class FakeSpdkProcess:
    """The fake server in a child process, listening on `sock_path`; `stop()` kills it (like a crash)."""

    def __init__(self, sock_path: Path) -> None:
        self.sock_path = str(sock_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from tests.test_rpc_fake_server import serve; serve({self.sock_path!r})"],
            cwd=str(ROOT), stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake SPDK server exited {self.proc.returncode}")
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(self.sock_path)
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"fake SPDK server did not listen on {self.sock_path} within 10 s")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(5.0)
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass


def serve(sock_path: str) -> None:
    asyncio.run(_main(sock_path))


# -- the fake server itself behaves like SPDK's framing (the other RPC tests rely on it) --------------------

def _raw_exchange(sock_path: str, payload: bytes, replies: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(sock_path)
        sock.sendall(payload)
        buf = b""
        while buf.count(b"\n") < replies:
            chunk = sock.recv(1 << 16)
            assert chunk, "fake server closed the connection early"
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def test_fake_server_answers_concatenated_requests_with_newline_framed_replies(tmp_path: Path) -> None:
    server = FakeSpdkProcess(tmp_path / "fake.sock")
    try:
        payload = b"".join(
            json.dumps({"jsonrpc": "2.0", "method": "echo", "id": i, "params": {"i": i}}).encode()
            for i in range(50)
        )
        replies = _raw_exchange(server.sock_path, payload, 50)
        assert [r["id"] for r in replies] == list(range(50))
        assert [r["result"]["i"] for r in replies] == list(range(50))
        unknown = _raw_exchange(server.sock_path, b'{"jsonrpc":"2.0","method":"nope","id":7}', 1)
        assert unknown[0]["error"] == {"code": -32601, "message": "Method not found"}
    finally:
        server.stop()
