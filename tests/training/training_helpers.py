"""Helpers of the trainer tests: a small generated corpus, a tiny config, running the CLI, reading a run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from muomni.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]

_VOCAB = (
    "def return import class self value list dict for in if else while yield with open read write the a of "
    "model token loss step data window batch grad norm print range len append"
)
WORDS = _VOCAB.split()


def write_corpus(path: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """A .txt corpus of ``n_docs`` blank-line-separated documents of code-like pseudo text."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(4, 10))]
        docs.append(f"# doc {i}\n" + "\n".join(lines))
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def tiny_settings(corpus: Path, save_dir: Path, **changes: Any) -> dict[str, Any]:
    """A model small enough for seconds on a CPU; dropout on, so the RNG state matters on resume."""
    settings: dict[str, Any] = {
        "vocab_size": 300,
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 2,
        "kv_groups": 1,
        "d_ff": 64,
        "ctx_len": 32,
        "dropout": 0.1,
        "batch_size": 4,
        "max_steps": 12,
        "lr": 3e-3,
        "warmup_steps": 3,
        "val_split": 0.1,
        "val_freq": 4,
        "val_batches": 2,
        "checkpoint_freq": 4,
        "print_freq": 1,
        "keep_checkpoints": 3,
        "train_text": str(corpus),
        "save_dir": str(save_dir),
        "device": "cpu",
        # fp32, whatever the CPU: the tests compare runs with each other and with references closely (a CPU
        # with bf16 instructions would run bf16 autocast by default); those about bf16 ask for it.
        "use_amp": False,
    }
    settings.update(changes)
    return settings


def tiny_config(corpus: Path, save_dir: Path, **changes: Any) -> Config:
    return load_config(tiny_settings(corpus, save_dir, **changes))


def overrides(settings: dict[str, Any]) -> list[str]:
    """``key=value`` command-line arguments for ``settings``."""
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def fused_adamw(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """The trainer's AdamW as it is built on a GPU: fused (the kernel runs on CPUs too). With it the trainer
    takes the GPU's path on a CPU: non-finite steps skipped on the device, steps overlapped."""
    from muomni.training.optim import param_groups

    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.wd)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=True)


# ``python -c FUSED_MAIN <args>``: the muomni command with :func:`fused_adamw` as the trainer's optimizer.
FUSED_MAIN = (
    "import sys; sys.path.insert(0, 'tests/training'); from training_helpers import fused_adamw; "
    "from muomni.training import trainer; trainer.build_optimizer = fused_adamw; "
    "from muomni.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_cli(args: list[str], cache: Path, env: dict[str, str] | None = None, timeout: float = 120, fused: bool = False):
    """``python -m muomni <args>`` in a subprocess (with ``fused``, :data:`FUSED_MAIN`); returns the
    CompletedProcess (text output)."""
    base = {k: v for k, v in os.environ.items() if k != "MUOMNI_TEST_KILL_AT"}
    full_env = {**base, "MUOMNI_CACHE": str(cache), "PYTHONPATH": str(ROOT), **(env or {})}
    command = ["-c", FUSED_MAIN] if fused else ["-m", "muomni"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(save_dir: Path) -> list[dict[str, Any]]:
    lines = (save_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def step_losses(save_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(save_dir) if "loss" in m]


def final_weights(save_dir: Path) -> dict[str, torch.Tensor]:
    from muomni.training.checkpoint import MODEL_FILE, latest_checkpoint, load_tensors

    ckpt = latest_checkpoint(save_dir)
    assert ckpt is not None, f"no checkpoint in {save_dir}"
    return load_tensors(ckpt / MODEL_FILE)


def train_in_process(corpus: Path, save_dir: Path, capsys: Any, **changes: Any) -> tuple[int, str]:
    """``muomni train`` with :func:`tiny_settings` in this process: its exit code and stderr."""
    from muomni.cli import main

    code = main(["train", *overrides(tiny_settings(corpus, save_dir, **changes))])
    return code, capsys.readouterr().err


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: to check that a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
