"""``python -m bench``: every benchmark at once, one table (``bench/all.py``)."""

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
importlib.import_module("all").main()
