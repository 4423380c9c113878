"""``python -m p2plab`` is the ``scripts/natlab`` command line."""

from p2plab.cli import main

raise SystemExit(main())
