"""What the Hugging Face commands say about a bad folder: one line that names the key or the path, exit 2.

Import: a ``config.json`` whose shape keys are missing or not numbers (they were reported as "lacks or has
a bad invalid literal for int() ...", or as a traceback). Export: an ``--out`` where nothing can be written
(a traceback, after the weights were read).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hf_helpers import error_line

from muomni.cli import main
from muomni.hf import export, export_hf


@pytest.fixture
def hf_folder(make_checkpoint: Callable, tmp_path: Path) -> Path:
    return export_hf(make_checkpoint(), tmp_path / "hf")


def _edit_config(folder: Path, **changes: Any) -> None:
    """Set keys of ``folder/config.json``; a value of ``...`` removes the key."""
    path = folder / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"hidden_size": "abc"}, 'hidden_size must be an integer, got "abc"'),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers must be an integer, got 2.5"),
        ({"vocab_size": None}, "vocab_size must be an integer, got null"),
        ({"num_key_value_heads": "two"}, 'num_key_value_heads must be an integer, got "two"'),  # was a traceback
        ({"max_position_embeddings": [64]}, "max_position_embeddings must be an integer, got [64]"),
        ({"rms_norm_eps": None}, "rms_norm_eps must be a number, got null"),  # was a traceback
        ({"rope_theta": True}, "rope_theta must be a number, got true"),
    ],
)
def test_a_shape_key_that_is_not_a_number_is_named(
    changes: dict[str, Any], says: str, hf_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_config(hf_folder, **changes)
    line = error_line(capsys, ["generate", "--ckpt", f"hf:{hf_folder}", "--prompt", "x"])
    assert line == f"{hf_folder / 'config.json'}: {says}"


def test_a_missing_shape_key_is_named(hf_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_config(hf_folder, hidden_size=...)
    line = error_line(capsys, ["generate", "--ckpt", f"hf:{hf_folder}", "--prompt", "x"])
    assert line == f"{hf_folder / 'config.json'} lacks hidden_size; it is not a complete model config"


def test_integral_floats_and_absent_optional_keys_still_load(
    hf_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_config(
        hf_folder, hidden_size=48.0, head_dim=..., rope_theta=..., rms_norm_eps=..., max_position_embeddings=None
    )
    assert main(["generate", "--ckpt", f"hf:{hf_folder}", "--prompt", "x", "--max-new-tokens", "2"]) == 0
    assert "error" not in capsys.readouterr().err


def test_another_model_type_is_refused_by_its_type_not_its_keys(
    hf_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A GPT-2 folder has none of Llama's shape keys: what matters is that muomni does not import GPT-2.
    _edit_config(hf_folder, model_type="gpt2", hidden_size=..., n_embd=48)
    line = error_line(capsys, ["generate", "--ckpt", f"hf:{hf_folder}", "--prompt", "x"])
    assert "model_type 'gpt2' is not supported" in line


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_export_to_an_unwritable_out_is_refused_before_reading_the_weights(
    make_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_checkpoint()

    def weights_read(*args: object) -> None:
        raise AssertionError("the weights were read before --out was checked")

    monkeypatch.setattr(export, "load_tensors", weights_read)
    # No folder can be made in /proc, not even by root, for whom os.access says yes everywhere.
    line = error_line(capsys, ["export", "--ckpt", str(run), "--out", "/proc/muomni-export-check"])
    assert line == (
        "output /proc/muomni-export-check cannot be written (No such file or directory in /proc); choose another --out"
    )
