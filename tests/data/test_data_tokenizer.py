"""The byte-level BPE tokenizer: round trip, special ids, determinism, save/load, vocab checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from muomni.data import Tokenizer, check_vocab
from muomni.errors import DataError

UNICODE_TEXT = "Héllo, wörld! naïve café 🎉🚀 你好世界 こんにちは\tTab\nnew line\r\n  spaces  Ω≈ç√ \U0001d518 end\n"


def test_round_trip_is_exact_on_unicode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(UNICODE_TEXT)
    assert tokenizer.decode(ids) == UNICODE_TEXT
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(tokenizer.encode("")) == ""


def test_special_token_ids(tokenizer: Tokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert [tokenizer.id_to_token(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    # Special tokens are not added by encode and are dropped by decode unless asked for.
    ids = tokenizer.encode("the model")
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
    framed = [tokenizer.bos_id, *ids, tokenizer.eos_id]
    assert tokenizer.decode(framed) == "the model"
    assert tokenizer.decode(framed, skip_special_tokens=False) == "<bos>the model<eos>"
    # A special token's name in text is ordinary text: it never becomes the special id.
    for text in ("x<eos>", "<bos><pad>"):
        ids = tokenizer.encode(text)
        assert not {0, 1, 2} & set(ids) and not {0, 1, 2} & set(tokenizer.encode_batch([text])[0])
        assert tokenizer.decode(ids) == text


def test_vocab_size_is_real_and_learns_merges(tokenizer: Tokenizer, docs: list[str]) -> None:
    assert tokenizer.vocab_size == 400 == tokenizer.hf.get_vocab_size()
    # Merges make frequent words single tokens: fewer tokens than bytes.
    text = docs[0]
    assert len(tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


def test_small_corpus_stops_short_of_vocab_size() -> None:
    tok = Tokenizer.train(["ab ab ab"], 1000)
    assert 259 <= tok.vocab_size < 1000


def test_vocab_size_below_bytes_is_refused() -> None:
    with pytest.raises(DataError, match="vocab_size 100 is too small for a byte-level tokenizer; use at least 259"):
        Tokenizer.train(["text"], 100)


def test_encode_batch_matches_encode(tokenizer: Tokenizer, docs: list[str]) -> None:
    texts = [*docs[:5], UNICODE_TEXT, ""]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_training_is_deterministic(docs: list[str]) -> None:
    first = Tokenizer.train(docs, 350).to_str()
    assert Tokenizer.train(docs, 350).to_str() == first
    assert Tokenizer.train(docs[::-1], 350).to_str() != Tokenizer.train(docs[:5], 350).to_str()


def test_training_is_deterministic_across_processes_and_threads(docs: list[str], tmp_path: Path) -> None:
    data = tmp_path / "docs.json"
    data.write_text(json.dumps(docs), encoding="utf-8")
    script = (
        "import json, sys; from muomni.data.tokenizer import Tokenizer; "
        "docs = json.load(open(sys.argv[1], encoding='utf-8')); "
        "sys.stdout.write(Tokenizer.train(docs, 350).to_str())"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root, "RAYON_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script, str(data)], env=env, capture_output=True, check=True)
    assert out.stdout.decode("utf-8") == Tokenizer.train(docs, 350).to_str()


def test_save_and_load_file_and_folder(tokenizer: Tokenizer, tmp_path: Path) -> None:
    file = tokenizer.save(tmp_path / "tok.json")
    folder_file = tokenizer.save(tmp_path / "ckpt")
    assert file == tmp_path / "tok.json" and folder_file == tmp_path / "ckpt" / "tokenizer.json"
    for path in (file, tmp_path / "ckpt", folder_file):
        loaded = Tokenizer.load(path)
        assert loaded.to_str() == tokenizer.to_str()
        assert loaded.encode(UNICODE_TEXT) == tokenizer.encode(UNICODE_TEXT)
        assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.vocab_size) == (0, 1, 2, 400)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tokenizer file .*tokenizer.json does not exist"):
        Tokenizer.load(tmp_path)


def test_a_file_removed_between_the_check_and_the_read_is_missing_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run pruning a checkpoint can remove its tokenizer.json between load's check and its read: that was
    reported as a corrupt file ("delete or replace it"). The cache's reader takes it as no cached tokenizer."""
    from muomni.data import token_cache

    gone = tmp_path / "tokenizer.json"
    monkeypatch.setattr(Path, "is_file", lambda self: True)  # the check saw it; the read finds nothing
    with pytest.raises(DataError) as info:
        Tokenizer.load(gone)
    assert str(info.value) == f"tokenizer file {gone} does not exist; train a tokenizer first or give the right path"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "corrupt: training a new one in its place"
        assert token_cache._cached_tokenizer(gone) is None


@pytest.mark.parametrize("content", [b'{"model": "truncat', b'{"version": "1.0"}', b"\xff\xfe\x00binary"])
def test_load_corrupt_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(DataError, match="is corrupt or not a tokenizer.json") as info:
        Tokenizer.load(tmp_path)
    assert "\n" not in str(info.value)


def _foreign_hf_tokenizer() -> HFTokenizer:
    """A tokenizer of 'another model', with other special token names."""
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["[UNK]", "[PAD]", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(["some text for another model"], trainer=trainer)
    return hf


def test_wrap_foreign_tokenizer_with_explicit_ids(tmp_path: Path) -> None:
    hf = _foreign_hf_tokenizer()
    with pytest.raises(DataError, match="tokenizer has no <pad> token; pass its id"):
        Tokenizer(hf)
    tok = Tokenizer.from_hf(hf, pad_id=1, bos_id=2, eos_id=3)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (1, 2, 3)
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path, pad_id=1, bos_id=2, eos_id=3)
    assert loaded.eos_id == 3 and loaded.decode(loaded.encode("text")) == "text"
    with pytest.raises(DataError, match="outside the vocabulary"):
        Tokenizer(hf, pad_id=1, bos_id=2, eos_id=hf.get_vocab_size())


def test_check_vocab(tokenizer: Tokenizer) -> None:
    check_vocab(tokenizer, 400)
    check_vocab(tokenizer, 4096)
    msg = "tokenizer has 400 tokens but vocab_size is 399; set vocab_size to at least 400 or retrain the tokenizer"
    with pytest.raises(DataError, match=msg):
        check_vocab(tokenizer, 399)
