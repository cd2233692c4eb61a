"""A checkpoint's files and paths: what is read, and a clear error naming the key or file for anything else."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from muomni.config import load_config
from muomni.errors import CheckpointError, ConfigError
from muomni.training.checkpoint import (
    CONFIG_FILE,
    MANIFEST,
    latest_checkpoint,
    list_checkpoints,
    read_config,
    resolve_checkpoint,
    save_tensors,
    verify,
    write_checkpoint,
)
from muomni.training.faults import KILL_ENV
from muomni.training.resume import find_resume
from muomni.training.sources import refuse_shape_overrides


def _checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "run", 3, {"notes.json": lambda p: p.write_text('{"a": 1}\n')})


def _notes_checkpoint(run: Path, step: int, value: int) -> Path:
    return write_checkpoint(run, step, {"notes.json": lambda p: p.write_text(json.dumps({"a": value}))})


def _notes(ckpt: Path) -> dict[str, int]:
    verify(ckpt)
    return json.loads((ckpt / "notes.json").read_text())


@pytest.mark.parametrize("swap", [True, False], ids=["swapped", "renamed-aside"])
def test_a_checkpoint_of_a_step_that_has_one_replaces_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:  # systems whose rename cannot exchange two paths
        monkeypatch.setattr("muomni.training.checkpoint._swap_paths", lambda a, b: False)
    run = tmp_path / "run"
    _notes_checkpoint(run, 3, 1)
    ckpt = _notes_checkpoint(run, 3, 2)
    assert _notes(ckpt) == {"a": 2}
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step_00000003"]  # nothing left beside it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the one-rename swap is Linux's renameat2")
def test_a_crash_while_a_step_is_replaced_leaves_that_step_a_whole_checkpoint(tmp_path: Path) -> None:
    """Killed between putting the new checkpoint in place and deleting the old, the step's folder is
    whole (the new one); a run with ``keep_checkpoints=1`` would otherwise be left with none."""
    run = tmp_path / "run"
    _notes_checkpoint(run, 3, 1)
    write_again = (
        "import json, sys; from muomni.training.checkpoint import write_checkpoint; "
        "write_checkpoint(sys.argv[1], 3, {'notes.json': lambda p: p.write_text(json.dumps({'a': 2}))})"
    )
    env = {**os.environ, KILL_ENV: "ckpt_replace:3"}
    done = subprocess.run([sys.executable, "-c", write_again, str(run)], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _notes(list_checkpoints(run)[-1]) == {"a": 2}


def test_a_step_left_only_in_its_set_aside_copy_is_named_when_the_run_is_read(tmp_path: Path) -> None:
    """Where paths cannot be swapped, a crash between the two renames leaves the step's old checkpoint as
    ``.old-step_N-PID``, whole; the newest checkpoint found is then an earlier one, and the user is told."""
    run = tmp_path / "run"
    _notes_checkpoint(run, 2, 1)
    _notes_checkpoint(run, 3, 1)
    write_again = (
        "import json, sys; from muomni.training import checkpoint; checkpoint._swap_paths = lambda a, b: False; "
        "checkpoint.write_checkpoint(sys.argv[1], 3, {'notes.json': lambda p: p.write_text(json.dumps({'a': 2}))})"
    )
    env = {**os.environ, KILL_ENV: "ckpt_replace:3"}
    done = subprocess.run([sys.executable, "-c", write_again, str(run)], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with pytest.warns(UserWarning, match=r"\.old-step_00000003-\d+ is a whole checkpoint .* rename it to") as caught:
        assert latest_checkpoint(run).name == "step_00000002"
    (aside,) = run.glob("checkpoints/.old-step_00000003-*")
    assert _notes(aside) == {"a": 1} and str(run / "checkpoints" / "step_00000003") in str(caught[0].message)


def test_a_checkpoint_that_cannot_be_written_whole_leaves_nothing(tmp_path: Path) -> None:
    """A full disk midway: the part written is no checkpoint, and would hold the space the user must free."""
    run = tmp_path / "run"

    def disk_full(path: Path) -> None:
        path.write_bytes(b"part of a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(OSError, match="No space left on device"):
        write_checkpoint(run, 3, {"notes.json": lambda p: p.write_text("{}"), "model.safetensors": disk_full})
    assert list((run / "checkpoints").iterdir()) == []


def test_safetensors_own_error_for_a_full_disk_is_an_os_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:  # the text safetensors 0.8 gives
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("muomni.training.checkpoint.save_file", full)
    with pytest.raises(OSError) as raised:
        save_tensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "model.safetensors")


def test_a_written_checkpoint_verifies(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    assert set(verify(ckpt)["files"]) == {"notes.json"}


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        "[1, 2]",
        '{"step": 3}',
        '{"step": 3, "files": [["notes.json", 8]]}',
        '{"step": 3, "files": {"notes.json": {"sha256": "00"}}}',
        '{"step": 3, "files": {"notes.json": {"bytes": "9", "sha256": "00"}}}',
        '{"step": 3, "files": {"notes.json": {"bytes": 9}}}',
        '{"step": 3, "files": {"notes.json": 9}}',
        "[" * 100_000 + "]" * 100_000,  # nested past the parser's depth: a RecursionError
    ],
)
def test_a_manifest_of_another_shape_is_corrupt_not_a_crash(tmp_path: Path, manifest: str) -> None:
    ckpt = _checkpoint(tmp_path)
    (ckpt / MANIFEST).write_text(manifest)
    with pytest.raises(CheckpointError, match=f"has a corrupt {MANIFEST}"):
        verify(ckpt)


def test_a_file_that_changed_after_writing_fails_its_checksum(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    (ckpt / "notes.json").write_text('{"a": 2}\n')
    with pytest.raises(CheckpointError, match="notes.json is missing or does not match its checksum"):
        verify(ckpt)
    assert json.loads((ckpt / MANIFEST).read_text())["step"] == 3


def _config_checkpoint(tmp_path: Path, **keys: object) -> Path:
    """A run folder whose one checkpoint holds a config.json (all that reading a config needs)."""
    cfg = load_config("debug", keys)
    write_checkpoint(tmp_path / "run", 5, {CONFIG_FILE: cfg.save})
    return tmp_path / "run"


def test_a_checkpoint_path_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    taken = tmp_path / "weights.bin"
    taken.write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="weights.bin is a file; give a run folder or a checkpoint folder"):
        resolve_checkpoint(taken)


def test_a_run_folder_of_broken_checkpoints_says_so_rather_than_train_first(tmp_path: Path) -> None:
    run = _config_checkpoint(tmp_path)
    (list_checkpoints(run)[0] / MANIFEST).write_text("not json")
    broken = "holds no complete checkpoint: all 1 are broken; train again"
    with pytest.warns(UserWarning, match="skipping checkpoint"), pytest.raises(CheckpointError, match=broken):
        resolve_checkpoint(run)


@pytest.mark.parametrize("content", ["[1, 2]", '"debug"', "not json"])
def test_a_config_json_of_another_shape_is_a_corrupt_checkpoint(tmp_path: Path, content: str) -> None:
    # A list or a string once went on to load_config, which read it as the path of a config file.
    ckpt = list_checkpoints(_config_checkpoint(tmp_path))[0]
    (ckpt / CONFIG_FILE).write_text(content)
    with pytest.raises(CheckpointError, match="the checkpoint is corrupt"):
        read_config(ckpt)


def test_init_from_refuses_a_model_key_given_against_its_checkpoint(tmp_path: Path) -> None:
    run = _config_checkpoint(tmp_path, d_model=64)
    cfg = load_config("debug", {"init_from": str(run), "d_model": 128, "n_layers": 3})
    with pytest.raises(ConfigError, match="'d_model': 128 was given, but init_from=.* has 64"):
        refuse_shape_overrides(cfg, ["init_from", "d_model"])
    refuse_shape_overrides(cfg, ["init_from"])  # not given on the command line: the checkpoint's shape, silently
    same = load_config("debug", {"init_from": str(run), "d_model": 64, "ctx_len": 32})
    refuse_shape_overrides(same, ["init_from", "d_model", "ctx_len"])  # agreeing, and ctx_len may change


def test_a_missing_init_from_or_resume_path_names_its_key(tmp_path: Path) -> None:
    cfg = load_config("debug", {"init_from": str(tmp_path / "nowhere"), "d_model": 64})
    with pytest.raises(CheckpointError, match="config key 'init_from': checkpoint path .* does not exist"):
        refuse_shape_overrides(cfg, ["d_model"])
    cfg = load_config("debug", {"resume": str(tmp_path / "nowhere"), "save_dir": str(tmp_path / "run")})
    with pytest.raises(CheckpointError, match="config key 'resume': checkpoint path .* does not exist"):
        find_resume(cfg)


@pytest.mark.parametrize("given", ["folder", "hf:folder"])
def test_resume_of_a_hugging_face_model_points_to_init_from(tmp_path: Path, given: str) -> None:
    """It said "give it as hf:PATH", and resume=hf:PATH then "does not exist": advice that looped."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text('{"model_type": "llama"}')
    resume = str(folder) if given == "folder" else f"hf:{folder}"
    cfg = load_config("debug", {"resume": resume, "save_dir": str(tmp_path / "run")})
    with pytest.raises(CheckpointError, match=f"resume continues a muomni run; .* with init_from=hf:{folder}$"):
        find_resume(cfg)


def test_resume_auto_over_only_broken_checkpoints_is_refused_and_resume_never_starts_over(tmp_path: Path) -> None:
    # It started over, and deleted the broken checkpoints (a long run lost to one hand-edited file) when the
    # new run wrote its first.
    run = _config_checkpoint(tmp_path)
    (list_checkpoints(run)[0] / MANIFEST).write_text("not json")
    cfg = load_config("debug", {"save_dir": str(run)})
    refused = pytest.raises(CheckpointError, match=f"no checkpoint of {run} is complete .*resume=never to start over")
    with pytest.warns(UserWarning, match="skipping checkpoint"), refused:
        find_resume(cfg)
    assert len(list_checkpoints(run)) == 1
    with pytest.warns(UserWarning, match=f"resume=never: this run replaces the one in {run}"):
        assert find_resume(cfg.replace(resume="never")) is None


def test_a_runs_checkpoints_folder_points_to_the_run_folder(tmp_path: Path) -> None:
    run = _config_checkpoint(tmp_path)
    load_config("debug").save(run / CONFIG_FILE)  # a run folder holds its config, as training writes it
    with pytest.raises(CheckpointError, match=f"is a run's checkpoints folder; give the run folder {run}$"):
        resolve_checkpoint(run / "checkpoints")


def test_tensor_files_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """safetensors writes owner-only files: an export served by another user could not be read."""
    import stat

    import torch

    from muomni.training.checkpoint import save_tensors

    save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    (tmp_path / "plain").write_text("")
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "plain").stat().st_mode
    )


def _trained_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint with a file of each name the trainer writes (their contents are not read here)."""
    names = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "trainer_state.json", "tokenizer.json")
    writers = {name: lambda p, name=name: p.write_text(name) for name in names}
    return write_checkpoint(run, step, {**writers, CONFIG_FILE: load_config("debug").save})


def test_resume_still_refuses_a_checkpoint_shared_without_its_training_state(tmp_path: Path) -> None:
    """Loading a model checks only the files it reads; resuming reads, and so checks, them all."""
    import warnings

    from muomni.training.checkpoint import INFERENCE_FILES

    run = tmp_path / "run"
    whole = _trained_checkpoint(run, 5)
    stripped = _trained_checkpoint(run, 10)
    (stripped / "optimizer.safetensors").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(run, INFERENCE_FILES) == stripped == resolve_checkpoint(run, files=INFERENCE_FILES)
    with pytest.warns(UserWarning, match="skipping checkpoint: .*optimizer.safetensors is missing"):
        assert latest_checkpoint(run) == whole
    cfg = load_config("debug", {"save_dir": str(run)})
    with pytest.warns(UserWarning) as said:
        assert find_resume(cfg) == whole
    assert any("skipping checkpoint" in str(w.message) and "optimizer.safetensors" in str(w.message) for w in said)
    missing = "config key 'resume': checkpoint .*: optimizer.safetensors is missing or does not match its checksum"
    with pytest.raises(CheckpointError, match=missing):
        find_resume(cfg.replace(resume=str(stripped)))


def _prune_when_checked(monkeypatch: pytest.MonkeyPatch, ckpt: Path, prune: Callable[[], None]) -> list[Path]:
    """Run ``prune()`` when a file of ``ckpt`` is first hashed; return the files hashed then."""
    from muomni.training import checkpoint

    real = checkpoint.sha256_file
    pruned: list[Path] = []

    def prune_then_hash(path: Path) -> str:
        if not pruned and path.parent == ckpt:
            pruned.append(path)
            prune()
        return real(path)

    monkeypatch.setattr(checkpoint, "sha256_file", prune_then_hash)
    return pruned


def test_a_checkpoint_pruned_while_it_is_checked_gives_way_to_the_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with keep_checkpoints=1 writes step 30, then deletes step 20 while another process checks it."""
    import shutil
    import warnings

    run = tmp_path / "run"
    chosen = _notes_checkpoint(run, 20, 1)
    pruned = _prune_when_checked(monkeypatch, chosen, lambda: (_notes_checkpoint(run, 30, 2), shutil.rmtree(chosen)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it was warned of as broken, and then no complete one was left
        newest = latest_checkpoint(run)
    assert pruned and newest == run / "checkpoints" / "step_00000030" and _notes(newest) == {"a": 2}


def test_a_named_checkpoint_removed_while_it_is_checked_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    chosen = _notes_checkpoint(tmp_path / "run", 20, 1)
    pruned = _prune_when_checked(monkeypatch, chosen, lambda: shutil.rmtree(chosen))
    with pytest.raises(CheckpointError, match=f"checkpoint {chosen} was removed while being read; give the run"):
        resolve_checkpoint(chosen)
    assert pruned
