"""Make tests/cluster.py and tests/harness.py importable as plain modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
