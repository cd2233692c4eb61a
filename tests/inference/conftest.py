"""Fixtures of the inference tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# The package is not installed in the venv: make the repository root importable when pytest is run
# as `.venv/bin/pytest tests/inference`, and this folder too, for the test modules' `inference_helpers`.
for _path in (str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from inference_helpers import TEXT, tiny_model, write_run  # noqa: E402

from muomni.data import Tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models are far faster on one thread, and two threads on a busy 2-core machine spin for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([TEXT] * 4, 300)


@pytest.fixture
def run_dir(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    """A run folder holding a checkpoint of a tiny random model (tied embeddings, GQA)."""
    write_run(tmp_path / "run", tiny_model(tie_embeddings=True), tokenizer)
    return tmp_path / "run"
