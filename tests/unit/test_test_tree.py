"""The test tree itself: its directories are not packages, so pytest imports each module by
its base name, and two files of one name in different directories cannot be collected in one
run (the whole suite would stop at collection)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_name() -> None:
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "__pycache__" not in path.parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    clashes.pop("__init__.py", None)
    clashes.pop("conftest.py", None)
    assert not clashes, f"test modules sharing a name: {clashes}"
