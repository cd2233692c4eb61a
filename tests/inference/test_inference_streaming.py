"""Streaming text and stop strings: pieces add up to the completion, characters are never split."""

from __future__ import annotations

import pytest
from inference_helpers import tiny_model

from muomni.data import Tokenizer
from muomni.inference.generate import generate
from muomni.inference.streaming import TextStream


def _feed_one_by_one(stream: TextStream, ids: list[int]) -> dict[int, int]:
    ended: dict[int, int] = {}
    for token in ids:
        ended.update(stream([[token]]))
    return ended


def test_pieces_never_split_a_character(tokenizer: Tokenizer) -> None:
    text = "naïve café ✓ 東京 done"  # the tokenizer saw no such bytes: each character is several byte tokens
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)
    pieces: list[tuple[int, str]] = []
    stream = TextStream(tokenizer, 1, lambda row, piece: pieces.append((row, piece)))
    assert _feed_one_by_one(stream, ids) == {}
    assert stream.close() == [text]
    assert "".join(p for _, p in pieces) == text
    assert all("\ufffd" not in p for _, p in pieces) and {row for row, _ in pieces} == {0}


def test_stop_string_ends_the_row_and_is_never_shown(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello there\nUser: and more")
    pieces: list[str] = []
    stream = TextStream(tokenizer, 1, lambda row, piece: pieces.append(piece), stop=["\nUser:"])
    ended = _feed_one_by_one(stream, ids)
    assert stream.close() == ["hello there"]
    assert "".join(pieces) == "hello there"
    assert tokenizer.decode(ids[: ended[0]]).startswith("hello there\nUser:")
    assert not tokenizer.decode(ids[: ended[0] - 1]).startswith("hello there\nUser:")


def test_text_that_only_looks_like_a_stop_string_is_released(tokenizer: Tokenizer) -> None:
    pieces: list[str] = []
    stream = TextStream(tokenizer, 1, lambda row, piece: pieces.append(piece), stop=["\nUser:"])
    _feed_one_by_one(stream, tokenizer.encode("a\nUs"))
    assert "".join(pieces) == "a"  # "\nUs" may be the start of "\nUser:": held back
    _feed_one_by_one(stream, tokenizer.encode("ually"))
    assert "".join(pieces) == "a\nUsually"


def test_eos_ends_a_row(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer, 2, None)
    stream([tokenizer.encode("ab") + [tokenizer.eos_id] + tokenizer.encode("cd"), tokenizer.encode("xy")])
    stream([tokenizer.encode("zz"), tokenizer.encode("w")])
    assert stream.close() == ["ab", "xyw"]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_streamed_pieces_add_up_to_the_returned_completions(tokenizer: Tokenizer, temperature: float) -> None:
    model = tiny_model()
    prompts = ["def parse(", "import"]
    plain = generate(model, tokenizer, prompts, 20, temperature=temperature, seed=3)
    pieces: dict[int, str] = {0: "", 1: ""}

    def collect(row: int, piece: str) -> None:
        pieces[row] += piece

    streamed = generate(model, tokenizer, prompts, 20, temperature=temperature, seed=3, stream=collect)
    assert streamed == plain == [pieces[0], pieces[1]]


def test_one_stop_string_given_alone_is_one_string_not_its_characters(tokenizer: Tokenizer) -> None:
    model = tiny_model()
    plain = generate(model, tokenizer, "def parse(", 40, temperature=0.0)[0]
    # Two characters whose first or second also comes earlier: read character by character, as a bare
    # string once was, the completion would end at that earlier character instead.
    pairs = (plain[k : k + 2] for k in range(1, len(plain) - 1))
    stop = next(p for p in pairs if min(plain.index(c) for c in p) < plain.index(p))
    assert generate(model, tokenizer, "def parse(", 40, temperature=0.0, stop=stop)[0] == plain[: plain.index(stop)]
