"""``python -m runs`` is the ``runlog`` command (and the entry point of the binary)."""

import gc

# Imports allocate many objects that live as long as the process: no collections during them
# (runs.cli.main turns the collector back on, for serve once the server listens).
gc.disable()

from runs.cli import main  # noqa: E402

raise SystemExit(main())
