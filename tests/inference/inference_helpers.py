"""Helpers of the inference tests: tiny random Thinkers, a reference decoder, checkpoints written by hand."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from muomni.cli import main
from muomni.config import Config, load_config
from muomni.data import Tokenizer
from muomni.models.thinker import Thinker
from muomni.training.checkpoint import model_state_for_saving, save_tensors, write_checkpoint

ROOT = Path(__file__).resolve().parents[2]

TEXT = (
    "def parse(line):\n    return line.split()\n\n"
    "import os\nimport sys\n\nclass Reader:\n    def read(self, path):\n        with open(path) as f:\n"
    "            return f.read()\n\nfor value in range(10):\n    print(value)\n"
    "User: hello there\nAssistant: hello, how can I help?\n"
)


def tiny_config(**overrides: object) -> Config:
    base = {"vocab_size": 300, "n_layers": 2, "d_model": 32, "n_heads": 4, "kv_groups": 2, "d_ff": 64, "ctx_len": 64}
    return load_config("debug", {**base, **overrides})


def tiny_model(seed: int = 0, **overrides: object) -> Thinker:
    """A random Thinker in eval mode whose logits have clear winners.

    The trainer's init (std 0.02) gives near-uniform logits whose top two differ by less than float
    rounding between two equally valid computations; unit-scale weights make greedy choices well separated.
    """
    torch.manual_seed(seed)
    model = Thinker(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embed_tokens" in name else 1.0 / math.sqrt(p.shape[1])
                p.normal_(0.0, std)
    model.enable_kv_cache(True)
    return model


def reference_greedy(model: Thinker, prompt: list[int], n: int, eos_id: int | None = None) -> list[int]:
    """Greedy decoding by the plain full forward ``model(tokens)`` at each step, batch 1: the independent truth."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(token)
            if token == eos_id:
                break
    return seq[len(prompt) :]


def write_run(run_dir: Path, model: Thinker, tokenizer: Tokenizer, step: int = 10) -> Path:
    """A run folder with one complete checkpoint, written the way the trainer writes them."""
    cfg = model.config
    return write_checkpoint(
        run_dir,
        step,
        {
            "model.safetensors": lambda p: save_tensors(model_state_for_saving(model), p),
            "config.json": lambda p: cfg.save(p),
            "tokenizer.json": lambda p: tokenizer.save(p),
        },
    )


def scripted_input(*lines: str) -> Callable[[str], str]:
    """A ``read`` for :func:`~muomni.inference.chat.chat` that answers with ``lines``, then signals end of input."""
    it: Iterator[str] = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return read


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``muomni argv`` in this process: its exit code, standard output and standard error."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
