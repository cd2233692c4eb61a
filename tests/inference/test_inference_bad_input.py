"""Bad input to ``muomni generate`` and ``muomni chat``: one line and exit 2, or for a chat message, a note and the
chat goes on; never a traceback."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from inference_helpers import run_cli, scripted_input, tiny_model

from muomni.data import Tokenizer
from muomni.inference.chat import PROMPT_MARKER, chat

NOT_UTF8 = b"\xff\xfe hi".decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv or stdin
TOO_BIG_SEED = str(2**64)


def _assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert err.startswith("muomni: error: ") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", TOO_BIG_SEED], f"--seed must be in [-2**63, 2**64 - 1], not {TOO_BIG_SEED}"),
        (["--seed", str(-(2**63) - 1)], "--seed must be in [-2**63, 2**64 - 1]"),
        (["--temperature", "inf"], "--temperature must be finite, not inf"),
        (["--temperature", "nan"], "--temperature must be 0 (greedy) or positive, not nan"),
        (["--prompt", NOT_UTF8], "prompt is not valid UTF-8 text"),
        # More tokens than the context holds would be capped with a warning; the options are checked first.
        (["--decode-chunk", "0", "--max-new-tokens", "100000"], "--decode-chunk must be at least 1, not 0"),
    ],
)
def test_generate_bad_input_is_one_line_and_exit_2(
    run_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "generate", "--ckpt", str(run_dir), "--prompt", "def ", *extra)
    _assert_one_line_error(code, err, message)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_bad_option_is_named_by_its_flag_before_a_checkpoint_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """The options are checked before the model loads (a large checkpoint takes a while): the error names the
    flag even where the checkpoint does not exist."""
    prompt = ["--prompt", "def "] if command == "generate" else []
    code, _, err = run_cli(capsys, command, "--ckpt", str(tmp_path / "missing"), *prompt, "--top-p", "1.5")
    _assert_one_line_error(code, err, "--top-p must be in (0, 1] (1 = off), not 1.5")


def test_negative_seeds_count_back_from_2_to_the_64(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch takes a seed modulo 2**64: -1 is the largest seed, and both ends of the range work."""
    args = ["generate", "--ckpt", str(run_dir), "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "5"]
    code, minus_one, err = run_cli(capsys, *args, "--seed", "-1")
    assert code == 0, err
    assert run_cli(capsys, *args, "--seed", str(2**64 - 1))[:2] == (0, minus_one)
    assert run_cli(capsys, *args, "--seed", str(-(2**63)))[0] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, not 0"),
        (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1, not -5"),
        (["--seed", TOO_BIG_SEED], "--seed must be in [-2**63, 2**64 - 1]"),
        (["--temperature", "inf"], "--temperature must be finite, not inf"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--decode-chunk", "0"], "--decode-chunk must be at least 1, not 0"),
    ],
)
def test_chat_rejects_bad_options_before_the_session(
    run_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "chat", "--ckpt", str(run_dir), *extra)  # pytest's stdin fails if it is read
    _assert_one_line_error(code, err, message)
    assert out == ""  # no banner: the session never started


def test_chat_skips_a_message_that_is_not_utf8_and_goes_on(tokenizer: Tokenizer) -> None:
    out = io.StringIO()
    read = scripted_input(NOT_UTF8, "hello")
    assert chat(tiny_model(), tokenizer, 4, temperature=0.0, show_stats=True, read=read, out=out) == 0
    text = out.getvalue()
    assert "(your message is not valid UTF-8 text, so it was not sent; type it again)" in text
    assert text.count("[stats]") == 1  # "hello" got its reply


def test_chat_stdin_that_is_not_utf8_costs_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when standard input decodes strictly (a UTF-8 locale other than C.UTF-8), the bad line is skipped
    and the lines after it are read: a strict decoder raises and drops what it had buffered."""
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe hi\nhello\nexit\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, err = run_cli(capsys, "chat", "--ckpt", str(run_dir), "--max-new-tokens", "4", "--stats")
    assert code == 0, err
    assert "not valid UTF-8" in out and out.count("[stats]") == 1 and out.count(PROMPT_MARKER) == 3


def test_chat_seeds_wrap_at_the_top_of_the_range(tokenizer: Tokenizer) -> None:
    """Turn ``i`` uses ``seed + i``, which must not leave torch's range after the largest seed (-1 is the same)."""

    def session(seed: int) -> str:
        out = io.StringIO()
        read = scripted_input("hello", "hi", "how")
        assert chat(tiny_model(), tokenizer, 4, temperature=5.0, seed=seed, read=read, out=out) == 0
        return out.getvalue()

    assert session(2**64 - 1) == session(-1)
