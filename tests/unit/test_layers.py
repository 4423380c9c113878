"""The layering of docs/ARCHITECTURE.md, enforced: who may import whom.

Read from the source with :mod:`ast` (nothing is imported), so a forbidden import anywhere in a
module — at the top, inside a function, under ``TYPE_CHECKING`` — fails here:

- the sans-I/O cores (``stun``, ``turn``, ``ice``, ``wireguard``, ``signal``, ``noise``,
  ``membership``, ``names``, ``portmap`` and ``firewall``) import no I/O, no clock and no ambient
  randomness, and nothing above them;
- the ground modules (``addr``, ``errors``, ``log``, ``keys``, ``wire``) import no other part;
- ``config`` reads files but imports no I/O layer and no daemon;
- the I/O layer ``net`` imports no daemon; the rendezvous imports nothing of the node and
  the node nothing of the rendezvous;
- nothing under ``p2ptun`` imports the development tree (``p2plab``) or a test tool;
- there is no import cycle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "p2ptun"

CORES = (
    "stun",
    "turn",
    "ice",
    "wireguard",
    "signal",
    "noise",
    "membership",
    "names",
    "portmap",
    "firewall",
)
#: Standard-library modules a core may not import: I/O, clocks, ambient randomness, processes.
FORBIDDEN_IN_CORES = frozenset(
    {
        "trio",
        "anyio",
        "asyncio",
        "socket",
        "ssl",
        "select",
        "selectors",
        "threading",
        "multiprocessing",
        "subprocess",
        "time",
        "os",
        "random",
        "secrets",
        "sqlite3",
        "pyroute2",
        "fcntl",
        "mmap",
        "signal",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "urllib",
        "http",
    }
)
#: What each part of p2ptun may import from p2ptun itself (beyond its own package and the
#: package face ``p2ptun``, which holds only the version).
ALLOWED: dict[str, set[str]] = {
    "addr": set(),
    "errors": set(),
    "log": set(),
    "keys": set(),
    "wire": set(),
    "noise": {"errors"},
    "stun": {"addr", "errors", "log"},
    "turn": {"addr", "errors", "log", "stun"},
    "ice": {"addr", "errors", "log", "stun"},
    "wireguard": {"addr", "errors", "log", "keys", "noise"},
    "signal": {"addr", "errors", "log", "keys", "noise", "wire"},
    "membership": {"addr", "errors", "log", "keys", "wire"},
    "names": {"addr", "errors", "log"},
    "portmap": {"addr", "errors", "log"},
    "firewall": {"addr", "errors", "log"},
    "config": {"addr", "errors", "keys", "membership", "firewall"},
    "net": {"addr", "errors", "log", "keys", "noise", "config", *CORES},
    "node": {"addr", "errors", "log", "keys", "noise", "config", "net", *CORES},
    "rendezvous": {"addr", "errors", "log", "keys", "noise", "config", "net", *CORES},
    "ca": {"addr", "errors", "keys", "membership"},
    "join": {"addr", "errors", "log", "keys", "config", "net", *CORES},
    "bugreport": {"addr", "errors", "keys", "config"},
    "cli": {
        "addr",
        "errors",
        "log",
        "keys",
        "config",
        "net",
        "node",
        "rendezvous",
        "membership",
        "ca",
        "join",
        "bugreport",
    },
    "__main__": {"cli"},
    "__init__": set(),
}
NEVER = ("p2plab", "pytest", "hypothesis", "_pytest", "aioice")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield ".".join(("p2ptun", *rel.parts)), path


def part_of(module: str) -> str:
    """``p2ptun.ice.agent`` -> ``ice``; ``p2ptun.cli`` -> ``cli``; ``p2ptun`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (absolute names, relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name, node.lineno
            for alias in node.names:  # ``from p2ptun import config`` imports p2ptun.config
                yield f"{name}.{alias.name}", node.lineno


def internal_target(name: str) -> str | None:
    """The module of p2ptun an import names (None: outside p2ptun, or a name in a module)."""
    if name != "p2ptun" and not name.startswith("p2ptun."):
        return None
    parts = name.split(".")
    while parts:
        candidate = PACKAGE.joinpath(*parts[1:])
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


ALL = list(modules())


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_imports_respect_the_layers(module: str, path: Path) -> None:
    part = part_of(module)
    problems: list[str] = []
    seen: set[str] = set()
    for name, line in imports_of(module, path):
        target = internal_target(name)
        shown = target or name.split(".")[0]
        if shown in seen:
            continue
        seen.add(shown)
        top = name.split(".")[0]
        if top in NEVER:
            problems.append(f"line {line}: {shown} (development or test code)")
            continue
        if part in CORES and top in FORBIDDEN_IN_CORES:
            problems.append(f"line {line}: {shown} (a sans-I/O core imports no I/O or clock)")
            continue
        if target is None:
            continue
        target_part = part_of(target)
        if target_part in (part, "__init__"):
            continue
        if target_part not in ALLOWED[part]:
            problems.append(f"line {line}: {target} ({part} may not import {target_part})")
    assert not problems, f"{module}:\n  " + "\n  ".join(problems)


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for module, path in ALL:
        targets = set()
        for name, _ in imports_of(module, path):
            target = internal_target(name)
            if target is not None and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_no_private_name_imported_from_another_module(module: str, path: Path) -> None:
    """A name with a leading underscore is its module's own: sharing it means it is public."""
    tree = ast.parse(path.read_text(), str(path))
    private = [
        f"line {node.lineno}: {alias.name} from {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("p2ptun")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, f"{module}:\n  " + "\n  ".join(private)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself: a core module importing trio and the node is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom p2ptun.node import daemon\n")
    found = [name for name, _ in imports_of("p2ptun.ice.bad", bad)]
    assert "trio" in found and "p2ptun.node.daemon" in found
    assert part_of("p2ptun.ice.bad") in CORES
    assert internal_target("p2ptun.node.daemon") == "p2ptun.node.daemon"
    assert "node" not in ALLOWED["ice"]
