"""Fixtures of the Hugging Face tests: one trained tokenizer and a checkpoint factory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The package is not installed in the venv: make the repository root importable when pytest is run
# as `.venv/bin/pytest tests/hf`, and this folder too, for the test modules' shared `hf_helpers`.
for _path in (str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from hf_helpers import UNICODE_TEXT, random_thinker, save_checkpoint, tiny_config  # noqa: E402

from muomni.data.tokenizer import Tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    docs = [
        f"Document {i}: the model learns tokens from text, def parse(x): return x + {i}. " + UNICODE_TEXT[: 10 + i]
        for i in range(40)
    ]
    return Tokenizer.train(docs, 300)


@pytest.fixture
def make_checkpoint(tmp_path: Path, tokenizer: Tokenizer) -> Callable[..., Path]:
    """``make_checkpoint(**config_overrides)`` -> the run folder of a one-checkpoint run."""

    def make(seed: int = 0, name: str = "run", **overrides: Any) -> Path:
        save_checkpoint(random_thinker(tiny_config(**overrides), seed), tokenizer, tmp_path / name)
        return tmp_path / name

    return make
