"""``muomni.load``: run folders, checkpoint folders, broken checkpoints, devices and dtypes, hf: paths."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from inference_helpers import tiny_config, tiny_model, write_run

import muomni
from muomni.data import Tokenizer
from muomni.errors import CheckpointError, InputError
from muomni.inference.generate import generate_tokens
from muomni.training.checkpoint import list_checkpoints, model_state_for_saving, save_tensors, write_checkpoint


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("tie", [True, False])
def test_load_from_run_and_checkpoint_folder(tmp_path: Path, tokenizer: Tokenizer, tie: bool) -> None:
    model = tiny_model(tie_embeddings=tie)
    ckpt = write_run(tmp_path / "run", model, tokenizer)
    from_run, tok = muomni.load(tmp_path / "run", device="cpu")
    from_ckpt, _ = muomni.load(ckpt, device="cpu")
    assert _same_weights(from_run, model) and _same_weights(from_ckpt, model)
    assert (from_run.lm_head.weight is from_run.model.embed_tokens.weight) == tie
    assert not from_run.training and from_run.kv_cache_enabled
    assert from_run.lm_head.weight.device.type == "cpu" and from_run.lm_head.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in from_run.parameters())
    assert tok.to_str() == tokenizer.to_str()
    prompt = [[5, 6, 7]]
    assert generate_tokens(from_run, prompt, 10, temperature=0.0) == generate_tokens(model, prompt, 10, temperature=0.0)


def test_newest_complete_checkpoint_is_used(tmp_path: Path, tokenizer: Tokenizer) -> None:
    old, new = tiny_model(seed=1), tiny_model(seed=2)
    write_run(tmp_path / "run", old, tokenizer, step=10)
    write_run(tmp_path / "run", new, tokenizer, step=20)
    broken = write_run(tmp_path / "run", tiny_model(seed=3), tokenizer, step=30)
    (broken / "manifest.json").unlink()  # a checkpoint that was not finished writing
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        loaded, _ = muomni.load(tmp_path / "run", device="cpu")
    assert _same_weights(loaded, new)


def test_default_device_and_dtype(run_dir: Path) -> None:
    model, _ = muomni.load(run_dir)
    cuda = torch.cuda.is_available()
    assert model.lm_head.weight.device.type == ("cuda" if cuda else "cpu")
    assert model.lm_head.weight.dtype == (torch.bfloat16 if cuda else torch.float32)


def test_dtype_override_keeps_rope_tables_in_fp32(run_dir: Path) -> None:
    model, _ = muomni.load(run_dir, device="cpu", dtype="bf16")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rope_cos.dtype == torch.float32
    assert len(generate_tokens(model, [[5, 6]], 5, temperature=0.0)[0]) == 5


def test_missing_and_broken_checkpoints(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        muomni.load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        muomni.load(empty)
    ckpt = list_checkpoints(run_dir)[-1]
    (ckpt / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match=f"does not match its checksum; give the run folder {run_dir}"):
        muomni.load(ckpt)
    (ckpt / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        muomni.load(ckpt)


def test_weights_that_do_not_fit_the_config(tmp_path: Path, tokenizer: Tokenizer) -> None:
    wide = tiny_model(d_ff=96)
    ckpt = write_checkpoint(
        tmp_path / "run",
        10,
        {
            "model.safetensors": lambda p: save_tensors(model_state_for_saving(wide), p),
            "config.json": lambda p: tiny_config(d_ff=64).save(p),
            "tokenizer.json": lambda p: tokenizer.save(p),
        },
    )
    with pytest.raises(CheckpointError, match=r"mlp\.\w+\.weight has shape \[\d+, \d+\] but its config.json gives"):
        muomni.load(ckpt)


def test_cuda_without_a_gpu_is_a_user_error(run_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="no CUDA GPU"):
        muomni.load(run_dir, device="cuda")


def test_hf_paths_go_to_the_importer(monkeypatch: pytest.MonkeyPatch, tokenizer: Tokenizer) -> None:
    seen = []
    fake = types.ModuleType("muomni.hf")
    fake.load_hf = lambda name: seen.append(name) or (tiny_model(), tokenizer)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "muomni.hf", fake)
    model, tok = muomni.load("hf:some/folder", dtype="fp32")
    assert seen == ["some/folder"] and tok is tokenizer and model.kv_cache_enabled and not model.training
    monkeypatch.setitem(sys.modules, "muomni.hf", types.ModuleType("muomni.hf"))  # a version without the import
    with pytest.raises(InputError, match="hf: paths are not yet available"):
        muomni.load("hf:some/folder")


def test_hf_folder_round_trip(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """With the Hugging Face import present: an exported folder loads and generates what the model did."""
    hf = pytest.importorskip("muomni.hf")
    model = tiny_model()
    hf.save_hf(model, tokenizer, tmp_path / "hf")
    loaded, tok = muomni.load(f"hf:{tmp_path / 'hf'}", device="cpu", dtype="fp32")
    assert tok.eos_id == tokenizer.eos_id and loaded.kv_cache_enabled
    prompt = [[5, 6, 7]]
    assert generate_tokens(loaded, prompt, 10, temperature=0.0) == generate_tokens(model, prompt, 10, temperature=0.0)
