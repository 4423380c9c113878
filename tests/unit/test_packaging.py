"""What ships: the wheel holds the package ``p2ptun`` and nothing of the development tree.

``p2plab/`` (NAT lab, bench, probes, the standalone tunnel tool, the pytest plugin) and the
tests run from the checkout only. The source test is cheap (an AST walk); the wheel test builds
the real wheel from a copy of the checkout with the venv's own setuptools (no build isolation,
no index: nothing is fetched).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "p2ptun"

FORBIDDEN_IMPORTS = {"p2plab", "pytest", "_pytest", "hypothesis"}
"""Top-level modules that no shipped module may import."""

HARNESS_WORDS = {"lab", "natlab", "bench", "probe", "pytest", "conftest"}
"""Words that mark a development module by name (``ice_probe``, ``pytest_plugin``, ...)."""


def imported_modules(source: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``; relative imports are
    inside the package by definition and are skipped."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def forbidden_imports(source: str, filename: str) -> list[str]:
    return [
        f"{filename}:{line}: imports {name}"
        for line, name in imported_modules(source, filename)
        if name.split(".")[0] in FORBIDDEN_IMPORTS
    ]


def looks_like_harness(path: str) -> bool:
    """Is ``path`` (``p2ptun/x/y.py``) named like a development module?"""
    parts = Path(path).with_suffix("").parts
    return any(word in HARNESS_WORDS for part in parts for word in part.split("_"))


def test_no_package_module_imports_the_harness() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        problems += forbidden_imports(path.read_text(), rel)
        if looks_like_harness(rel):
            problems.append(f"{rel}: a development module inside the package")
    assert problems == []


def test_rendezvous_does_not_import_the_node_daemon() -> None:
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in sorted((PACKAGE / "rendezvous").rglob("*.py"))
        for line, name in imported_modules(path.read_text(), str(path))
        if name == "p2ptun.node" or name.startswith("p2ptun.node.")
    ]
    assert problems == []


def test_the_checks_catch_what_they_are_for() -> None:
    assert forbidden_imports("import pytest\nfrom p2plab.natlab import NatLab\n", "m.py") == [
        "m.py:1: imports pytest",
        "m.py:2: imports p2plab.natlab",
    ]
    assert forbidden_imports("from hypothesis import given\nfrom . import lab\n", "m.py") == [
        "m.py:1: imports hypothesis"
    ]
    assert forbidden_imports("import p2ptun.node\nimport labels\n", "m.py") == []
    for name in ("p2ptun/lab/natlab.py", "p2ptun/net/ice_probe.py", "p2ptun/pytest_plugin.py"):
        assert looks_like_harness(name), name
    for name in ("p2ptun/net/offload.py", "p2ptun/turn/server_policy.py", "p2ptun/labels.py"):
        assert not looks_like_harness(name), name


def test_wheel_holds_only_the_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = out.glob("p2ptun-*.whl")
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for name in names:
            top = name.split("/")[0]
            if top.endswith(".dist-info"):
                continue
            if top != "p2ptun":
                problems.append(f"{name}: outside p2ptun/")
            elif looks_like_harness(name):
                problems.append(f"{name}: a development module")
            if name.endswith(".py"):
                problems += forbidden_imports(archive.read(name).decode(), name)
    assert problems == []
    # the wheel is the package: every module of p2ptun/ is in it
    shipped = {n for n in names if n.endswith(".py")}
    expected = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert shipped == expected
