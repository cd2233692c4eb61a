"""Bad options to ``bench``, ``profile`` and ``plan``: exit 2 with one line that names the option, before any work.

A measurement takes minutes, so a bad option found after it loses it. Every test here replaces the work
(building a model, tokenizing, measuring a row) with a failure: the check must come first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from muomni.cli import main


@pytest.fixture(autouse=True)
def _no_work_in_any_test(no_work: None) -> None:
    """Every test here: no work may start (see conftest's ``no_work``)."""


def _fails_naming(capsys: pytest.CaptureFixture[str], argv: list[str], option: str) -> str:
    """Run ``muomni argv``; assert it is a user error, one line naming ``option``; return that line."""
    code = main([*argv, "--config", "debug", "device=cpu"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("muomni: error: "), err
    assert option in lines[0], err
    return lines[0]


@pytest.fixture
def existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("command", [["bench", "train"], ["bench", "infer"], ["profile"]])
def test_out_that_is_a_file_is_refused_before_any_work(
    command: list[str], existing_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails_naming(capsys, [*command, "--steps", "1", "--out", str(existing_file)], "--out")
    assert "is a file" in line
    assert existing_file.read_text(encoding="utf-8") == "keep me\n"


@pytest.mark.parametrize("command", [["bench", "train"], ["bench", "infer"], ["profile"]])
def test_out_under_a_file_is_refused(
    command: list[str], existing_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails_naming(capsys, [*command, "--out", str(existing_file / "results")], "--out")
    assert f"{existing_file} is a file" in line


@pytest.mark.parametrize("command", [["bench", "train"], ["bench", "infer"], ["profile"]])
def test_out_holding_the_users_own_files_is_refused_and_they_are_kept(
    command: list[str], existing_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder of the user's (notes, a run folder) beside what the command writes: results.md and a trace
    of the same names would be written over."""
    folder = existing_file.parent
    (folder / "results.md").write_text("my own table\n", encoding="utf-8")
    (folder / "trace_train.json").write_text("{}", encoding="utf-8")
    line = _fails_naming(capsys, [*command, "--steps", "1", "--out", str(folder)], "--out")
    assert "notes.txt" in line and "give a new or empty folder" in line
    assert existing_file.read_text(encoding="utf-8") == "keep me\n"
    assert (folder / "results.md").read_text(encoding="utf-8") == "my own table\n"


@pytest.mark.parametrize(
    ("command", "mine", "text"),
    [
        (["bench", "train"], "results.md", "my results\n"),
        (["bench", "infer"], "chart.png", "not a chart\n"),
        (["bench", "train"], "results.json", "my results\n"),
        pytest.param(["bench", "infer"], "results.json", '{"rows": [1, 2]}', id="bench-json-not-benchs"),
        (["profile"], "trace_train.json", "{}"),
        pytest.param(["profile"], "profile.json", '{"kind": "profile"}', id="profile-json-not-profiles"),
    ],
)
def test_out_holding_a_users_file_of_a_name_the_command_writes_is_refused(
    command: list[str], mine: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names alone were compared: a user's results.md or trace_train.json was written over, exit 0."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / mine).write_text(text, encoding="utf-8")
    line = _fails_naming(capsys, [*command, "--steps", "1", "--out", str(folder)], "--out")
    assert line == (
        f"muomni: error: --out {folder} holds {mine}, which this command did not write there; give a new or "
        "empty folder"
    )
    assert (folder / mine).read_text(encoding="utf-8") == text


def test_a_folder_of_what_the_command_wrote_before_may_be_written_again(tmp_path: Path) -> None:
    import argparse

    from muomni.bench.options import check_out_folder
    from muomni.bench.profile import PROFILE_FILES, _write_marker, wrote_profile
    from muomni.bench.report import RESULT_FILES, write_results, wrote_results
    from muomni.config import load_config

    for kind in ("train", "infer"):
        write_results(tmp_path / kind, kind, {"device": "cpu"}, [{"name": "baseline", "framework": "muomni"}], "|")
        (tmp_path / kind / "chart.png").write_bytes(b"\x89PNG")  # as drawn with matplotlib
        check_out_folder(tmp_path / kind, RESULT_FILES, wrote_results)
    (tmp_path / "profile" / "run").mkdir(parents=True)
    (tmp_path / "profile" / "trace_train.json").write_text("{}")
    _write_marker(tmp_path / "profile", argparse.Namespace(steps=1, infer=False), load_config("debug"))
    check_out_folder(tmp_path / "profile", PROFILE_FILES, wrote_profile)
    check_out_folder(tmp_path / "new", RESULT_FILES, wrote_results)  # made by the command
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty", PROFILE_FILES, wrote_profile)


def test_profile_checks_the_config_before_making_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prof"
    _fails_naming(capsys, ["profile", "--out", str(out), "nosuchkey=1"], "nosuchkey")
    assert not out.exists()


@pytest.mark.parametrize("command", [["bench", "train"], ["bench", "infer"], ["profile"]])
@pytest.mark.parametrize("steps", ["0", "-2"])
def test_steps_below_one_is_refused_naming_steps(
    command: list[str], steps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 0 was read as "not given" (bench) or profiled nothing; a negative was reported as max_steps or
    # max_new_tokens, keys the user never set.
    out = tmp_path / "out"
    line = _fails_naming(capsys, [*command, "--steps", steps, "--out", str(out)], f"--steps {steps}")
    assert "max_steps" not in line and "max_new_tokens" not in line
    assert not out.exists()


@pytest.mark.parametrize("what", ["train", "infer"])
@pytest.mark.parametrize("rows", ["", " , "])
def test_rows_naming_no_row_is_refused(
    what: str, rows: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _fails_naming(capsys, ["bench", what, "--rows", rows, "--out", str(out)], "--rows")
    assert not out.exists()


@pytest.mark.parametrize("what", ["train", "infer"])
def test_rows_naming_a_row_twice_is_refused(what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _fails_naming(capsys, ["bench", what, "--rows", "baseline, +all,baseline", "--out", str(out)], "'baseline' twice")
    assert not out.exists()


def test_bench_train_unknown_row_is_refused_before_the_data_is_prepared(capsys: pytest.CaptureFixture[str]) -> None:
    _fails_naming(capsys, ["bench", "train", "--rows", "baseline,warp"], "unknown bench row 'warp'")


@pytest.mark.parametrize("memory", ["nan", "inf", "0", "-1"])
def test_plan_memory_must_be_finite_and_positive(
    memory: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planned.json"
    _fails_naming(capsys, ["plan", "--memory", memory, "--out", str(out)], "--memory")
    assert not out.exists()


def test_plan_out_that_is_a_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails_naming(capsys, ["plan", "--memory", "8", "--out", str(tmp_path)], "--out")
    assert "is a folder" in line
    assert not any(tmp_path.iterdir())


def test_plan_out_under_a_file_is_refused(existing_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails_naming(capsys, ["plan", "--memory", "8", "--out", str(existing_file / "planned.json")], "--out")
    assert f"{existing_file} is a file" in line
    assert existing_file.read_text(encoding="utf-8") == "keep me\n"


def test_plan_makes_the_missing_folder_of_its_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from muomni.training import plan

    measured = {"keys": {"batch_size": 1, "gradient_accumulation_steps": 1}, "fits": True, "tokens_per_s": 1.0}
    monkeypatch.setattr(plan, "_warm_data_cache", lambda cfg: None)
    monkeypatch.setattr(plan, "search", lambda cfg, budget, workdir: [measured])
    out = tmp_path / "plans" / "today" / "planned.json"
    code = main(["plan", "--memory", "8", "--out", str(out), "--config", "debug", "device=cpu"])
    assert code == 0, capsys.readouterr().err
    assert out.is_file()


# --- bench infer: --ckpt fixes the model; the device asked for exists ---


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``muomni argv`` as given (no --config added); assert one user-error line; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("config", ["small", "tiny"])  # tiny: the default, given all the same
def test_bench_infer_refuses_config_with_ckpt(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # It was ignored without a word: the checkpoint's model was measured.
    argv = ["bench", "infer", "--ckpt", str(tmp_path / "run"), "--config", config, "--out", str(tmp_path / "b")]
    line = _one_line(capsys, argv)
    assert line == "muomni: error: --config is not used with --ckpt: the checkpoint fixes the model; leave --config out"


def test_bench_infer_refuses_config_keys_with_ckpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Unknown keys too were ignored without a word.
    argv = ["bench", "infer", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "foo=1", "batch_size=2"]
    line = _one_line(capsys, [*argv, "device=cpu"])
    assert line == (
        "muomni: error: config keys are not used with --ckpt (batch_size, foo): the checkpoint fixes the model; "
        "only device= may be given"
    )


def test_bench_infer_takes_the_device_with_ckpt() -> None:
    import argparse

    import torch

    from muomni.bench.infer import requested

    args = argparse.Namespace(ckpt="run", config="tiny", overrides=["device=cpu"])  # --config not given
    assert requested(args) == (None, torch.device("cpu"))


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "train", "--rows", "baseline", "--config", "debug"],
        ["bench", "infer", "--config", "debug"],
        ["bench", "infer", "--ckpt", "run"],
    ],
    ids=["train", "infer", "infer --ckpt"],
)
def test_bench_refuses_cuda_without_a_gpu_as_train_does(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without a GPU the rows ran on the CPU without a word (bench train: each row failed in its worker).
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _one_line(capsys, [*command, "--steps", "1", "--out", str(tmp_path / "b"), "device=cuda"])
    assert line == (
        "muomni: error: config key 'device': cuda was asked for but no CUDA GPU is available; use device=cpu"
    )
