"""A checkpoint whose files pass their checksums but hold the wrong state: resuming from it is one line naming
the checkpoint and the file (never a traceback), and the run folder is left as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from training_helpers import folder_bytes, train_in_process

from muomni.training.checkpoint import MANIFEST, list_checkpoints, verify


def _replace_and_rehash(ckpt: Path, name: str, source: Path) -> None:
    """Put ``source`` in place of the checkpoint's file ``name`` and rewrite its manifest entry to match, as a
    careless hand repair (or other code writing checkpoints) could."""
    shutil.copyfile(source, ckpt / name)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    data = (ckpt / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MANIFEST).write_text(json.dumps(manifest, indent=2))
    verify(ckpt)


@pytest.fixture
def run(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A run of 2 steps with its checkpoint at step 2."""
    save_dir = tmp_path / "run"
    code, err = train_in_process(corpus, save_dir, capsys, max_steps=2, checkpoint_freq=2, val_freq=2)
    assert code == 0, err
    return save_dir


@pytest.mark.parametrize(
    ("source", "target", "why"),
    [
        # The first of the RNG file's tensors is named: torch_cpu, or cuda.0 where there is a GPU.
        ("rng.safetensors", "optimizer.safetensors", "' is not named state.<index>.<name>"),
        ("model.safetensors", "optimizer.safetensors", "is not named state.<index>.<name>"),
        ("model.safetensors", "rng.safetensors", "no torch_cpu generator state of"),
        ("optimizer.safetensors", "rng.safetensors", "no torch_cpu generator state of"),
    ],
)
def test_a_file_holding_another_files_tensors_is_one_line_and_nothing_is_lost(
    run: Path, corpus: Path, capsys: pytest.CaptureFixture[str], source: str, target: str, why: str
) -> None:
    (ckpt,) = list_checkpoints(run)
    _replace_and_rehash(ckpt, target, ckpt / source)
    before = folder_bytes(run)
    code, err = train_in_process(corpus, run, capsys, max_steps=4, checkpoint_freq=2, val_freq=2)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"muomni: error: checkpoint {ckpt}: {target} does not hold "), err
    assert why in lines[0] and lines[0].endswith("; resume from another one")
    assert folder_bytes(run) == before


def test_another_models_optimizer_state_is_refused_at_resume(
    run: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same parameter count, other shapes: loaded, it failed in the first step, inside the optimizer."""
    other = tmp_path / "other"
    code, err = train_in_process(corpus, other, capsys, max_steps=2, checkpoint_freq=2, val_freq=2, d_model=16, d_ff=32)
    assert code == 0, err
    (ckpt,) = list_checkpoints(run)
    _replace_and_rehash(ckpt, "optimizer.safetensors", list_checkpoints(other)[0] / "optimizer.safetensors")
    code, err = train_in_process(corpus, run, capsys, max_steps=4, checkpoint_freq=2, val_freq=2)
    assert code == 2 and err.count("\n") == 1, err
    assert f"checkpoint {ckpt}: optimizer.safetensors does not hold this model's optimizer state" in err
    assert "has shape [" in err and "its parameter [" in err


def test_a_trainer_state_missing_a_section_is_one_line(
    run: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ckpt,) = list_checkpoints(run)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["rng"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    _replace_and_rehash(ckpt, "trainer_state.json", tmp_path / "state.json")
    code, err = train_in_process(corpus, run, capsys, max_steps=4, checkpoint_freq=2, val_freq=2)
    assert code == 2 and err.count("\n") == 1, err
    assert f"checkpoint {ckpt}: trainer_state.json is unreadable ('rng'); resume from another one" in err
