"""Usage errors (a missing or malformed option, an unknown command) are user errors like any other: exit 2 and
one line, ``muomni: error: ...``, that says where to look."""

from __future__ import annotations

import errno
import signal
import sys
from argparse import SUPPRESS
from pathlib import Path

import pytest

import muomni
from muomni import cli
from muomni.cli import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "the following arguments are required: COMMAND (see muomni --help)"),
        (["bogus"], "invalid choice: 'bogus'"),
        # key=value overrides are optional: only what is missing is named
        (["bench"], "bench: the following arguments are required: {train,infer} (see muomni bench --help)"),
        (["generate", "--ckpt", "run"], "generate: the following arguments are required: --prompt"),
        (["generate", "--ckpt", "run", "--prompt", "a", "--max-new-tokens", "abc"], "invalid int value: 'abc'"),
        (["plan", "--memory", "abc"], "plan: argument --memory: invalid float value"),
        (["train", "--nope"], "train: unrecognized arguments: --nope (see muomni train --help)"),
        (
            ["generate", "--ckpt", "r", "--prompt", "a", "a=b"],
            "generate: unrecognized arguments: a=b (see muomni generate",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("muomni: error: ") and needle in lines[0], err
    assert "(see muomni" in lines[0] and "key=value" not in lines[0]


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [
        ("SIGINT", cli.EXIT_INTERRUPTED, "muomni: interrupted\n"),
        ("SIGTERM", cli.EXIT_TERMINATED, "muomni: terminated (SIGTERM)\n"),
    ],
)
def test_a_signal_during_the_commands_import_is_held_until_it_is_done_then_ends_the_command(
    sig: str, code: int, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An interrupt inside torch's or numpy's import once left them half loaded: exit 1 with an unrelated error.
    module = f"slow_command_{sig.lower()}"
    (tmp_path / f"{module}.py").write_text(
        "import os, signal\n"
        f"os.kill(os.getpid(), signal.{sig})  # the signal in the middle of the import\n"
        "finished = True\n"
        "def run(args):\n"
        "    raise AssertionError('the command must not run after an interrupt')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "train", (module, "run"))
    monkeypatch.delitem(sys.modules, module, raising=False)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    assert main(["train"]) == code
    assert sys.modules[module].finished  # the import ran to its end
    assert capsys.readouterr().err == said
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back
    assert signal.getsignal(signal.SIGTERM) == sigterm_before


@pytest.mark.parametrize(("rank", "shown"), [(None, True), ("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_prints_warnings(
    rank: str | None, shown: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ranks share one config, so a config's warning came once per rank."""
    from muomni.cli import _show_warning

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    _show_warning(UserWarning("warmup_steps 5 is not below the run's 4 steps"), UserWarning, "f.py", 1)
    assert (capsys.readouterr().err == "muomni: warning: warmup_steps 5 is not below the run's 4 steps\n") == shown


@pytest.mark.parametrize(
    ("rank", "error", "shown"), [("0", "config", True), ("1", "config", False), ("1", "data", True)]
)
def test_under_torchrun_a_config_error_is_printed_by_rank_0_and_another_error_by_its_rank(
    rank: str, error: str, shown: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every rank refuses a bad config alike, so its line came once per rank; a data file missing on one
    machine is that rank's own, and must still be said there."""
    monkeypatch.setenv("RANK", rank)
    config_error = ["train", "--config", "debug", "batch_size=0"]
    data_error = ["train", "--config", "debug", "train_text=/nonexistent/corpus.txt"]
    assert main(config_error if error == "config" else data_error) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("muomni: error: ") if shown else err == ""


@pytest.mark.parametrize("command", [["train"], ["bench", "train"], ["profile"]])
def test_config_given_twice_is_refused(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """argparse kept the last of two --config, silently: one of them was not meant."""
    with pytest.raises(SystemExit) as ended:
        main([*command, "--config", "debug", "--config", "tiny"])
    assert ended.value.code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [
        f"muomni: error: {command[0]}: --config is given twice; keep the one you mean (see muomni {command[0]} --help)"
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--ckpt", "run", "--out", "a", "--out", "b"],
        ["generate", "--ckpt", "run", "--prompt", "a", "--max-new-tokens", "4", "--max-new-tokens", "2"],
        ["bench", "infer", "--steps", "2", "--steps", "3"],
        ["plan", "--memory", "8", "--memory", "12"],
    ],
)
def test_any_option_of_one_value_given_twice_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--out a --out b`` wrote b alone: each option that takes one value is taken once (--prompt repeats)."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == cli.EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{argv[-2]} is given twice; keep the one you mean" in line


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0 and capsys.readouterr().out == f"muomni {muomni.__version__}\n"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/full/run/model.safetensors"),
            "muomni: error: cannot write /full/run/model.safetensors (No space left on device): free space there, "
            "or write elsewhere",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "muomni: error: cannot write the output (No space left on device)",
        ),
    ],
)
def test_a_full_disk_is_one_line_and_exit_2(
    error: OSError, line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def command(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "_resolve_holding_interrupts", lambda name: command)
    assert main(["train"]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err.splitlines() == [line]


def test_another_os_error_is_not_called_a_full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def command(args: object) -> int:
        raise OSError(errno.EIO, "Input/output error", "/disk/file")

    monkeypatch.setattr(cli, "_resolve_holding_interrupts", lambda name: command)
    with pytest.raises(OSError, match="Input/output error"):
        main(["train"])


def _help(*command: str) -> str:
    parser = cli.build_parser()
    text = (parser.commands[command[0]] if command else parser).format_help()
    return " ".join(text.split())  # argparse wraps lines at the terminal's width


@pytest.mark.parametrize("command", ["generate", "chat", "bench", "profile", "plan"])
def test_help_shows_every_option_default(command: str) -> None:
    """The default of every option that has one is in ``--help`` (generate's showed none: 0.8, 128, ...)."""
    parser = cli.build_parser().commands[command]
    text = _help(command)
    with_defaults = [a for a in parser._actions if a.option_strings and a.default not in (None, False, SUPPRESS)]
    assert with_defaults
    for action in with_defaults:
        shown = " ".join(str(action.help % vars(action)).split())
        assert f"(default: {action.default})" in shown and shown in text, action.dest
    assert "(default: 0.8)" in _help("chat") and "(default: 128)" in _help("generate")


def test_train_help_says_what_a_stop_does_and_how_to_resume() -> None:
    text = _help("train")
    assert "writes a checkpoint and exits 130 or 143" in text and "the same command resumes it" in text


def test_export_help_names_both_architectures() -> None:
    """A model with q/k/v biases exports as Qwen2ForCausalLM, not Llama: the help says so."""
    for text in (_help(), _help("export")):
        assert "LlamaForCausalLM" in text and "Qwen2ForCausalLM" in text and "qkv_bias" in text
