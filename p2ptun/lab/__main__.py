"""``python -m p2ptun.lab`` is the ``scripts/natlab`` command line."""

from p2ptun.lab.cli import main

raise SystemExit(main())
