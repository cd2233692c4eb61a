"""Usage errors (a missing or malformed option, an unknown command) are user errors like any other: exit 2 and
one line, ``muomni: error: ...``, that says where to look."""

from __future__ import annotations

import pytest

from muomni.cli import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "the following arguments are required: COMMAND (see muomni --help)"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["generate", "--ckpt", "run"], "generate: the following arguments are required: --prompt"),
        (["generate", "--ckpt", "run", "--prompt", "a", "--max-new-tokens", "abc"], "invalid int value: 'abc'"),
        (["plan", "--memory", "abc"], "plan: argument --memory: invalid float value"),
        (["train", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("muomni: error: ") and needle in lines[0], err
    assert "(see muomni" in lines[0]
