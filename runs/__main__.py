"""``python -m runs`` is the ``runlog`` command."""

from runs.cli import main

raise SystemExit(main())
