"""The minimal reproducer on disk: repro.min.jsonl (ops and grouping), repro.min.py, repro.min.sh, repro.min.txt.

The .jsonl is a history file (`lvol-storm replay` reads it back) with each line's replay step in `group`; a
serial reproducer puts every line on connection 0/0. The .py is standalone: SPDK's `spdk.rpc.client` when
calls go one at a time, raw sockets when a step must pipeline or overlap calls; it remaps the UUIDs a fresh
target hands out itself. The .sh is the same as `spdk-rpc` lines (UUIDs captured in shell variables), for
every call `spdk-rpc` can express; it says which it cannot, and that only the .py then reproduces the crash.
"""

from __future__ import annotations

import json
import pprint
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.minimize.deps import ID_KEYS
from harness.minimize.operations import Operation
from harness.minimize.plan import ReplayPlan
from harness.outcome import EXIT_REPRODUCED


def minimal_records(plan: ReplayPlan) -> list[dict[str, Any]]:
    """repro.min.jsonl lines: the recorded lines, `group` = replay step, all on 0/0 when the plan is serial."""
    out = []
    for step_no, step in enumerate(plan.steps):
        for op in step:
            rec = op.to_record()
            rec["group"] = step_no
            if plan.single_connection:
                rec["recorded_worker"], rec["recorded_conn"] = op.worker, op.conn
                rec["worker"], rec["conn"] = 0, 0
            out.append(rec)
    return out


def _recorded(op: Operation) -> dict[str, Any]:
    return {"error": op.error} if op.error is not None else {"result": op.result}


# ---- repro.min.py ----------------------------------------------------------------------------------------

_REMAP_CODE = '''
ID_KEYS = {id_keys!r}


def learn(recorded, replayed, ids):
    """Pair a recorded answer with the fresh target's: new UUIDs (strings) and ids (operation_id)."""
    if isinstance(recorded, str) and isinstance(replayed, str):
        if recorded and recorded != replayed:
            ids[recorded] = replayed
    elif isinstance(recorded, dict) and isinstance(replayed, dict):
        for key in ID_KEYS:
            old, new = recorded.get(key), replayed.get(key)
            if type(old) is type(new) and isinstance(old, (str, int)) and old != new:
                ids[old] = new


def remap(value, ids, key=None):
    """`value` with every recorded UUID (also inside an alias lvs/UUID) and id replaced by the new one."""
    if isinstance(value, str):
        if value in ids:
            return ids[value]
        if "/" in value:
            return "/".join(ids.get(part, part) for part in value.split("/"))
        return value
    if isinstance(value, dict):
        return {{k: remap(v, ids, k) for k, v in value.items()}}
    if isinstance(value, list):
        return [remap(v, ids, key) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and key in ID_KEYS:
        return ids.get(value, value)
    return value


def short(value):
    return json.dumps(value)[:160]
'''

_SERIAL_MAIN = '''
def alive(sock_path):
    try:
        client = JSONRPCClient(sock_path, timeout=2.0)
        client.call("spdk_get_version")
        client.close()
        return True
    except Exception:
        return False


def main():
    if len(sys.argv) != 2:
        print(f"usage: {{sys.argv[0]}} RPC_SOCKET_PATH (of a freshly started target)", file=sys.stderr)
        return 2
    sock_path = sys.argv[1]
    try:
        client = JSONRPCClient(sock_path, timeout=30.0)
    except Exception as exc:
        print(f"cannot connect to {{sock_path}}: {{exc}}", file=sys.stderr)
        return 2
    ids = {{}}
    for i, op in enumerate(OPERATIONS):
        params = remap(op["params"], ids)
        print(f"[{{i}}] {{op['method']}} {{short(params)}}", flush=True)
        try:
            result = client.call(op["method"], json.loads(json.dumps(params)) if params is not None else None)
        except JSONRPCException as exc:
            text = str(exc)
            if client.sock is None or text.startswith(("Connection closed", "Timeout")):
                print(f"    -> no reply: the target died or hung ({{text.splitlines()[0]}})")
                break
            print(f"    -> error {{' '.join(text.split('response:')[-1].split())[:160]}}"
                  f"   (recorded: {{short(op['recorded'])}})")
            continue
        except OSError as exc:
            print(f"    -> no reply: the target died or hung ({{exc}})")
            break
        print(f"    -> {{short(result)}}   (recorded: {{short(op['recorded'])}})")
        if "result" in op["recorded"]:
            learn(op["recorded"]["result"], result, ids)
    time.sleep(0.5)
    if alive(sock_path):
        print("the target is still alive: NOT reproduced")
        return 0
    print("the target is gone: REPRODUCED ({title})")
    return {exit_reproduced}
'''

_GROUPED_MAIN = '''
class Connection:
    """One JSON-RPC connection; requests written back to back are pipelined, replies matched by id."""

    def __init__(self, sock_path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30.0)
        self.sock.connect(sock_path)
        self.buf = ""
        self.next_id = 0
        self.decoder = json.JSONDecoder()
        self.early = {{}}  # replies read while waiting for another id (a target may answer out of order)

    def request(self, method, params):
        """One request's id and bytes, not sent yet."""
        self.next_id += 1
        request = {{"jsonrpc": "2.0", "method": method, "id": self.next_id}}
        if params is not None:
            request["params"] = params
        return self.next_id, json.dumps(request).encode()

    def send(self, method, params):
        rid, data = self.request(method, params)
        self.sock.sendall(data)
        return rid

    def replies(self, ids):
        """The replies to `ids` (by id), in any order; ConnectionError if the target closes the socket first.
        Replies to other ids are kept for a later call: SPDK answers a checksum only when its job is done, after
        the delete written behind it."""
        got = self.early
        while not set(ids) <= set(got):
            text = self.buf.lstrip()
            try:
                obj, end = self.decoder.raw_decode(text)
            except ValueError:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("the target closed the connection")
                self.buf = text + data.decode()
                continue
            self.buf = text[end:]
            got[obj.get("id")] = obj
        return {{rid: got.pop(rid) for rid in ids}}


def alive(sock_path):
    try:
        conn = Connection(sock_path)
        conn.sock.settimeout(2.0)
        conn.replies([conn.send("spdk_get_version", None)])
        conn.sock.close()
        return True
    except Exception:
        return False


def main():
    if len(sys.argv) != 2:
        print(f"usage: {{sys.argv[0]}} RPC_SOCKET_PATH (of a freshly started target)", file=sys.stderr)
        return 2
    sock_path = sys.argv[1]
    try:
        conns = {{key: Connection(sock_path) for key in CONNECTIONS}}
    except OSError as exc:
        print(f"cannot connect to {{sock_path}}: {{exc}}", file=sys.stderr)
        return 2
    ids = {{}}
    died = False
    for n, step in enumerate(STEPS):
        sent = []
        unsent = []
        for i, op in enumerate(step):  # all of a step goes out before any reply is read: in flight together
            params = remap(op["params"], ids)
            conn = conns[op["conn"]]
            batch = op.get("batch")
            print(f"[{{n}}] conn {{op['conn']}} {{op['method']}} {{short(params)}}"
                  + (f"   (one write: batch {{batch}})" if batch else ""), flush=True)
            rid, data = conn.request(op["method"], params)
            unsent.append((op, conn, rid, data))
            after = step[i + 1] if i + 1 < len(step) else None
            if batch and after is not None and after.get("batch") == batch and after["conn"] == op["conn"]:
                continue  # a batch goes in ONE write: the target must read its calls in one poll
            try:
                conn.sock.sendall(b"".join(data for _, _, _, data in unsent))
            except OSError as exc:
                print(f"    -> cannot send: the target died ({{exc}})")
                died = True
                break
            sent.extend((op, conn, rid) for op, conn, rid, _ in unsent)
            unsent = []
        for op, conn, rid in sent:
            try:
                reply = conn.replies([rid])[rid]
            except (OSError, ConnectionError) as exc:
                print(f"    -> {{op['method']}}: no reply: the target died or hung ({{exc}})")
                died = True
                continue
            recorded = short(op["recorded"])
            if "error" in reply:
                print(f"    -> {{op['method']}}: error {{short(reply['error'])}}   (recorded: {{recorded}})")
            else:
                print(f"    -> {{op['method']}}: {{short(reply.get('result'))}}   (recorded: {{recorded}})")
                if "result" in op["recorded"]:
                    learn(op["recorded"]["result"], reply.get("result"), ids)
        if died:
            break
    time.sleep(0.5)
    if alive(sock_path):
        print("the target is still alive: NOT reproduced")
        return 0
    print("the target is gone: REPRODUCED ({title})")
    return {exit_reproduced}
'''


def python_script(plan: ReplayPlan, title: str, rate_text: str) -> str:
    """repro.min.py: serial through spdk.rpc.client, or raw sockets when a step sends several calls at once."""
    safe_title = title.replace('"', "'").replace("\\", "/")
    head = f'''#!/usr/bin/env python3
"""Minimal reproducer for: {safe_title}

{plan.describe()}; run it against a FRESH target (start spdk_tgt, then):
    python3 repro.min.py /var/tmp/spdk.sock
Exit status: {EXIT_REPRODUCED} the target died (reproduced), 0 it survived, 2 bad usage or no target.
UUIDs the fresh target hands out replace the recorded ones as the calls go.
Measured when written: {rate_text}.
'''
    fmt = {"title": safe_title, "exit_reproduced": EXIT_REPRODUCED}
    remap_code = _REMAP_CODE.format(id_keys=sorted(ID_KEYS))
    if plan.concurrent_steps == 0 and plan.single_connection:
        ops = [{"method": op.method, "params": op.params, "recorded": _recorded(op)} for op in plan.ops]
        return (head + 'Needs SPDK\'s Python client: pip install spdk (or PYTHONPATH=<spdk>/python).\n"""\n\n'
                "import json\nimport sys\nimport time\n\nfrom spdk.rpc.client import JSONRPCClient, "
                "JSONRPCException\n\nOPERATIONS = " + pprint.pformat(ops, width=110, sort_dicts=False) + "\n"
                + remap_code + _SERIAL_MAIN.format(**fmt) + _FOOTER)
    steps = [[{"conn": f"{op.worker}/{op.conn}" if not plan.single_connection else "0/0", "method": op.method,
               "params": op.params, "recorded": _recorded(op)} | ({"batch": op.batch} if op.batch else {})
              for op in step] for step in plan.steps]
    conns = sorted({op["conn"] for step in steps for op in step})
    return (head + "Each STEPS entry is sent at once (pipelined on one connection, overlapping across\n"
            "connections) before its replies are read; calls with the same \"batch\" go in ONE socket write,\n"
            "so the target reads them in one poll and starts them before any I/O completes.\n"
            'Python 3 standard library only.\n"""\n\n'
            "import json\nimport socket\nimport sys\nimport time\n\nCONNECTIONS = " + repr(conns) + "\n\nSTEPS = "
            + pprint.pformat(steps, width=110, sort_dicts=False) + "\n" + remap_code + _GROUPED_MAIN.format(**fmt)
            + _FOOTER)


_FOOTER = '''

if __name__ == "__main__":
    sys.exit(main())
'''


# ---- repro.min.sh ----------------------------------------------------------------------------------------

Argv = list[str]
Words = Callable[[dict[str, Any]], Argv | None]


def _opt(flag: str, value: Any) -> Argv:
    return [] if value is None else [flag, str(value)]


def _names(*keys: str, optional: tuple[str, ...] = ()) -> Words:
    def words(p: dict[str, Any]) -> Argv | None:
        if set(p) - set(keys) - set(optional) or any(k not in p for k in keys):
            return None
        return [str(p[k]) for k in keys] + [str(p[k]) for k in optional if k in p]
    return words


def _malloc_create(p: dict[str, Any]) -> Argv | None:
    if set(p) - {"name", "num_blocks", "block_size", "uuid"} or "num_blocks" not in p or "block_size" not in p:
        return None
    total = p["num_blocks"] * p["block_size"]
    if total % (1024 * 1024):
        return None  # spdk-rpc takes MB and rounds: not the same bdev
    return _opt("-b", p.get("name")) + _opt("-u", p.get("uuid")) + [str(total // (1024 * 1024)),
                                                                     str(p["block_size"])]


def _lvstore_create(p: dict[str, Any]) -> Argv | None:
    known = {"bdev_name", "lvs_name", "cluster_sz", "clear_method", "num_md_pages_per_cluster_ratio",
             "md_page_size"}
    if set(p) - known or "bdev_name" not in p or "lvs_name" not in p:
        return None
    return (_opt("-c", p.get("cluster_sz")) + _opt("--clear-method", p.get("clear_method"))
            + _opt("-m", p.get("num_md_pages_per_cluster_ratio")) + _opt("-s", p.get("md_page_size"))
            + [str(p["bdev_name"]), str(p["lvs_name"])])


def _lvol_create(p: dict[str, Any]) -> Argv | None:
    if set(p) - {"lvs_name", "uuid", "lvol_name", "size_in_mib", "thin_provision", "clear_method"}:
        return None
    if "lvol_name" not in p or "size_in_mib" not in p:
        return None
    return (_opt("-l", p.get("lvs_name")) + _opt("-u", p.get("uuid")) + (["-t"] if p.get("thin_provision") else [])
            + _opt("-c", p.get("clear_method")) + [str(p["lvol_name"]), str(p["size_in_mib"])])


def _lvs_select(p: dict[str, Any]) -> Argv | None:
    if set(p) - {"uuid", "lvs_name"}:
        return None
    return _opt("-u", p.get("uuid")) + _opt("-l", p.get("lvs_name"))


def _get_lvols(p: dict[str, Any]) -> Argv | None:
    if set(p) - {"lvs_uuid", "lvs_name"}:
        return None
    return _opt("-u", p.get("lvs_uuid")) + _opt("-l", p.get("lvs_name"))


def _get_bdevs(p: dict[str, Any]) -> Argv | None:
    if set(p) - {"name", "timeout"}:
        return None
    return _opt("-b", p.get("name")) + _opt("-t", p.get("timeout"))


SPDK_RPC_WORDS: dict[str, Words] = {
    "bdev_malloc_create": _malloc_create,
    "bdev_malloc_delete": _names("name"),
    "bdev_lvol_create_lvstore": _lvstore_create,
    "bdev_lvol_delete_lvstore": _lvs_select,
    "bdev_lvol_grow_lvstore": _lvs_select,
    "bdev_lvol_get_lvstores": _lvs_select,
    "bdev_lvol_rename_lvstore": _names("old_name", "new_name"),
    "bdev_lvol_create": _lvol_create,
    "bdev_lvol_snapshot": _names("lvol_name", "snapshot_name"),
    "bdev_lvol_clone": _names("snapshot_name", "clone_name"),
    "bdev_lvol_clone_bdev": _names("bdev", "lvs_name", "clone_name"),
    "bdev_lvol_delete": _names("name"),
    "bdev_lvol_inflate": _names("name"),
    "bdev_lvol_decouple_parent": _names("name"),
    "bdev_lvol_set_read_only": _names("name"),
    "bdev_lvol_resize": _names("name", "size_in_mib"),
    "bdev_lvol_rename": _names("old_name", "new_name"),
    "bdev_lvol_set_parent": _names("lvol_name", "parent_name"),
    "bdev_lvol_set_parent_bdev": _names("lvol_name", "parent_name"),
    "bdev_lvol_start_shallow_copy": _names("src_lvol_name", "dst_bdev_name"),
    "bdev_lvol_check_shallow_copy": _names("operation_id"),
    "bdev_lvol_get_lvols": _get_lvols,
    "bdev_get_bdevs": _get_bdevs,
}
"""`spdk-rpc` (PyPI spdk 26.9) subcommands and their flags, checked against `spdk-rpc <method> --help`.

Only methods whose params map one to one onto its flags are here: the Longhorn fork's extras
(bdev_lvol_register_snapshot_checksum, bdev_lvol_set_xattr, ...) have no subcommand."""


def spdk_rpc_words(method: str, params: Any) -> Argv | None:
    """`spdk-rpc` arguments after the method name, or None when spdk-rpc cannot send exactly this call."""
    words = SPDK_RPC_WORDS.get(method)
    if words is None:
        return None
    return words(params if isinstance(params, dict) else {})


def _shell_word(text: str, vars_by_value: dict[str, str]) -> str:
    """A shell word with recorded UUIDs replaced by the variable holding the fresh target's answer."""
    parts = text.split("/")
    if not any(p in vars_by_value for p in parts):
        return shlex.quote(text)
    return '"' + "/".join(f"${{{vars_by_value[p]}}}" if p in vars_by_value else p.replace('"', '\\"')
                          .replace("$", "\\$") for p in parts) + '"'


def shell_script(plan: ReplayPlan, title: str, rate_text: str) -> str:
    """repro.min.sh: one `spdk-rpc` line per call, with UUID results captured and substituted."""
    lines: list[str] = []
    unsupported: list[str] = []
    vars_by_value: dict[str, str] = {}
    for n, op in enumerate(plan.ops):
        words = spdk_rpc_words(op.method, op.params)
        if words is None:
            unsupported.append(op.method)
            lines.append(f"# [{n}] spdk-rpc cannot send {op.method} {json.dumps(op.params)}: see repro.min.py")
            continue
        cmd = " ".join(["rpc", op.method, *(_shell_word(w, vars_by_value) for w in words)])
        recorded = op.result if op.error is None else None
        note = f"  # recorded: {json.dumps(_recorded(op))[:100]}"
        if isinstance(recorded, str) and recorded and op.method not in ("bdev_malloc_create",):
            var = f"R{n}"
            vars_by_value[recorded] = var
            lines.append(f"{var}=$({cmd}); echo \"[{n}] {op.method} -> ${var}\"{note}")
        else:
            lines.append(f"echo \"[{n}] {op.method}\"; {cmd}{note}")
    safe_title = title.replace("\n", " ")
    head = [
        "#!/bin/sh",
        f"# Minimal reproducer for: {safe_title}",
        f"# {plan.describe()}; measured when written: {rate_text}.",
        "# Usage: sh repro.min.sh /var/tmp/spdk.sock   (a FRESH target; SPDK_RPC=path/to/rpc.py to override)",
        "# Calls go one at a time, each as its own spdk-rpc process; errors are expected (no set -e).",
    ]
    if plan.concurrent_steps:
        written = f", {plan.batches} of them written in one socket write" if plan.batches else ""
        head.append(f"# WARNING: this crash needs calls in flight together ({plan.concurrent_steps} steps{written}); "
                    "spdk-rpc sends one call at a time, so this script may NOT reproduce it: run repro.min.py.")
    if unsupported:
        head.append(f"# WARNING: spdk-rpc has no way to send {', '.join(sorted(set(unsupported)))} (no such "
                    "subcommand or flags for these params);")
        head.append("# those lines are comments, so this script alone does NOT reproduce the crash: run "
                    "repro.min.py.")
    body = [
        'SOCK="${1:?usage: sh repro.min.sh RPC_SOCKET_PATH}"',
        'rpc() { ${SPDK_RPC:-spdk-rpc} -s "$SOCK" -t 30 "$@"; }',
        *lines,
        "sleep 0.5",
        'if rpc -t 2 spdk_get_version >/dev/null 2>&1; then echo "the target is still alive: NOT reproduced"; '
        'exit 0; fi',
        f'echo "the target is gone: REPRODUCED"; exit {EXIT_REPRODUCED}',
    ]
    return "\n".join(head + body) + "\n"


def write_reproducer(crash_dir: Path, plan: ReplayPlan, title: str, rate_text: str) -> list[Path]:
    """Write repro.min.jsonl, .py and .sh into `crash_dir`; returns their paths."""
    jsonl = crash_dir / "repro.min.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for rec in minimal_records(plan):
            f.write(json.dumps(rec, default=str) + "\n")
    py = crash_dir / "repro.min.py"
    py.write_text(python_script(plan, title, rate_text))
    py.chmod(0o755)
    sh = crash_dir / "repro.min.sh"
    sh.write_text(shell_script(plan, title, rate_text))
    sh.chmod(0o755)
    return [jsonl, py, sh]
