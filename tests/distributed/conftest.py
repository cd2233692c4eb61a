"""Fixtures of the distributed tests: the trainer tests' helpers, one corpus and one cache for the module."""

from __future__ import annotations

import sys
from pathlib import Path

# The package need not be installed: make the repository root and the trainer tests' helpers importable.
_ROOT = Path(__file__).resolve().parents[2]
for _path in (str(_ROOT), str(_ROOT / "tests" / "training")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
