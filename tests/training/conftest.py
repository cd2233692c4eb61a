"""Fixtures of the trainer tests: a private cache folder for every test, and a small corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# The loss kernel's tests run it in Triton's interpreter where there is no GPU (see tests/models/conftest.py);
# switched on before any test module imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The package need not be installed, and tests run with --import-mode=importlib: make the repository
# root and this folder (for the test modules' `training_helpers`) importable.
for _path in (str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from training_helpers import write_corpus  # noqa: E402


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder, so nothing touches ~/.cache/muomni."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MUOMNI_CACHE", str(cache))
    monkeypatch.delenv("MUOMNI_TEST_KILL_AT", raising=False)
    return cache


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")
