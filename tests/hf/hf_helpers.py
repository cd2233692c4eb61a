"""Helpers of the Hugging Face tests: tiny random Thinkers, checkpoint folders, and transformers' version quirks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from muomni.config import Config, load_config
from muomni.data.tokenizer import Tokenizer
from muomni.models.thinker import Thinker
from muomni.training.checkpoint import model_state_for_saving, save_tensors, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# Multi-byte characters of 2, 3 and 4 bytes, so byte-level merges and decoding are exercised.
UNICODE_TEXT = "Grüße, naïve café! 日本語のテキスト 🙂🚀 def f(x):\n\treturn x  # done"

TINY_MODEL = {"vocab_size": 320, "n_layers": 2, "d_model": 48, "n_heads": 4, "d_ff": 80, "ctx_len": 64}


def tiny_config(**overrides: Any) -> Config:
    return load_config({**TINY_MODEL, **overrides}, warn_ignored=False)


def random_thinker(cfg: Config, seed: int = 0) -> Thinker:
    """A Thinker with larger-than-init random weights and non-unit norms.

    The default init (std 0.02, norms at 1) gives logits so small that a wrong weight map could still pass
    a 1e-5 check; std 0.1 gives logits of order 1-5, and random norm scales catch a swapped norm. (Larger
    weights push fp32 rounding alone past 1e-5: muomni builds its RoPE tables in fp64 and runs SDPA, HF
    builds them in fp32 and runs eager attention; with HF's tables and math attention the logits agree
    bit for bit when the head width is a power of two.)
    """
    torch.manual_seed(seed)
    model = Thinker(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


def save_checkpoint(
    model: Thinker, tokenizer: Tokenizer, run_dir: Path, step: int = 10, optimizer_state: bool = False
) -> Path:
    """A muomni checkpoint folder (model.safetensors, config.json, tokenizer.json and the manifest; with
    ``optimizer_state``, an optimizer.safetensors as a training run's checkpoint has too)."""
    writers: dict[str, Callable[[Path], None]] = {
        "model.safetensors": lambda p: save_tensors(model_state_for_saving(model), p),
        "config.json": model.config.save,
        "tokenizer.json": tokenizer.save,
    }
    if optimizer_state:
        writers["optimizer.safetensors"] = lambda p: save_tensors({"state.0.exp_avg": torch.ones(8)}, p)
    return write_checkpoint(run_dir, step, writers)


def hf_dtype_kwargs() -> dict[str, torch.dtype]:
    """fp32 for ``from_pretrained``: transformers 5 names the argument ``dtype``, 4.x ``torch_dtype``."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}


def load_hf_reference(folder: Path) -> torch.nn.Module:
    """The folder as transformers loads it, in fp32 with eager (written-out) attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", **hf_dtype_kwargs()).eval()


@torch.inference_mode()
def greedy(model: Thinker, prompt: list[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Greedy decoding by full forward passes (no cache): the plainest reference, stopping after eos."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(next_id)
        if next_id == eos_id:
            break
    return ids


def error_line(capsys: Any, argv: list[str]) -> str:
    """Run ``muomni argv``; assert a user error of one line; return it without its ``muomni: error:``."""
    from muomni.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("muomni: error: "), err
    return lines[0].removeprefix("muomni: error: ")
