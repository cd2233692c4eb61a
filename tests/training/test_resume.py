"""Fault tolerance through the command line: SIGKILL anywhere + resume is bitwise an uninterrupted run.

Each test runs ``python -m muomni train`` in a subprocess. ``MUOMNI_TEST_KILL_AT`` makes the trainer
send itself SIGKILL at a named point (see muomni/training/faults.py).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import (
    ROOT,
    final_weights,
    folder_bytes,
    overrides,
    read_metrics,
    run_cli,
    tiny_settings,
    write_corpus,
)

from muomni.cli import EXIT_TERMINATED
from muomni.training.checkpoint import MODEL_FILE, checkpoints_dir, latest_checkpoint


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A corpus, a token cache and an uninterrupted reference run, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root / "corpus.txt")
    cache = root / "cache"
    ref = root / "reference"
    result = run_cli(["train", *overrides(tiny_settings(corpus, ref))], cache)
    assert result.returncode == 0, result.stderr
    return {"root": root, "corpus": corpus, "cache": cache, "ref": ref}


def _train(shared: dict[str, Any], save_dir: Path, env: dict[str, str] | None = None, **changes: Any):
    return run_cli(["train", *overrides(tiny_settings(shared["corpus"], save_dir, **changes))], shared["cache"], env)


def _curve(save_dir: Path) -> list[tuple]:
    """Every logged number but the timings."""
    keys = ("step", "loss", "lr", "grad_norm", "val_loss")
    return [tuple(m.get(k) for k in keys) for m in read_metrics(save_dir)]


def _assert_same_as_reference(shared: dict[str, Any], save_dir: Path) -> None:
    ref, got = final_weights(shared["ref"]), final_weights(save_dir)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), f"{name} differs from the uninterrupted run"
    ref_file = latest_checkpoint(shared["ref"]) / MODEL_FILE
    assert (latest_checkpoint(save_dir) / MODEL_FILE).read_bytes() == ref_file.read_bytes()
    assert _curve(save_dir) == _curve(shared["ref"])


@pytest.mark.parametrize("kill_at", ["after_ckpt:4", "mid_step:7", "ckpt_write:8"])
def test_sigkill_then_resume_is_bitwise_equal(shared: dict[str, Any], tmp_path: Path, kill_at: str) -> None:
    run = tmp_path / "run"
    killed = _train(shared, run, env={"MUOMNI_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _train(shared, run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    _assert_same_as_reference(shared, run)
    assert not list(checkpoints_dir(run).glob(".tmp-*"))  # a torn write is cleaned up


@pytest.fixture(scope="module")
def overlapped_reference(shared: dict[str, Any]) -> Path:
    """An uninterrupted run of the GPU's loop on a CPU (fused AdamW: steps overlap)."""
    reference = shared["root"] / "overlapped_reference"
    assert _train_fused(shared, reference).returncode == 0
    return reference


def _train_fused(shared: dict[str, Any], save_dir: Path, env: dict[str, str] | None = None):
    args = ["train", *overrides(tiny_settings(shared["corpus"], save_dir))]
    return run_cli(args, shared["cache"], env, fused=True)


@pytest.mark.parametrize("kill_at", ["step_end:6", "mid_step:7"])
def test_sigkill_with_overlapped_steps_then_resume_is_bitwise_equal(
    shared: dict[str, Any], overlapped_reference: Path, tmp_path: Path, kill_at: str
) -> None:
    # At step 6's end step 7 is already launched, and at step 7's middle step 6 is not read yet: neither
    # may leak into what the resumed run trains.
    reference, run = overlapped_reference, tmp_path / "run"
    killed = _train_fused(shared, run, env={"MUOMNI_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _train_fused(shared, run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step_00000004 at step 4" in resumed.stdout
    for name, weights in final_weights(reference).items():
        assert torch.equal(weights, final_weights(run)[name]), f"{name} differs from the uninterrupted run"
    assert _curve(run) == _curve(reference)


def test_sigterm_with_overlapped_steps_finishes_the_step_in_flight_too(
    shared: dict[str, Any], overlapped_reference: Path, tmp_path: Path
) -> None:
    # SIGTERM as step 3 lands, with step 4 already launched: step 4 lands too, and the run stops there with
    # a checkpoint of step 4, the same file as the uninterrupted run's checkpoint of step 4.
    run = tmp_path / "run"
    stopped = _train_fused(shared, run, env={"MUOMNI_TEST_KILL_AT": "step_end:3:SIGTERM"})
    assert stopped.returncode == EXIT_TERMINATED, stopped.stderr
    assert "stopped by SIGTERM after step 4" in stopped.stdout
    assert [p.name for p in checkpoints_dir(run).iterdir()] == ["step_00000004"]
    reference_file = checkpoints_dir(overlapped_reference) / "step_00000004" / MODEL_FILE
    assert (checkpoints_dir(run) / "step_00000004" / MODEL_FILE).read_bytes() == reference_file.read_bytes()
    assert _curve(run) == [row for row in _curve(overlapped_reference) if row[0] <= 4 and row[1] is not None]


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(shared: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["ref"], run)
    newest = checkpoints_dir(run) / "step_00000012" / MODEL_FILE
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))
    result = _train(shared, run)
    assert result.returncode == 0, result.stderr
    assert "skipping checkpoint" in result.stderr and "step_00000012" in result.stderr
    assert "resuming from" in result.stdout and "step_00000008 at step 8" in result.stdout
    _assert_same_as_reference(shared, run)


def test_incompatible_resume_is_refused(shared: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["ref"], run)
    result = _train(shared, run, batch_size=2)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "its batch was 4 windows (4 x 1 accumulation) and is 2 now (2 x 1); set batch_size or" in lines[0]
    assert "resume=never" in lines[0]


def test_resume_from_a_path_into_a_new_save_dir(shared: dict[str, Any], tmp_path: Path) -> None:
    ckpt = checkpoints_dir(shared["ref"]) / "step_00000008"
    run = tmp_path / "elsewhere"
    result = _train(shared, run, resume=str(ckpt))
    assert result.returncode == 0, result.stderr
    for name, ref in final_weights(shared["ref"]).items():
        assert torch.equal(ref, final_weights(run)[name])


def test_another_runs_checkpoint_is_refused_for_a_folder_that_holds_a_run(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    # Resumed there, step 8 of the reference would replace this folder's run: its step 12 deleted,
    # its log cut at step 8. Refused before anything is written.
    run = tmp_path / "run"
    shutil.copytree(shared["ref"], run)
    before = folder_bytes(run)
    elsewhere = tmp_path / "other"
    shutil.copytree(shared["ref"], elsewhere)
    result = _train(shared, run, resume=str(checkpoints_dir(elsewhere) / "step_00000008"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "already holds a run (checkpoints up to step 12)" in lines[0] and "resume=auto" in lines[0]
    assert folder_bytes(run) == before


def test_an_earlier_checkpoint_of_the_same_run_is_resumed_with_a_warning(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["ref"], run)
    result = _train(shared, run, resume=str(checkpoints_dir(run) / "step_00000008"))
    assert result.returncode == 0, result.stderr
    assert "resuming from step 8: the checkpoints of" in result.stderr and "up to step 12" in result.stderr
    assert "learning-rate schedule" not in result.stderr  # the same keys, the same schedule: nothing to say
    _assert_same_as_reference(shared, run)


def test_a_finished_run_resumed_with_more_steps_says_its_learning_rate_climbs_back(
    shared: dict[str, Any], tmp_path: Path
) -> None:
    """The schedule follows the resumed run's config: a run that decayed to min_lr, resumed with a larger
    max_steps, trains next at the new schedule's rate, well above min_lr, and is told so in one warning."""
    run = tmp_path / "run"
    shutil.copytree(shared["ref"], run)
    result = _train(shared, run, max_steps=16)
    assert result.returncode == 0, result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if "learning-rate schedule" in ln]
    assert "total_steps 12 -> 16" in line
    logged = {m["step"]: m["lr"] for m in read_metrics(run) if "lr" in m}
    assert logged[12] == pytest.approx(3e-4)  # min_lr (lr / 10), reached at the first run's last step
    assert f"the next step trains at lr {logged[13]:.3g} where the checkpoint's schedule gives 0.0003" in line
    assert logged[13] > 2 * logged[12]


def test_sigterm_finishes_the_step_and_checkpoints(shared: dict[str, Any], tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = tiny_settings(shared["corpus"], run, max_steps=100000, checkpoint_freq=100000, val_freq=100000)
    env = {"MUOMNI_CACHE": str(shared["cache"]), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "muomni", "train", *overrides(settings)],
        cwd=ROOT,
        env={**_clean_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err  # stopped with a checkpoint, not finished
    last_step = read_metrics(run)[-1]["step"]
    assert last_step >= 3
    assert [p.name for p in checkpoints_dir(run).iterdir()] == [f"step_{last_step:08d}"]
    assert f"stopped by SIGTERM after step {last_step}" in out


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MUOMNI_TEST_KILL_AT"}
