"""Token cache, document split, packing, windows and the bad-size errors of TokenData."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from muomni.data import TokenData, Tokenizer, cache_dir, corpus_fingerprint, prepare_tokenizer
from muomni.data.dataset import split_documents
from muomni.errors import DataError


def _expected_tokens(tokenizer: Tokenizer, docs: list[str]) -> list[list[int]]:
    return [tokenizer.encode(d) + [tokenizer.eos_id] for d in docs]


def test_cache_dir_from_env_or_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MUOMNI_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "muomni"


@pytest.mark.parametrize("inside", [False, True])
def test_a_cache_that_is_a_file_is_a_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inside: bool) -> None:
    taken = tmp_path / "notes.txt"
    taken.write_text("x")
    monkeypatch.setenv("MUOMNI_CACHE", str(taken / "cache" if inside else taken))
    with pytest.raises(DataError, match=f"MUOMNI_CACHE .* cannot be a folder: {taken} is a file"):
        cache_dir()


def test_prepare_tokenizer_trains_once_then_loads(txt_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = prepare_tokenizer(str(txt_corpus), 380)
    path = cache_dir() / "tokenizers" / f"{corpus_fingerprint(str(txt_corpus))}-380.json"
    assert path.is_file() and first.vocab_size == 380
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind

    def no_training(*args: object, **kwargs: object) -> Tokenizer:
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(Tokenizer, "train", no_training)
    assert prepare_tokenizer(str(txt_corpus), 380).to_str() == first.to_str()
    with pytest.raises(AssertionError, match="trained again"):
        prepare_tokenizer(str(txt_corpus), 390)  # another vocab_size is another tokenizer


def test_build_writes_one_token_file_with_eos_after_each_document(
    txt_corpus: Path, tokenizer: Tokenizer, docs: list[str]
) -> None:
    data = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)
    expected = _expected_tokens(tokenizer, docs)
    assert not data.reused and data.path is not None and data.path.parent == cache_dir() / "tokens"
    stored = np.fromfile(data.path, dtype=np.uint16)
    assert stored.tolist() == [t for doc in expected for t in doc]
    meta = json.loads(data.path.with_suffix(".json").read_text())
    assert meta["offsets"] == np.cumsum([0] + [len(d) for d in expected]).tolist()
    assert data.n_docs == len(docs) and data.train_tokens.tolist() == stored.tolist()
    assert data.train_tokens.dtype == np.uint16 and len(data.val_tokens) == 0
    assert sorted(p.name for p in data.path.parent.iterdir()) == sorted([data.path.name, data.path.stem + ".json"])


def test_second_build_reuses_the_cache_without_tokenizing(
    txt_corpus: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.1, seed=3)

    def no_encoding(*args: object) -> list[list[int]]:
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(Tokenizer, "encode_batch", no_encoding)
    monkeypatch.setattr("muomni.data.token_cache.load_documents", no_encoding)
    second = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.1, seed=3)
    assert second.reused and isinstance(second.train_tokens, np.ndarray)
    assert np.array_equal(first.train_tokens, second.train_tokens)
    assert np.array_equal(first.val_tokens, second.val_tokens)
    # Editing the corpus changes its fingerprint: the stale cache must not be used.
    txt_corpus.write_text(txt_corpus.read_text() + "\n\nA new document.", encoding="utf-8")
    with pytest.raises(AssertionError, match="tokenized again"):
        TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.1, seed=3)


def test_truncated_cache_file_is_rebuilt(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    first = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)
    assert first.path is not None
    expected = np.array(first.train_tokens)
    first.path.write_bytes(first.path.read_bytes()[:-10])
    with pytest.warns(UserWarning, match=r"is corrupt \(.* bytes where its sidecar gives .*\); rebuilding it"):
        again = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)
    assert not again.reused and np.array_equal(again.train_tokens, expected)


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"dtype": "int16"}, "its tokens are int16, not the vocabulary's uint16"),  # ids past 32,767 read negative
        ({"offsets": [0, 10**30]}, "too large"),  # past int64: numpy's OverflowError, not a traceback
    ],
)
def test_an_edited_cache_sidecar_is_rebuilt_not_trusted(
    txt_corpus: Path, tokenizer: Tokenizer, edit: dict, said: str
) -> None:
    first = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)
    expected = np.array(first.train_tokens)
    sidecar = first.path.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **edit}))
    with pytest.warns(UserWarning, match=rf"is unreadable \(.*{said}.*\); rebuilding it"):
        again = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)
    assert not again.reused and np.array_equal(again.train_tokens, expected)


def test_split_is_deterministic_disjoint_and_keeps_order() -> None:
    val, train = split_documents(40, 0.25, seed=1)
    assert len(val) == 10 and len(train) == 30
    assert not set(val) & set(train) and sorted([*val, *train]) == list(range(40))
    assert list(val) == sorted(val) and list(train) == sorted(train)
    again, _ = split_documents(40, 0.25, seed=1)
    other, _ = split_documents(40, 0.25, seed=2)
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    assert np.array_equal(val, np.sort(np.random.default_rng(1).permutation(40)[:10]))
    assert len(split_documents(40, 0.001, seed=0)[0]) == 1  # at least one validation document
    assert len(split_documents(3, 0.9, seed=0)[1]) == 1  # at least one training document
    assert len(split_documents(40, 0.0, seed=0)[0]) == 0


def test_splits_pack_their_documents_in_corpus_order(txt_corpus: Path, tokenizer: Tokenizer, docs: list[str]) -> None:
    data = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.2, seed=7)
    expected = _expected_tokens(tokenizer, docs)
    assert len(data.val_docs) == 8 and len(data.train_docs) == 32
    assert data.val_tokens.tolist() == [t for i in data.val_docs for t in expected[i]]
    assert data.train_tokens.tolist() == [t for i in data.train_docs for t in expected[i]]
    other = TokenData.build(str(txt_corpus), tokenizer, ctx_len=16, val_split=0.2, seed=8)
    assert other.reused and not np.array_equal(other.val_docs, data.val_docs)


def test_windows_are_ctx_plus_one_and_targets_are_next_tokens(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    ctx = 12
    data = TokenData.build(str(txt_corpus), tokenizer, ctx_len=ctx, val_split=0.2, seed=0)
    train = data.train_tokens.astype(np.int64)
    assert data.n_train_windows == (len(train) - 1) // ctx and data.n_train_windows > 10
    assert data.n_val_windows == (len(data.val_tokens) - 1) // ctx
    idx = np.array([0, 5, data.n_train_windows - 1, 5])
    batch = data.train_batch(idx)
    assert batch.dtype == torch.long and batch.shape == (4, ctx + 1)
    for row, i in zip(batch, idx, strict=True):
        assert row.tolist() == train[i * ctx : i * ctx + ctx + 1].tolist()
    inputs, targets = batch[:, :-1], batch[:, 1:]
    # The target of input position j is the corpus token right after it.
    assert targets[1].tolist() == train[5 * ctx + 1 : 6 * ctx + 1].tolist()
    assert inputs[1].tolist() == train[5 * ctx : 6 * ctx].tolist()
    # Consecutive windows overlap by one token, so every token but the first is a target once.
    assert data.train_batch(np.array([0]))[0, -1] == data.train_batch(np.array([1]))[0, 0]
    with pytest.raises(IndexError):
        data.train_batch(np.array([data.n_train_windows]))


def test_val_windows_are_the_first_windows(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    ctx = 8
    data = TokenData.build(str(txt_corpus), tokenizer, ctx_len=ctx, val_split=0.25, seed=0)
    val = data.val_tokens.astype(np.int64)
    few = data.val_windows(3)
    assert few.shape == (3, ctx + 1) and few.dtype == torch.long
    assert few.tolist() == [val[i * ctx : i * ctx + ctx + 1].tolist() for i in range(3)]
    assert data.val_windows(10**6).shape == (data.n_val_windows, ctx + 1)
    assert torch.equal(data.val_windows(3), few)
    no_val = TokenData.build(str(txt_corpus), tokenizer, ctx_len=ctx, val_split=0.0, seed=0)
    assert no_val.n_val_windows == 0 and no_val.val_windows(4).shape == (0, ctx + 1)


def test_corpus_too_small_for_one_window(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    n_tokens = TokenData.build(str(txt_corpus), tokenizer, ctx_len=4, val_split=0.0, seed=0).train_tokens.size
    with pytest.raises(DataError, match=f"is too small: it holds {n_tokens} tokens .* ctx_len \\+ 1 = {n_tokens + 1}"):
        TokenData.build(str(txt_corpus), tokenizer, ctx_len=n_tokens, val_split=0.0, seed=0)
    TokenData.build(str(txt_corpus), tokenizer, ctx_len=n_tokens - 1, val_split=0.0, seed=0)  # exactly one window
    with pytest.raises(DataError, match="use a smaller ctx_len or more text"):
        TokenData.build(str(txt_corpus), tokenizer, ctx_len=n_tokens, val_split=0.1, seed=0)


def test_validation_documents_too_small(tmp_path: Path, tokenizer: Tokenizer, docs: list[str]) -> None:
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(d.split(".")[1] for d in docs[:30]), encoding="utf-8")  # ~10 tokens each
    with pytest.raises(DataError, match="validation documents .* hold .* use a larger val_split or a smaller ctx_len"):
        TokenData.build(str(path), tokenizer, ctx_len=64, val_split=0.04, seed=0)


def test_single_document_cannot_be_split(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path = tmp_path / "one.txt"
    path.write_text("one long document " * 50, encoding="utf-8")
    with pytest.raises(DataError, match="a single document cannot be split by document; give more documents or set"):
        TokenData.build(str(path), tokenizer, ctx_len=8, val_split=0.1, seed=0)
    assert TokenData.build(str(path), tokenizer, ctx_len=8, val_split=0.0, seed=0).n_train_windows > 0


@pytest.mark.parametrize(("ctx_len", "val_split", "phrase"), [(0, 0.1, "ctx_len 0"), (8, 1.0, "val_split 1.0")])
def test_bad_arguments(txt_corpus: Path, tokenizer: Tokenizer, ctx_len: int, val_split: float, phrase: str) -> None:
    with pytest.raises(DataError, match=phrase):
        TokenData.build(str(txt_corpus), tokenizer, ctx_len=ctx_len, val_split=val_split, seed=0)


def test_build_reports_a_bad_corpus_as_data_error(tmp_path: Path, tokenizer: Tokenizer) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TokenData.build(str(tmp_path / "missing.txt"), tokenizer, ctx_len=8, val_split=0.0, seed=0)


def test_large_vocabulary_is_stored_as_uint32(tmp_path: Path, tokenizer: Tokenizer) -> None:
    from muomni.data.token_cache import token_dtype

    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00garbage", "invalid start byte"),
        (b'{"version": "1.0"}', ""),  # the reason is the tokenizers library's own
        (None, "its special tokens are not <pad>, <bos>, <eos> = 0, 1, 2"),
    ],
    ids=["garbage", "not-a-tokenizer", "no-special-tokens"],
)
def test_a_corrupt_cached_tokenizer_is_replaced_and_the_warning_says_so(
    txt_corpus: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | None, why: str
) -> None:
    """The warning said "delete or replace it" while the run already trained a new one and wrote it over."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    first = prepare_tokenizer(str(txt_corpus), 380)
    path = cache_dir() / "tokenizers" / f"{corpus_fingerprint(str(txt_corpus))}-380.json"
    path.write_bytes(content if content is not None else HFTokenizer(models.BPE()).to_str().encode())
    said = f"the cached tokenizer {path} is corrupt \\(.*{why}.*\\): training a new one in its place$"
    with pytest.warns(UserWarning, match=said) as warned:
        assert prepare_tokenizer(str(txt_corpus), 380).to_str() == first.to_str()
    assert len(warned) == 1 and "\n" not in str(warned[0].message)
    assert path.read_text(encoding="utf-8") == first.to_str()

    def no_training(*args: object, **kwargs: object) -> Tokenizer:
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(Tokenizer, "train", no_training)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next run is silent: it reads the new file
        assert prepare_tokenizer(str(txt_corpus), 380).to_str() == first.to_str()
