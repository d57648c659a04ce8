"""``python -m anyconv``: the command line (see :mod:`anyconv.cli`)."""

from .cli.main import main

raise SystemExit(main())
