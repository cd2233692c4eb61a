"""``muomni.load``: run folders, checkpoint folders, broken checkpoints, devices and dtypes, hf: paths."""

from __future__ import annotations

import re
import shutil
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from inference_helpers import run_cli, tiny_config, tiny_model, write_run

import muomni
from muomni.data import Tokenizer
from muomni.errors import CheckpointError, InputError
from muomni.inference.generate import generate_tokens
from muomni.training.checkpoint import (
    READ_ATTEMPTS,
    list_checkpoints,
    model_state_for_saving,
    save_tensors,
    write_checkpoint,
)


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


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([[5, 6, 7, 8, 9]]))


def _before_first_read(monkeypatch: pytest.MonkeyPatch, act: Callable[[Path], None]) -> list[Path]:
    """Run ``act(model file)`` before the first read of a checkpoint's weights (a training run pruning it
    then); return every model file read."""
    real = muomni.inference.loading.load_tensors
    read: list[Path] = []

    def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        if not read:
            act(path)
        read.append(path)
        return real(path, device)

    monkeypatch.setattr(muomni.inference.loading, "load_tensors", load_tensors)
    return read


def test_a_run_folders_checkpoint_pruned_while_it_loads_gives_way_to_the_newest(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "step_00000020/model.safetensors is not a readable safetensors file (FileNotFoundError); it may
    be corrupt" to one ``muomni generate --ckpt RUN`` in three, while a run with keep_checkpoints=1 trained."""
    run = tmp_path / "run"
    chosen = write_run(run, tiny_model(seed=1), tokenizer, step=20)

    def prune(model_file: Path) -> None:  # the run writes step 30, then deletes step 20
        write_run(run, tiny_model(seed=2), tokenizer, step=30)
        shutil.rmtree(chosen)

    read = _before_first_read(monkeypatch, prune)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pruned checkpoint is no broken one to warn of
        loaded, _ = muomni.load(run, device="cpu")
    survivor = list_checkpoints(run)[-1]
    assert read == [chosen / "model.safetensors", survivor / "model.safetensors"]
    monkeypatch.undo()
    direct, _ = muomni.load(survivor, device="cpu")
    assert torch.equal(_logits(loaded), _logits(direct))
    assert not torch.equal(_logits(loaded), _logits(tiny_model(seed=1)))


@pytest.mark.parametrize("removed", ["folder", "model file"])  # "model file": caught halfway through rmtree
def test_a_named_checkpoint_removed_while_it_loads_says_so(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch, removed: str
) -> None:
    run = tmp_path / "run"
    ckpt = write_run(run, tiny_model(), tokenizer, step=20)
    read = _before_first_read(monkeypatch, lambda f: shutil.rmtree(ckpt) if removed == "folder" else f.unlink())
    said = f"checkpoint {ckpt} was removed while being read; give the run folder {run} to use its newest"
    with pytest.raises(CheckpointError, match=re.escape(said)):
        muomni.load(ckpt, device="cpu")
    assert len(read) == 1


def test_a_run_that_prunes_every_checkpoint_as_it_loads_is_tried_a_few_times(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    write_run(run, tiny_model(), tokenizer, step=1)
    real = muomni.inference.loading.load_tensors
    read: list[Path] = []

    def prune_each(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        read.append(path)
        write_run(run, tiny_model(), tokenizer, step=len(read) + 1)
        shutil.rmtree(path.parent)
        return real(path, device)

    monkeypatch.setattr(muomni.inference.loading, "load_tensors", prune_each)
    with pytest.raises(CheckpointError, match=f"was removed while being read, {READ_ATTEMPTS} times"):
        muomni.load(run, device="cpu")
    assert len(read) == READ_ATTEMPTS


def test_a_genuine_error_of_a_run_folders_checkpoint_is_not_retried(
    tmp_path: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(
        tmp_path / "run",
        10,
        {
            "model.safetensors": lambda p: save_tensors(model_state_for_saving(tiny_model(d_ff=96)), p),
            "config.json": lambda p: tiny_config(d_ff=64).save(p),
            "tokenizer.json": lambda p: tokenizer.save(p),
        },
    )
    shapes = []
    real = muomni.inference.loading._saved_shapes
    monkeypatch.setattr(muomni.inference.loading, "_saved_shapes", lambda p: shapes.append(p) or real(p))
    with pytest.raises(CheckpointError, match="but its config.json gives"):
        muomni.load(tmp_path / "run")
    assert len(shapes) == 1


TRAINING_FILES = ("optimizer.safetensors", "rng.safetensors", "trainer_state.json")


def _trained_checkpoint(run: Path, model: torch.nn.Module, tokenizer: Tokenizer) -> Path:
    """A checkpoint with the files the trainer writes: the model's, and the state only resuming reads."""
    cfg = model.config
    return write_checkpoint(
        run,
        10,
        {
            "model.safetensors": lambda p: save_tensors(model_state_for_saving(model), p),
            "optimizer.safetensors": lambda p: save_tensors({"state.0.exp_avg": torch.ones(64)}, p),
            "rng.safetensors": lambda p: save_tensors({"cpu": torch.zeros(8, dtype=torch.uint8)}, p),
            "trainer_state.json": lambda p: p.write_text('{"progress": {"step": 10}}\n'),
            "config.json": lambda p: cfg.save(p),
            "tokenizer.json": lambda p: tokenizer.save(p),
        },
    )


def test_a_model_shared_without_its_training_state_loads_and_computes_the_same(
    tmp_path: Path, tokenizer: Tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``muomni generate`` said "optimizer.safetensors is missing or does not match its checksum"."""
    ckpt = _trained_checkpoint(tmp_path / "run", tiny_model(tie_embeddings=False), tokenizer)
    full, _ = muomni.load(ckpt, device="cpu")
    args = ["generate", "--prompt", "def ", "--temperature", "0", "--device", "cpu", "--max-new-tokens", "8"]
    code, generated, _ = run_cli(capsys, *args, "--ckpt", str(ckpt))
    assert code == 0
    for name in TRAINING_FILES:
        (ckpt / name).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor is the run folder's one checkpoint skipped as broken
        stripped, tok = muomni.load(ckpt, device="cpu")
        from_run, _ = muomni.load(tmp_path / "run", device="cpu")
    assert torch.equal(_logits(stripped), _logits(full)) and torch.equal(_logits(from_run), _logits(full))
    assert tok.to_str() == tokenizer.to_str()
    assert run_cli(capsys, *args, "--ckpt", str(ckpt)) == (0, generated, "")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_a_changed_file_that_loading_reads_is_refused_without_the_training_state(
    tmp_path: Path, tokenizer: Tokenizer, name: str
) -> None:
    ckpt = _trained_checkpoint(tmp_path / "run", tiny_model(), tokenizer)
    for gone in TRAINING_FILES:
        (ckpt / gone).unlink()
    data = bytearray((ckpt / name).read_bytes())
    if name == "model.safetensors":
        data[-1] ^= 0x40  # a weight's bits: still a readable file of the right shapes
    else:
        data += b"\n"  # still valid JSON
    (ckpt / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{re.escape(name)} is missing or does not match its checksum"):
        muomni.load(ckpt, device="cpu")
    with pytest.warns(UserWarning, match="skipping checkpoint"), pytest.raises(CheckpointError, match="all 1 are"):
        muomni.load(tmp_path / "run", device="cpu")
