"""`python -m p2ptun` runs the command-line interface."""

from p2ptun.cli import main

raise SystemExit(main())
