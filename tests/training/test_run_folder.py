"""The run folder: what may become one, one run writing it at a time, and a replaced run kept whole until
the new run's first checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from training_helpers import folder_bytes, overrides, read_metrics, run_cli, tiny_settings, train_in_process

import muomni
from muomni.cli import main
from muomni.training.checkpoint import checkpoints_dir, list_checkpoints, verify
from muomni.training.run_folder import RunFolderLock


@pytest.fixture
def run(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A finished run of 4 steps with checkpoints at steps 2 and 4."""
    save_dir = tmp_path / "run"
    code, err = train_in_process(corpus, save_dir, capsys, max_steps=4, checkpoint_freq=2, val_freq=2)
    assert code == 0, err
    return save_dir


HF_CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64})


@pytest.mark.parametrize(
    "files",
    [
        {"config.json": HF_CONFIG, "tokenizer.json": "{}"},  # a Hugging Face model's folder, weights aside
        {"metrics.jsonl": "my own notes\n", "notes.txt": "keep\n"},
        {"config.json": "not json"},
    ],
    ids=["hf-config", "own-log", "broken-config"],
)
def test_a_folder_of_files_no_run_wrote_is_refused(
    files: dict[str, str], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    before = folder_bytes(folder)
    code, err = train_in_process(corpus, folder, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "that no muomni run wrote" in lines[0] and "give a new or empty folder" in lines[0]
    assert folder_bytes(folder) == before


def test_the_config_a_run_is_given_is_not_a_run(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A muomni config alone, in the folder it names: the run would replace it with the resolved config.
    folder = tmp_path / "exp"
    folder.mkdir()
    config = folder / "config.json"
    config.write_text(json.dumps(tiny_settings(corpus, folder, max_steps=2)), encoding="utf-8")
    before = config.read_bytes()
    code = main(["train", "--config", str(config)])
    assert code == 2
    assert "config.json that no muomni run wrote" in capsys.readouterr().err
    assert config.read_bytes() == before


def test_a_folder_of_other_files_may_become_a_run(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep\n", encoding="utf-8")
    code, err = train_in_process(corpus, folder, capsys, max_steps=2, checkpoint_freq=2)
    assert code == 0, err
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep\n"
    assert len(list_checkpoints(folder)) == 1


def test_a_checkpoint_or_checkpoints_folder_is_refused(
    run: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Training into a checkpoint replaced its config.json, and the checkpoint then failed its checksum.
    newest = list_checkpoints(run)[-1]
    before = folder_bytes(run)
    code, err = train_in_process(corpus, newest, capsys)
    assert code == 2 and "is a checkpoint or model folder, not a run folder" in err
    code, err = train_in_process(corpus, checkpoints_dir(run), capsys)
    assert code == 2 and f"is a run's checkpoints folder; give the run folder {run}" in err
    assert folder_bytes(run) == before
    verify(newest)


def test_a_second_run_in_the_same_folder_is_refused(
    run: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = folder_bytes(run)
    with RunFolderLock(run):  # another run holds it (flock's locks conflict within one process too)
        code, err = train_in_process(corpus, run, capsys, max_steps=6, checkpoint_freq=2, val_freq=2)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"another run is training in {run}" in lines[0] and "choose another save_dir" in lines[0]
    assert folder_bytes(run) == before
    # Released, it trains on: the lock went with the holder.
    code, err = train_in_process(corpus, run, capsys, max_steps=6, checkpoint_freq=2, val_freq=2)
    assert code == 0, err
    assert list_checkpoints(run)[-1].name == "step_00000006"


def test_a_replaced_run_keeps_its_files_until_the_new_runs_first_checkpoint(
    run: Path, corpus: Path, private_cache: Path
) -> None:
    old_files = {name: (run / name).read_bytes() for name in ("config.json", "tokenizer.json", "metrics.jsonl")}
    old_checkpoints = [p.name for p in list_checkpoints(run)]
    # Another model in its place, killed at its first step, before any checkpoint of its own.
    replacing = tiny_settings(corpus, run, resume="never", d_model=48, max_steps=4, checkpoint_freq=2)
    killed = run_cli(["train", *overrides(replacing)], private_cache, env={"MUOMNI_TEST_KILL_AT": "step_end:1"})
    assert killed.returncode != 0
    assert {name: (run / name).read_bytes() for name in old_files} == old_files
    assert [p.name for p in list_checkpoints(run)] == old_checkpoints
    # Run to its first checkpoint, it replaces them all: its config, its log alone, its checkpoints.
    done = run_cli(["train", *overrides(replacing)], private_cache)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["d_model"] == 48
    steps = [m["step"] for m in read_metrics(run) if "loss" in m]
    assert steps == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]


@pytest.mark.parametrize(
    "refused", [{"weight_dtype": "bf16", "optimizer": "sgd"}, {"train_text": "builtin:foo"}], ids=["sgd", "corpus"]
)
def test_a_run_refused_while_it_sets_up_does_not_say_it_replaces_the_folders_run(
    run: Path, corpus: Path, capsys: pytest.CaptureFixture[str], refused: dict[str, str]
) -> None:
    # The warning that resume=never replaces the run came first, then the error: it replaced nothing.
    before = folder_bytes(run)
    code, err = train_in_process(corpus, run, capsys, resume="never", **refused)
    assert code == 2
    assert "replaces" not in err and err.strip().splitlines()[-1].startswith("muomni: error: "), err
    assert folder_bytes(run) == before
    # Nothing refusing it, the run says so, once, before it trains.
    code, err = train_in_process(corpus, run, capsys, resume="never", max_steps=2, checkpoint_freq=2)
    assert code == 0, err
    said = f"muomni: warning: resume=never: this run replaces the one in {run} (its checkpoints up to step 4 go"
    assert [line.startswith(said) for line in err.splitlines()].count(True) == 1, err


def test_resume_auto_names_the_broken_checkpoints_it_skips_as_ones_that_go(
    run: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A broken checkpoint newer than the one resumed was "skipped", then deleted with the user's file in it
    # when the run wrote its first checkpoint, without a word that it would be.
    broken = checkpoints_dir(run) / "step_00000099"
    broken.mkdir()
    (broken / "notes.txt").write_text("mine\n", encoding="utf-8")
    code, err = train_in_process(corpus, run, capsys, max_steps=6, checkpoint_freq=2, val_freq=2)
    assert code == 0, err
    assert "skipping checkpoint" in err
    said = (
        f"muomni: warning: resuming from step 4: the broken checkpoints of {run} after it (step_00000099) go when "
        "this run writes its first; to keep them, stop now and move them away"
    )
    assert said in err.splitlines(), err
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004", "step_00000006"]


def test_trainer_takes_a_config() -> None:
    with pytest.raises(TypeError, match=r"Trainer takes a Config, not dict"):
        muomni.Trainer({"batch_size": 4})


def test_a_file_system_without_locks_trains_unlocked_with_a_warning(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from muomni.training import run_folder

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_folder.fcntl, "flock", refuse)
    code, err = train_in_process(corpus, tmp_path / "run", capsys, max_steps=2, checkpoint_freq=2)
    assert code == 0, err
    assert "cannot be locked (No locks available): run one training there at a time" in err
    assert len(list_checkpoints(tmp_path / "run")) == 1


def test_a_folder_where_the_lock_file_goes_is_named_in_one_line(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    code, err = train_in_process(corpus, tmp_path / "run", capsys, max_steps=4)
    assert code == 2, err
    assert err.splitlines() == [
        f"muomni: error: config key 'save_dir': its lock file {tmp_path / 'run' / '.lock'} "
        "cannot be opened (Is a directory); remove it"
    ]


@pytest.mark.parametrize("damage", ["missing", "not json"])
def test_a_run_folder_whose_config_was_lost_says_where_to_copy_it_from(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Its checkpoints are intact; it was called a folder "that no muomni run wrote", to be abandoned."""
    run = tmp_path / "run"
    code, err = train_in_process(corpus, run, capsys, max_steps=4, checkpoint_freq=4)
    assert code == 0, err
    if damage == "missing":
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text("{bad")
    before = folder_bytes(run)
    code, err = train_in_process(corpus, run, capsys, max_steps=6)
    assert code == 2, err
    ckpt = list_checkpoints(run)[-1]
    assert err.splitlines()[-1].endswith(
        f"copy both back from its checkpoint {ckpt} to continue it, or give a new folder"
    )
    assert folder_bytes(run) == before
