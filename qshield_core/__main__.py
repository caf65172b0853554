"""``python -m qshield_core``: the command line."""

from .cli import main

raise SystemExit(main())
