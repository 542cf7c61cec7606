"""The layout is the architecture (docs/ARCHITECTURE.md, after /work/shared/STYLE.md's room
table): each room imports only the rooms below it, the core does no I/O, each third-party
package is imported only by the room that owns what it does, and no import cycle exists, not
even between a package and its own submodule. Read from the source with `ast`, so nothing is
imported. Each rule is also shown failing on a planted violation in a temporary tree.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "edge_certd"

# Which rooms each room may import (itself always included). A room is the first component
# under edge_certd/ ("core", "store", ...), or a top-level module ("__main__").
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "store": {"core"},
    # The registry reads the configuration to say which targets it enables.
    "targets": {"core", "store", "config"},
    "config": {"core"},
    "worker": {"core"},
    "sync": {"core", "store", "targets", "config", "worker"},
    "daemon": {"core", "store", "targets", "config", "sync", "worker", "diagnose"},
    "diagnose": {"core", "store", "targets", "config"},
    # Building a roots package judges its inputs as sync does (sync.operations).
    "package": {"core", "store", "config", "worker", "sync"},
    "cli": {"core", "store", "targets", "config", "sync", "daemon", "diagnose", "worker", "package"},
    "__main__": {"cli"},
    "__init__": set(),
}

# The standard library modules the pure core may use: no files, processes, sockets, signals,
# threads or logging handlers (`ssl` loads OpenSSL's I/O side: PEM is written outside it).
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
    "ipaddress",  # core/wire: packing a frame's length is arithmetic, not I/O
}

# Each third-party package (or module of one), and the only modules (or packages) that may
# import it. The most specific entry applies: systemd.daemon before systemd.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    # sd_notify and the socket systemd passes: the daemon talks to systemd, nobody else.
    "systemd.daemon": ("edge_certd.daemon",),
    # The journal's one voice.
    "systemd.journal": ("edge_certd.sync.journal",),
    "pydantic": ("edge_certd.config",),
    "yaml": ("edge_certd.config",),
    "watchdog": ("edge_certd.daemon.watcher",),
    "prometheus_client": ("edge_certd.sync.metrics",),
    # Parsing untrusted bytes happens in the core, run inside the judge worker. The others
    # here parse only what edge-certd itself wrote or judged (the Java target serialises
    # judged CAs and reads its own truststore back; the system target reads back its own
    # ca_dir files), or what a person asked `verify` to look at: the gateway's chain, which
    # `verify` parses in the CLI's process (it runs as the person who typed it, not as the
    # daemon) before openssl gives the verdict.
    "cryptography": (
        "edge_certd.core",
        "edge_certd.worker",
        "edge_certd.targets.java",
        "edge_certd.targets.system",
        "edge_certd.diagnose.verify",
    ),
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(package: Path, dotted: str) -> bool:
    base = package.parent / Path(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path, package: Path = PACKAGE) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement in the file.

    `from pkg import sub` counts as importing `pkg.sub` alone when every name is a submodule:
    it needs nothing from pkg/__init__.py that a half-loaded package would lack. A name
    that is not a submodule makes it an import of `pkg` itself. For third-party packages,
    `from systemd import daemon` is `systemd.daemon`.
    """
    tree = ast.parse(path.read_text(), str(path))
    module = _module_name(path, package)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []
    # Imports under `if TYPE_CHECKING:` never run, so they count for the rooms but not as
    # load-time edges, like imports inside a function.
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            found.extend((alias.name, at_top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != package.name:
                found.extend((f"{target}.{alias.name}", at_top) for alias in node.names)
                continue
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(package, f"{target}.{a.name}")]
            found.extend((sub, at_top) for sub in subs)
            if len(subs) < len(node.names):
                found.append((target, at_top))
    return found


def _sources(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"))


# ------------------------------------------------------------------------------ the rules


def room_violations(package: Path) -> list[str]:
    found = []
    for path in _sources(package):
        module = _module_name(path, package)
        room = _room(module)
        if room not in ALLOWED:
            found.append(f"{module}: room {room!r} is not in the architecture table")
            continue
        for target, _ in _imports(path, package):
            if target.split(".")[0] != package.name or target == package.name:
                continue
            other = _room(target)
            if other != room and other not in ALLOWED[room]:
                found.append(
                    f"{module} imports {target}: the {room} room may import only "
                    f"{sorted(ALLOWED[room]) or 'itself'}"
                )
    return found


def core_io_violations(package: Path) -> list[str]:
    found = []
    for path in _sources(package):
        module = _module_name(path, package)
        if _room(module) != "core":
            continue
        for target, _ in _imports(path, package):
            top = target.split(".")[0]
            if top == package.name:
                if _room(target) != "core":
                    found.append(f"{module} imports {target} from outside the core")
            elif top not in CORE_STDLIB and top not in THIRD_PARTY:
                found.append(f"core module {module} imports {target}, which is not on the pure list")
    return found


def _owners(target: str) -> tuple[str, ...] | None:
    """Who may import `target` (None: it is not a listed third-party package)."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        owners = THIRD_PARTY.get(".".join(parts[:i]))
        if owners is not None:
            return owners
    return None


def third_party_violations(package: Path) -> list[str]:
    found = []
    for path in _sources(package):
        module = _module_name(path, package)
        for target, _ in _imports(path, package):
            top = target.split(".")[0]
            if top == package.name or top in sys.stdlib_module_names:
                continue
            owners = _owners(target)
            if owners is None:
                found.append(
                    f"{module} imports {target}, a third-party package the architecture does not list"
                )
            elif not any(module == o or module.startswith(o + ".") for o in owners):
                found.append(f"{module} imports {target}: only {', '.join(owners)} may")
    return found


def find_cycle(package: Path) -> list[str] | None:
    """One load-time import cycle, or None. Lazy imports inside functions cannot form one;
    a package importing its own submodule is an edge like any other, so a submodule that
    takes a name from its half-loaded package is seen."""
    sources = _sources(package)
    modules = {_module_name(p, package) for p in sources}
    graph: dict[str, set[str]] = {}
    for path in sources:
        this = _module_name(path, package)
        edges = set()
        for target, at_top in _imports(path, package):
            if not at_top:
                continue
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != this and target.startswith(package.name + "."):
                edges.add(target)
        graph[this] = edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


# ------------------------------------------------------------------------------ this tree


def test_each_room_imports_only_the_rooms_below_it() -> None:
    assert room_violations(PACKAGE) == []


def test_the_core_does_no_io() -> None:
    assert core_io_violations(PACKAGE) == []


def test_each_third_party_package_is_imported_only_by_its_room() -> None:
    assert third_party_violations(PACKAGE) == []


def test_no_import_cycles() -> None:
    cycle = find_cycle(PACKAGE)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_importing_the_cli_loads_no_target_or_daemon() -> None:
    """`edge-certd status` must not pay for every target and the daemon at start-up."""
    import subprocess

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


# ------------------------------------------------------------------------------ planted violations


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package named edge_certd under tmp_path holding `files` (and every __init__.py)."""
    package = tmp_path / "edge_certd"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(package).parents:
            init = package / parent / "__init__.py"
            if not init.exists():
                init.write_text("")
        path.write_text(text)
    return package


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    package = plant(
        tmp_path, {"store/state.py": "from edge_certd.sync import engine\n", "sync/engine.py": ""}
    )
    (problem,) = room_violations(package)
    assert "edge_certd.store.state imports edge_certd.sync.engine" in problem


def test_a_room_missing_from_the_table_is_caught(tmp_path: Path) -> None:
    package = plant(tmp_path, {"journal.py": "import logging\n"})
    assert room_violations(package) == ["edge_certd.journal: room 'journal' is not in the architecture table"]


@pytest.mark.parametrize("module", ["socket", "subprocess", "ssl", "os"])
def test_io_in_the_core_is_caught(tmp_path: Path, module: str) -> None:
    package = plant(tmp_path, {"core/parse.py": f"import json\nimport {module}\n"})
    (problem,) = core_io_violations(package)
    assert f"imports {module}, which is not on the pure list" in problem


@pytest.mark.parametrize(
    ("where", "line", "owner"),
    [
        ("targets/system.py", "from systemd import daemon\n", "edge_certd.daemon"),
        ("daemon/loop.py", "from systemd.journal import JournalHandler\n", "edge_certd.sync.journal"),
        ("store/state.py", "import yaml\n", "edge_certd.config"),
        ("sync/engine.py", "import pydantic\n", "edge_certd.config"),
        ("daemon/loop.py", "from watchdog.observers import Observer\n", "edge_certd.daemon.watcher"),
        ("core/model.py", "from prometheus_client import Gauge\n", "edge_certd.sync.metrics"),
        ("store/sources.py", "from cryptography import x509\n", "edge_certd.core"),
    ],
)
def test_a_third_party_import_outside_its_room_is_caught(
    tmp_path: Path, where: str, line: str, owner: str
) -> None:
    package = plant(tmp_path, {where: line})
    (problem,) = third_party_violations(package)
    assert f"only {owner}" in problem


def test_a_third_party_import_in_its_own_room_passes(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "daemon/notify.py": "from systemd import daemon\n",
            "daemon/watcher.py": "from watchdog.observers import Observer\n",
            "sync/journal.py": "from systemd.journal import JournalHandler\n",
            "core/formats.py": "from cryptography import x509\n",
        },
    )
    assert third_party_violations(package) == []


def test_an_unlisted_third_party_package_is_caught(tmp_path: Path) -> None:
    package = plant(tmp_path, {"targets/http.py": "import requests\n"})
    (problem,) = third_party_violations(package)
    assert "requests" in problem and "does not list" in problem


def test_a_cycle_between_a_package_and_its_own_submodule_is_caught(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "cli/__init__.py": "from edge_certd.cli import render\nEXIT_OK = 0\n",
            "cli/render.py": "from edge_certd.cli import EXIT_OK\n",
        },
    )
    assert find_cycle(package) == ["edge_certd.cli", "edge_certd.cli.render", "edge_certd.cli"]


def test_a_package_importing_its_submodules_alone_is_no_cycle(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "cli/__init__.py": "from edge_certd.cli import render\n",
            "cli/render.py": "from edge_certd.cli import text\n",
            "cli/text.py": "",
        },
    )
    assert find_cycle(package) is None


def test_a_cycle_between_rooms_is_caught_and_a_lazy_import_is_not_one(tmp_path: Path) -> None:
    package = plant(
        tmp_path,
        {
            "sync/a.py": "from edge_certd.sync import b\n",
            "sync/b.py": "def f():\n    from edge_certd.sync import a\n",
            "sync/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from edge_certd.sync import a\n"
            ),
        },
    )
    (package / "sync/a.py").write_text("from edge_certd.sync import b, c\n")
    assert find_cycle(package) is None
    (package / "sync/b.py").write_text("from edge_certd.sync import a\n")
    assert find_cycle(package) == ["edge_certd.sync.a", "edge_certd.sync.b", "edge_certd.sync.a"]


def test_every_test_file_has_a_name_of_its_own() -> None:
    """`python3 -m pytest tests` imports test files by basename (no packages under tests/):
    two files of one name make the whole collection fail."""
    tests = Path(__file__).resolve().parent
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
