"""The layout is the architecture: each room imports only the rooms below it, the core does
no I/O, and no import cycle exists. Read from the source with `ast`, so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edge_certd"

# Which rooms each room may import (itself always included). A room is the first component
# under edge_certd/ ("core", "store", ...), or a top-level module ("config", "journal").
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "store": {"core"},
    "targets": {"core", "store", "config"},
    "config": {"core"},
    "journal": set(),
    "sync": {"core", "store", "targets", "config", "journal", "worker"},
    "daemon": {"core", "store", "targets", "config", "journal", "sync", "worker"},
    "diagnose": {"core", "store", "targets", "config"},
    "worker": {"core"},
    # Building a roots package judges its inputs as sync does (sync.operations).
    "package": {"core", "store", "config", "worker", "sync"},
    "cli": {
        "core",
        "store",
        "targets",
        "config",
        "journal",
        "sync",
        "daemon",
        "diagnose",
        "worker",
        "package",
    },
    "__main__": {"cli"},
    "__init__": set(),
}

# The standard library modules the pure core may use: no files, processes, sockets, signals,
# threads or logging handlers.
CORE_STDLIB = {
    "__future__",
    "base64",
    "binascii",
    "collections",
    "dataclasses",
    "datetime",
    "enum",
    "functools",
    "hashlib",
    "itertools",
    "json",
    "re",
    "string",
    "struct",
    "typing",
    "unicodedata",
    "warnings",
    "math",
    "ipaddress",
}
CORE_THIRD_PARTY = {"cryptography"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []
    top_level = {id(node) for node in tree.body}
    type_checking_blocks = [
        node for node in tree.body if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
    ]
    for block in type_checking_blocks:
        top_level.update(id(n) for n in block.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, id(node) in top_level) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, id(node) in top_level))
            # `from edge_certd.sync import report` imports the submodule too.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).exists():
                    found.append((candidate, id(node) in top_level))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_room_imports_only_the_rooms_below_it(path: Path) -> None:
    module = _module_name(path)
    room = _room(module)
    assert room in ALLOWED, f"{module}: room {room!r} is not in the architecture table"
    for target, _ in _imports(path):
        if target.split(".")[0] != "edge_certd" or target == "edge_certd":
            continue
        other = _room(target)
        assert other == room or other in ALLOWED[room], (
            f"{module} imports {target}: the {room} room may import only {sorted(ALLOWED[room]) or 'itself'}"
        )


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if _room(_module_name(p)) == "core"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_core_does_no_io(path: Path) -> None:
    for target, _ in _imports(path):
        top = target.split(".")[0]
        if top == "edge_certd":
            assert _room(target) == "core", f"{path.name} imports {target} from outside the core"
            continue
        assert top in CORE_STDLIB | CORE_THIRD_PARTY, (
            f"core module {path.name} imports {target}, which is not on the pure list"
        )


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in SOURCES}
    for path in SOURCES:
        edges = set()
        for target, at_top in _imports(path):
            if not at_top:
                continue  # a lazy import inside a function cannot form a load-time cycle
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != _module_name(path) and target.startswith("edge_certd."):
                edges.add(target)
        graph[_module_name(path)] = edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package importing its own submodule is how packages re-export; not a cycle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_importing_the_cli_loads_no_target_or_daemon() -> None:
    """`edge-certd status` must not pay for every target and the daemon at start-up."""
    import subprocess
    import sys

    code = (
        "import sys, edge_certd.cli; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('edge_certd'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    ).stdout.split()
    heavy = [
        m
        for m in out
        if m.startswith(
            ("edge_certd.targets.", "edge_certd.daemon", "edge_certd.diagnose", "edge_certd.sync.engine")
        )
    ]
    assert not heavy, f"importing the CLI loads {heavy}"
