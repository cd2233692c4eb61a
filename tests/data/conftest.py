"""Shared fixtures of the data tests: a private cache folder, small generated corpora, one tokenizer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from muomni.data.tokenizer import Tokenizer

_VOCABULARY = (
    "the a model learns tokens from text and every window predicts next token while loss falls slowly "
    "during training on small corpus of python code with functions classes loops import return value"
)
WORDS = _VOCABULARY.split()


def make_documents(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` documents of a few sentences of pseudo-English, different from one another."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(rng.randint(2, 5))]
        docs.append(f"Document {i}.\n" + ". ".join(sentences) + ".")
    return docs


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder, so nothing touches ~/.cache/muomni."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MUOMNI_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def docs() -> list[str]:
    return make_documents(40)


@pytest.fixture(scope="session")
def tokenizer(docs: list[str]) -> Tokenizer:
    return Tokenizer.train(docs, 400)


@pytest.fixture
def txt_corpus(tmp_path: Path, docs: list[str]) -> Path:
    """A .txt corpus whose blank-line-separated blocks are ``docs``."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path
