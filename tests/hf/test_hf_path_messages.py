"""What the Hugging Face commands say about a folder of the other kind, and about an export folder in the way.

``muomni export --ckpt hf:FOLDER`` said "checkpoint path hf:FOLDER does not exist"; ``--ckpt hf:RUN`` (and
``init_from=hf:RUN``) on a muomni run or checkpoint folder said "model_type None is not supported"; and an
earlier export holding one extra file was called "not a previous muomni export".
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hf_helpers import error_line, tiny_config

from muomni.cli import main
from muomni.errors import CheckpointError
from muomni.hf import export_hf, load_for_training, load_hf
from muomni.training.checkpoint import latest_checkpoint


@pytest.fixture
def run(make_checkpoint: Callable) -> Path:
    """A run folder as the trainer leaves it: its config.json and tokenizer.json beside checkpoints/."""
    folder = make_checkpoint()
    ckpt = latest_checkpoint(folder)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(ckpt / name, folder / name)
    return folder


def test_export_refuses_an_hf_path_by_what_it_is(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = export_hf(run, tmp_path / "hf1")
    out = ["--out", str(tmp_path / "hf2")]
    line = error_line(capsys, ["export", "--ckpt", f"hf:{hf}", *out])
    assert line == f"--ckpt hf:{hf} is a Hugging Face folder already; export takes a muomni run or checkpoint folder"
    line = error_line(capsys, ["export", "--ckpt", f"hf:{run}", *out])
    assert line == f"{run} is a muomni run (or checkpoint) folder, not a Hugging Face one; give it without hf:"
    line = error_line(capsys, ["export", "--ckpt", f"hf:{tmp_path / 'nothing'}", *out])
    assert line == f"--ckpt hf:{tmp_path / 'nothing'} is an hf: path; export takes a muomni run or checkpoint folder"
    # Without hf:, it was told to "give it as hf:", which the line above then refused: advice that looped.
    line = error_line(capsys, ["export", "--ckpt", str(hf), *out])
    assert line == f"{hf} is a Hugging Face model folder; export takes a muomni run or checkpoint folder"
    assert not (tmp_path / "hf2").exists()


@pytest.mark.parametrize("kind", ["run", "checkpoint"])
def test_an_hf_path_to_a_muomni_folder_says_to_drop_the_prefix(
    kind: str, run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = run if kind == "run" else latest_checkpoint(run)
    says = f"{folder} is a muomni run (or checkpoint) folder, not a Hugging Face one; give it without hf:"
    assert error_line(capsys, ["generate", "--ckpt", f"hf:{folder}", "--prompt", "x"]) == says
    with pytest.raises(CheckpointError) as caught:  # what init_from=hf:FOLDER runs
        load_for_training(f"hf:{folder}", tiny_config())
    assert str(caught.value) == says


def test_a_hugging_face_trainer_checkpoint_still_loads(run: Path, tmp_path: Path) -> None:
    """A transformers Trainer checkpoint holds a trainer_state.json too, beside a config with a model_type."""
    hf = export_hf(run, tmp_path / "hf")
    (hf / "trainer_state.json").write_text("{}", encoding="utf-8")
    model, _ = load_hf(f"hf:{hf}")
    assert model.config.d_model == tiny_config().d_model


def test_an_earlier_export_with_extra_files_names_them(run: Path, tmp_path: Path) -> None:
    out = export_hf(run, tmp_path / "hf")
    (out / "extra.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CheckpointError) as caught:
        export_hf(run, out)
    assert str(caught.value) == (
        f"output folder {out} holds files a muomni export does not write (extra.txt); "
        "move them away or choose a new folder"
    )
    for name in ("b.txt", "c.txt", "d.txt"):
        (out / name).write_text("mine", encoding="utf-8")
    with pytest.raises(CheckpointError) as caught:
        export_hf(run, out)
    assert "does not write (b.txt, c.txt, d.txt, ...); move them away" in str(caught.value)
    assert (out / "extra.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "model.safetensors").is_file()  # the earlier export is left as it was


def test_cli_export_over_an_export_with_an_extra_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = export_hf(run, tmp_path / "hf")
    (out / "extra.txt").write_text("mine", encoding="utf-8")
    line = error_line(capsys, ["export", "--ckpt", str(run), "--out", str(out)])
    assert line == (
        f"output folder {out} holds files a muomni export does not write (extra.txt); "
        "move them away or choose a new folder"
    )
    (out / "extra.txt").unlink()
    assert main(["export", "--ckpt", str(run), "--out", str(out)]) == 0  # the export alone is replaced
