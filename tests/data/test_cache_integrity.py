"""The token cache: a file changed on disk is rebuilt with a warning, and a cache that cannot be written is one
line naming MUOMNI_CACHE."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from muomni.cli import main
from muomni.data import TokenData, Tokenizer


def _corrupt(path: Path, value: int = 0xFFFF) -> None:
    """Overwrite tokens 50 to 100 (bytes 100 to 200) of a uint16 token file with ``value``, keeping its size."""
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[50:100] = value
    tokens.tofile(path)


def _build(corpus: Path, tokenizer: Tokenizer) -> TokenData:
    return TokenData.build(str(corpus), tokenizer, ctx_len=16, val_split=0.0, seed=0)


def _rebuild_warning(corpus: Path, tokenizer: Tokenizer, expected: np.ndarray, why: str) -> None:
    with pytest.warns(UserWarning, match=f"token cache .*\\.bin is corrupt \\({why}\\); rebuilding it"):
        again = _build(corpus, tokenizer)
    assert not again.reused and np.array_equal(again.train_tokens, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build(corpus, tokenizer).reused  # the rebuilt file is whole again


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (0xFFFF, "token id 65535 is outside the tokenizer's 400 ids"),
        (5, "a document does not end with <eos>"),  # ids in the vocabulary: the layout shows it
    ],
)
def test_a_corrupt_token_file_is_rebuilt_with_a_warning(
    txt_corpus: Path, tokenizer: Tokenizer, value: int, why: str
) -> None:
    first = _build(txt_corpus, tokenizer)
    assert first.path is not None
    expected = np.array(first.train_tokens)
    _corrupt(first.path, value)
    _rebuild_warning(txt_corpus, tokenizer, expected, why)


def test_a_token_file_that_fails_its_checksum_is_rebuilt(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    first = _build(txt_corpus, tokenizer)
    assert first.path is not None
    expected = np.array(first.train_tokens)
    tokens = np.fromfile(first.path, dtype=np.uint16)
    tokens[[3, 4]] = tokens[[4, 3]]  # two ids swapped inside a document: every other check passes
    assert tokens[3] != tokens[4]
    tokens.tofile(first.path)
    _rebuild_warning(txt_corpus, tokenizer, expected, "its checksum does not match")


def test_a_cache_of_the_old_sidecar_without_checksum_is_still_used(txt_corpus: Path, tokenizer: Tokenizer) -> None:
    first = _build(txt_corpus, tokenizer)
    assert first.path is not None
    sidecar = first.path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    assert len(meta.pop("blake2b")) == 32
    sidecar.write_text(json.dumps(meta))
    assert _build(txt_corpus, tokenizer).reused


def test_a_size_that_disagrees_with_the_sidecar_is_rebuilt_with_a_warning(
    txt_corpus: Path, tokenizer: Tokenizer
) -> None:
    first = _build(txt_corpus, tokenizer)
    assert first.path is not None
    expected = np.array(first.train_tokens)
    first.path.write_bytes(first.path.read_bytes() + b"\0\0")
    _rebuild_warning(txt_corpus, tokenizer, expected, r"[\d,]+ bytes where its sidecar gives [\d,]+")


def _train(corpus: Path, save_dir: Path) -> int:
    settings = ["max_steps=1", "vocab_size=300", "ctx_len=16", "batch_size=2", "val_batches=1", "device=cpu"]
    return main(["train", "--config", "debug", *settings, f"train_text={corpus}", f"save_dir={save_dir}"])


def test_a_run_rebuilds_a_corrupt_cache_and_trains(
    tmp_path: Path, txt_corpus: Path, private_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once a corrupt file trained until a batch met an id past the embedding: an IndexError mid-run."""
    corpus = txt_corpus
    assert _train(corpus, tmp_path / "first") == 0
    (token_file,) = (private_cache / "tokens").glob("*.bin")
    _corrupt(token_file)
    capsys.readouterr()
    assert _train(corpus, tmp_path / "second") == 0
    err = capsys.readouterr().err
    assert f"muomni: warning: token cache {token_file} is corrupt (token id 65535" in err
    assert "rebuilding it" in err and (tmp_path / "second" / "checkpoints").is_dir()


def test_an_unwritable_cache_is_one_line_naming_muomni_cache(
    tmp_path: Path, txt_corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc cannot hold a folder, for root too; once a FileNotFoundError traceback."""
    monkeypatch.setenv("MUOMNI_CACHE", "/proc/muomni-cache")
    assert _train(txt_corpus, tmp_path / "run") == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("muomni: error: cannot write MUOMNI_CACHE /proc/muomni-cache (")
    assert lines[0].endswith("point MUOMNI_CACHE at a writable folder")
    assert not (tmp_path / "run").exists()
