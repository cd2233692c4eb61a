"""``muomni generate`` and ``muomni chat`` end to end: output, exit codes, one-line errors, stdin-driven chat."""

from __future__ import annotations

import ctypes
import io
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from inference_helpers import ROOT, run_cli, scripted_input, tiny_model

from muomni.cli import EXIT_INTERRUPTED, EXIT_TERMINATED
from muomni.data import Tokenizer
from muomni.inference import chat as chat_module
from muomni.inference.chat import PROMPT_MARKER, Conversation, chat


def test_generate_prints_prompt_and_completion(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "generate", "--ckpt", str(run_dir), "--prompt", "def parse(", "--max-new-tokens", "8"
    )
    assert code == 0, err
    assert out.startswith("def parse(") and "[1/" not in out


def test_generate_batch_no_cache_and_stats(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--ckpt", str(run_dir), "--prompt", "def ", "--prompt", "import", "--temperature", "0"]
    args += ["--device", "cpu"]  # fp32: cached and uncached decoding agree exactly
    code, cached, _ = run_cli(capsys, *args, "--max-new-tokens", "10")
    assert code == 0
    assert "[1/2]" in cached and "[2/2]" in cached and cached.index("def ") < cached.index("import")
    code, uncached, _ = run_cli(capsys, *args, "--max-new-tokens", "10", "--no-kv-cache")
    assert (code, uncached) == (0, cached)
    code, out, _ = run_cli(capsys, *args, "--max-new-tokens", "10", "--stats")
    assert code == 0 and "[stats] prompt tokens" in out and "tok/s" in out and "time to first token" in out


def test_tune_compiles_and_decodes_what_eager_decodes(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--tune`` implies ``--compile`` (tuning itself is a CUDA setting; on a CPU it compiles plainly)."""
    args = ["generate", "--ckpt", str(run_dir), "--prompt", "def ", "--temperature", "0", "--max-new-tokens", "8"]
    code, eager, _ = run_cli(capsys, *args)
    assert code == 0
    code, out, _ = run_cli(capsys, *args, "--tune", "--stats")
    stats = [line for line in out.splitlines() if line.startswith("[stats]")]
    assert code == 0 and any("compile " in line for line in stats)
    assert [line for line in out.splitlines() if not line.startswith("[stats]")] == eager.splitlines()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, not 0"),
        (["--temperature", "-1"], "--temperature must be 0 (greedy) or positive, not -1.0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-k", "-1"], "--top-k must be 0 (off)"),
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "x" * 200], "tokens but ctx_len is 64; shorten it or pass --truncate"),
    ],
)
def test_generate_bad_input_is_one_line_and_exit_2(
    run_dir: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code, out, err = run_cli(capsys, "generate", "--ckpt", str(run_dir), "--prompt", "def ", *extra)
    assert code == 2
    assert err.startswith("muomni: error: ") and message in err and err.count("\n") == 1


def test_truncate_makes_a_long_prompt_fit(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "generate", "--ckpt", str(run_dir), "--prompt", "x" * 200, "--truncate", "--max-new-tokens", "5"
    )
    assert code == 0, err
    assert out.startswith("x" * 200)


def test_missing_or_incomplete_checkpoint_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "generate", "--ckpt", str(tmp_path / "nowhere"), "--prompt", "a")
    assert code == 2 and "does not exist" in err
    for manifest in run_dir.glob("checkpoints/*/manifest.json"):
        manifest.unlink()
    code, _, err = run_cli(capsys, "chat", "--ckpt", str(run_dir))
    assert code == 2 and "holds no complete checkpoint" in err and err.count("\n") == 2  # a skip warning + error


def _chat_subprocess(run_dir: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "muomni", "chat", "--ckpt", str(run_dir), "--max-new-tokens", "6", "--seed", "0"]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_chat_through_stdin_answers_and_exits(run_dir: Path) -> None:
    result = _chat_subprocess(run_dir, "hello\n/reset\nhi\nexit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(PROMPT_MARKER) == 4  # hello, /reset, hi, exit
    assert "(history cleared)" in result.stdout
    assert result.stderr == ""


def _read_until(stream: IO[bytes], marker: bytes, count: int, timeout_s: float = 120.0) -> bytes:
    """What ``stream`` gives until ``marker`` has come ``count`` times (or it ends, or ``timeout_s`` passes)."""
    seen, deadline = b"", time.monotonic() + timeout_s
    while seen.count(marker) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1.0)
        if ready and not (piece := os.read(stream.fileno(), 4096)):
            break
        seen += piece if ready else b""
    return seen


def _sigint_to_the_process(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)


def _sigint_to_another_thread(proc: subprocess.Popen) -> None:
    """SIGINT to a thread of ``proc`` other than its main one (one of torch's), as the kernel may choose."""
    pid = proc.pid
    tgkill = getattr(ctypes.CDLL(None), "tgkill", None)  # glibc 2.30+
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    if tgkill is None or not others:
        pytest.skip("no tgkill in this C library, or no second thread in the chat process")
    assert tgkill(pid, others[-1], signal.SIGINT) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals to a child process's threads, /proc")
@pytest.mark.parametrize("taken_by", ["main thread", "another thread"])
def test_a_real_ctrl_c_at_the_prompt_ends_the_chat_with_one_line(run_dir: Path, taken_by: str) -> None:
    """The other Ctrl-C tests raise KeyboardInterrupt in-process; this one sends the signal, at the prompt,
    after a reply that went as usual: the chat ends at once (exit 130, one line on stderr, no traceback).

    A process's SIGINT may land on any of its threads; Python runs the handler in the main thread only. On
    an H200 machine the chat, blocked in input(), ended only when its input was closed; sent to a torch
    thread (OpenMP's, here), it does the same on a CPU. Its prompt now waits in a select() that the
    signal ends."""
    send = _sigint_to_the_process if taken_by == "main thread" else _sigint_to_another_thread
    assert _signal_at_the_prompt(run_dir, send) == (EXIT_INTERRUPTED, "muomni: interrupted\n")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM to a child process and select() on a pipe")
def test_sigterm_at_the_prompt_ends_the_chat_with_one_line(run_dir: Path) -> None:
    """SIGTERM is not a Ctrl-C: it ends the chat, not only a reply, with exit 143."""
    sent = _signal_at_the_prompt(run_dir, lambda proc: proc.send_signal(signal.SIGTERM))
    assert sent == (EXIT_TERMINATED, "muomni: terminated (SIGTERM)\n")


def _signal_at_the_prompt(run_dir: Path, send: Callable[[subprocess.Popen], None]) -> tuple[int | None, str]:
    """Start a chat, let one reply go as usual, ``send`` a signal at the next prompt with the chat's input
    still open, and give the chat's exit code (None: still running after 30 s) and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}  # 2: a thread besides the main one
    cmd = [sys.executable, "-m", "muomni", "chat", "--ckpt", str(run_dir), "--max-new-tokens", "6", "--seed", "0"]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        marker = b"\n" + PROMPT_MARKER.encode()  # a prompt on a line of its own: a reply may hold "> "
        assert _read_until(proc.stdout, marker, 1).count(marker) == 1, proc.stderr.read()
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        assert _read_until(proc.stdout, marker, 1).count(marker) == 1  # the reply, then the next prompt
        try:
            send(proc)
            deadline = time.monotonic() + 30  # with its input still open
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            code = proc.poll()
        finally:
            _, err = proc.communicate(timeout=60)  # closes its input: a chat still waiting ends there
    return code, err.decode()


def test_chat_ends_cleanly_at_end_of_input(run_dir: Path) -> None:
    result = _chat_subprocess(run_dir, "hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(PROMPT_MARKER) == 2


def test_chat_drops_the_oldest_turns_and_shows_stats(tokenizer: Tokenizer) -> None:
    model = tiny_model()  # ctx_len 64: a reply budget of 8 leaves 56 tokens of conversation
    out = io.StringIO()
    long_message = "a long message about parsing lines of text"
    read = scripted_input(long_message, long_message, long_message, "quit", "never read")
    assert chat(model, tokenizer, 8, temperature=0.0, show_stats=True, read=read, out=out) == 0
    text = out.getvalue()
    assert "oldest turn(s) to fit the 64-token context" in text
    assert text.count("[stats]") == 3


def test_chat_says_its_reply_limit_as_a_warning_not_in_the_conversation(tokenizer: Tokenizer) -> None:
    """Piped out, a chat's stdout is its replies: the limit was printed there, without the warning prefix."""
    out = io.StringIO()
    with pytest.warns(UserWarning, match="replies are limited to 32 tokens, half of ctx_len 64"):
        assert chat(tiny_model(), tokenizer, 100, temperature=0.0, read=scripted_input("quit"), out=out) == 0
    assert "replies are limited" not in out.getvalue()


def test_conversation_format_and_fit(tokenizer: Tokenizer) -> None:
    conv = Conversation(tokenizer, ctx_len=64, reply_tokens=16)
    ids, dropped, cut = conv.prompt_ids("hi")
    assert tokenizer.decode(ids) == "User: hi\nAssistant:" and (dropped, cut) == (0, False)
    conv.add("hi", tokenizer.encode(" hello"))
    ids, _, _ = conv.prompt_ids("how?")
    assert tokenizer.decode(ids) == "User: hi\nAssistant: hello\nUser: how?\nAssistant:"
    ids, dropped, cut = conv.prompt_ids("x" * 300)
    assert (dropped, cut, len(ids)) == (1, True, 48)
    conv.reset()
    assert conv.turns == []


class _InterruptOnce(io.StringIO):
    """An output that raises KeyboardInterrupt (Ctrl-C) at the first piece of the first reply."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def write(self, text: str) -> int:
        if self.armed and not text.startswith(("muomni chat", "\n", "(")) and text.strip():
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_reply_not_the_chat(tokenizer: Tokenizer) -> None:
    out = _InterruptOnce()
    assert chat(tiny_model(), tokenizer, 8, temperature=0.0, read=scripted_input("hello", "hi"), out=out) == 0
    text = out.getvalue()
    assert "(reply interrupted)" in text and not out.armed
    assert text.count("(reply interrupted)") == 1  # the second reply streamed normally


def test_chat_does_not_send_an_unknown_command(tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """/RESET and a mistyped /foo were sent to the model as messages: /RESET now clears as /reset does, /foo
    gets a hint and is not sent, and //foo sends /foo."""
    sent: list[tuple[str, int]] = []  # each message the model answers, and the turns held before it
    real = chat_module._answer

    def answer(model, conversation, message, *args):  # noqa: ANN001, ANN002, ANN202
        sent.append((message, len(conversation.turns)))
        return real(model, conversation, message, *args)

    monkeypatch.setattr(chat_module, "_answer", answer)
    out = io.StringIO()
    read = scripted_input("hello", "/foo", "/RESET", "//foo", "/reset now", "//", "// a C comment", "quit")
    assert chat(tiny_model(), tokenizer, 4, temperature=0.0, read=read, out=out) == 0
    assert sent[:4] == [("hello", 0), ("/foo", 0), ("/reset now", 1), ("/", 2)]
    assert [message for message, _ in sent[4:]] == ["// a C comment"]  # a longer line goes as it is
    lines = out.getvalue().splitlines()
    assert [line for line in lines if line.startswith(("(unknown", "(history"))] == [
        "(unknown command /foo, not sent; /reset clears the history, exit quits; "
        "to send it as a message, begin it with //)",
        "(history cleared)",
    ]
