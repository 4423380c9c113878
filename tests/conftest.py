"""Shared test setup: the NAT lab fixtures, and the checkout on the path of child processes.

``p2plab`` (the development tree: NAT lab, probes, bench, the standalone tunnel tool) is not
installed; pytest finds it from the repository root (``pythonpath`` in pyproject.toml). The
programs the tests start (``python -m p2plab.probe`` in a lab host, ``python -m
p2plab.wgtunnel_tool``, ...) find it through ``PYTHONPATH``, as under ``scripts/``.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_path = os.environ.get("PYTHONPATH")
if str(ROOT) not in (_path or "").split(os.pathsep):
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + _path if _path else "")

pytest_plugins = ["p2plab.pytest_plugin"]
