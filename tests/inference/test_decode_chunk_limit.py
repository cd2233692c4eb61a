"""``decode_chunk`` is capped at what one generation can use: the decode steps left and the room in the context.

A chunk of 1000 for 10 new tokens was built (and, with ``--compile``, compiled for more than 10 minutes on a
CPU) though it never ran: the decode loop takes single steps when fewer than a chunk are left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from inference_helpers import reference_greedy, run_cli, tiny_model

from muomni.inference import decode
from muomni.inference.generate import generate_tokens

PROMPT = [7, 8, 9]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The step counts of the decode functions built ("built") and of each call made ("called")."""
    seen: dict[str, list[int]] = {"built": [], "called": []}
    make = decode.make_decode_steps

    def recording(setup: decode.DecodeSetup, n: int) -> decode.StepFn:
        seen["built"].append(n)
        fn = make(setup, n)

        def call(*args: object) -> tuple:
            seen["called"].append(n)
            return fn(*args)

        return call

    monkeypatch.setattr(decode, "make_decode_steps", recording)
    return seen


def test_a_chunk_beyond_the_tokens_left_is_capped_and_decodes_the_same(steps: dict[str, list[int]]) -> None:
    model = tiny_model()
    out = generate_tokens(model, [PROMPT], 10, temperature=0.0, decode_chunk=1000)
    # The prefill samples the first of the 10 tokens: 9 are left, decoded in one call.
    assert sorted(steps["built"]) == [1, 9] and steps["called"] == [9]
    assert out == generate_tokens(model, [PROMPT], 10, temperature=0.0, decode_chunk=9)
    assert out == [reference_greedy(model, PROMPT, 10)]


def test_a_chunk_is_capped_at_the_room_left_in_the_context(steps: dict[str, list[int]]) -> None:
    model = tiny_model()  # ctx_len 64
    prompt = list(range(100, 160))  # 60 tokens: room for 4 new ones, so 3 decode steps
    with pytest.warns(UserWarning, match="generating at most 4 instead of 10"):
        out = generate_tokens(model, [prompt], 10, temperature=0.0, decode_chunk=1000)
    assert max(steps["built"]) == 3 and steps["called"] == [3]
    assert out == [reference_greedy(model, prompt, 4)]


def test_a_chunk_within_the_tokens_left_is_kept(steps: dict[str, list[int]]) -> None:
    generate_tokens(tiny_model(), [PROMPT], 10, temperature=0.0, decode_chunk=4)
    assert sorted(steps["built"]) == [1, 4] and steps["called"] == [4, 4, 1]


def compiled_as_eager(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the compiled decode function by the eager one; return the list of chunks asked for."""
    asked: list[int] = []

    def eager(setup: decode.DecodeSetup, n: int, tune: bool = False) -> decode.DecodeFunction:
        asked.append(n)
        return decode.DecodeFunction(decode.make_decode_steps(setup, n), n)

    monkeypatch.setattr(decode, "compiled_decode_steps", eager)
    return asked


def test_cli_compile_builds_only_the_capped_chunk(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported command: ``--compile --decode-chunk 1000`` for 10 tokens. The compiled function is
    replaced by the eager one, so the test records the chunk asked for without compiling it."""
    asked = compiled_as_eager(monkeypatch)
    args = ["generate", "--ckpt", str(run_dir), "--prompt", "def ", "--temperature", "0", "--max-new-tokens", "10"]
    code, out, err = run_cli(capsys, *args, "--compile", "--decode-chunk", "1000")
    assert code == 0, err
    assert sorted(asked) == [1, 9]
    assert (code, out) == run_cli(capsys, *args)[:2]  # what eager decoding with the default chunk prints


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--decode-chunk", "4"], "--decode-chunk 4 speeds up compiled decoding only; add --compile"),
        (["--decode-chunk", "4", "--compile", "--no-kv-cache"], "without the KV cache it is 1"),
        (["--decode-chunk", "4", "--compile"], None),
        (["--decode-chunk", "1"], None),
    ],
)
def test_cli_says_when_decode_chunk_changes_nothing(
    run_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    said: str | None,
) -> None:
    """``--decode-chunk`` without ``--compile`` ran as if it were not given, without a word. The tokens do not
    change either way (greedy), so only the warning tells the user; the compiled run is eager here (as above)."""
    compiled_as_eager(monkeypatch)
    args = ["generate", "--ckpt", str(run_dir), "--prompt", "def ", "--temperature", "0", "--max-new-tokens", "6"]
    args += ["--device", "cpu"]  # fp32: cached and uncached decoding agree exactly (in bf16 on a GPU, not always)
    code, out, err = run_cli(capsys, *args, *flags)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "--decode-chunk" in line]
    assert len(warned) == (0 if said is None else 1), err
    assert said is None or said in warned[0]
    assert out == run_cli(capsys, *args)[1]
