"""The full training state in a checkpoint: what it holds, how it is written and restored.

A training checkpoint holds ``model.safetensors``, ``optimizer.safetensors``, ``rng.safetensors``,
``trainer_state.json`` (counters, sampler position, schedule, loss scaler, RNG states that are not
tensors), ``config.json`` and ``tokenizer.json``, written atomically by
:func:`~muomni.training.checkpoint.write_checkpoint`. Restoring all of it makes a resumed run on the CPU
bitwise identical to one that was never interrupted.

Which checkpoint a run resumes from, and what it may change: :mod:`muomni.training.resume`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from muomni.config import MODEL_KEYS, Config
from muomni.data import Tokenizer, WindowStream
from muomni.distributed import SINGLE, DistEnv, barrier
from muomni.errors import CheckpointError
from muomni.training.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TOKENIZER_FILE,
    checkpoints_dir,
    load_tensors,
    read_config,
    save_tensors,
    step_dir_name,
    write_checkpoint,
)
from muomni.training.dist_state import (
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
)
from muomni.training.faults import fault_point
from muomni.training.optim import Schedule, schedule_change
from muomni.training.state import (
    RNG_FILE,
    checked_rng_tensors,
    optimizer_state_from_files,
    optimizer_state_to_files,
    rng_state,
    set_rng_state,
    unpacking,
)

# Keys that fix the data a step sees or the optimizer state's layout: changing them breaks a resume.
# The batch keys may change, as long as the global batch (x the number of processes) stays the same.
BATCH_KEYS = ("batch_size", "gradient_accumulation_steps")
# How a step is split into micro-batches and what saves its memory: auto_fit may change these in a run.
SPLIT_KEYS = (*BATCH_KEYS, "use_gradient_checkpointing", "gradient_checkpointing_every", "cpu_offload")
DATA_KEYS = ("train_text", "seed", "val_split", "optimizer")
ORDER_KEYS = BATCH_KEYS + DATA_KEYS
STATE_FORMAT = 1


@dataclass
class Progress:
    """The trainer's counters, saved in ``trainer_state.json``.

    Attributes:
        step: optimizer steps taken (applied or skipped); names checkpoints and bounds ``max_steps``.
        applied_steps: steps that updated the weights; the schedule's position.
        nonfinite_in_row: consecutive skipped steps (overflow or non-finite), reset by an applied step.
        nonfinite_skips: steps skipped for a non-finite loss or gradient norm, in total.
        overflow_skips: fp16 steps skipped because the scaled gradients overflowed, in total.
        tokens: training tokens consumed.
        val_loss: the latest validation loss, if any.
        val_step: the step of ``val_loss`` (0 before a run's first validation; None in older checkpoints).
    """

    step: int = 0
    applied_steps: int = 0
    nonfinite_in_row: int = 0
    nonfinite_skips: int = 0
    overflow_skips: int = 0
    tokens: int = 0
    val_loss: float | None = None
    val_step: int | None = None

    def skip(self, overflow: bool) -> str:
        """Count a skipped step (an fp16 overflow, or a non-finite loss or norm); return its kind."""
        if overflow:
            self.overflow_skips += 1
        else:
            self.nonfinite_skips += 1
        self.nonfinite_in_row += 1
        return "overflow" if overflow else "nonfinite"


@dataclass
class TrainingState:
    """Everything a checkpoint saves and restores, by reference."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stream: WindowStream
    schedule: Schedule
    progress: Progress
    env: DistEnv = SINGLE
    asked_split: dict[str, Any] | None = None  # the SPLIT_KEYS this run was asked for, before auto_fit


def save_snapshot(save_dir: Path, cfg: Config, tokenizer: Tokenizer, ts: TrainingState) -> Path:
    """Write a checkpoint of ``ts`` at its step and return its folder (pruning is the caller's).

    Every rank calls it (FSDP gathers the shards); rank 0 writes, the others wait until it has.
    """
    step = ts.progress.step
    model_state = _model_state_for_saving(ts.model, full_model_state(ts.model, ts.env))
    opt_tensors, opt_meta = optimizer_state_to_files(full_optimizer_state(ts.model, ts.optimizer, ts.env))
    if not ts.env.is_main:
        barrier(ts.env)
        return checkpoints_dir(save_dir) / step_dir_name(step)
    rng_meta, rng_tensors = rng_state()
    state = {
        "format": STATE_FORMAT,
        "world_size": ts.env.world_size,
        "asked_split": ts.asked_split,
        "progress": asdict(ts.progress),
        "sampler": ts.stream.state_dict(),
        "schedule": ts.schedule.state_dict(),
        "scaler": ts.scaler.state_dict(),
        "optimizer": opt_meta,
        "rng": rng_meta,
    }

    def write_model(path: Path) -> None:
        save_tensors(model_state, path)
        fault_point("ckpt_write", step)

    writers = {
        MODEL_FILE: write_model,
        OPTIMIZER_FILE: lambda p: save_tensors(opt_tensors, p),
        RNG_FILE: lambda p: save_tensors(rng_tensors, p),
        STATE_FILE: lambda p: p.write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8"),
        CONFIG_FILE: cfg.save,
        TOKENIZER_FILE: tokenizer.save,
    }
    folder = write_checkpoint(save_dir, step, writers)
    barrier(ts.env)
    return folder


def _model_state_for_saving(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state without the tied ``lm_head.weight`` (it is the embedding)."""
    if getattr(getattr(model, "config", None), "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def load_snapshot(ckpt: Path, ts: TrainingState) -> None:
    """Restore a checkpoint written by :func:`save_snapshot` into ``ts`` (in place).

    Raises:
        CheckpointError: unreadable files, or state for another model or optimizer.
    """
    state = _read_state(ckpt)
    try:
        progress = Progress(**state["progress"])
        opt_meta, scaler, sampler, rng_meta = (state[key] for key in ("optimizer", "scaler", "sampler", "rng"))
    except (KeyError, TypeError) as e:  # keys missing, or not the fields a Progress has
        raise CheckpointError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({e}); resume from another one")
    device = next(ts.model.parameters()).device
    load_model_state(ts.model, load_tensors(ckpt / MODEL_FILE, device), ckpt, ts.env)
    with unpacking(ckpt, OPTIMIZER_FILE, "this model's optimizer state"):
        optimizer = optimizer_state_from_files(ts.optimizer, load_tensors(ckpt / OPTIMIZER_FILE), opt_meta)
    # Plain load_state_dict casts state tensors to each parameter's device and dtype ("step" stays as saved);
    # under FSDP each rank keeps its shard of them.
    load_full_optimizer_state(ts.model, ts.optimizer, optimizer, ts.env)
    with unpacking(ckpt, RNG_FILE, "the random generators' state"):
        rng_tensors = checked_rng_tensors(load_tensors(ckpt / RNG_FILE))
    with unpacking(ckpt, STATE_FILE, "a usable trainer state"):
        if scaler and ts.scaler.is_enabled():
            ts.scaler.load_state_dict(scaler)
        ts.stream.load_state_dict(sampler)
        set_rng_state(rng_meta, rng_tensors)
    ts.progress.__dict__.update(asdict(progress))
    if isinstance(saved := state.get("schedule"), dict) and (
        change := schedule_change(saved, ts.schedule, progress.applied_steps)
    ):
        warnings.warn(change, stacklevel=2)


def load_model_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path | str, env: DistEnv = SINGLE
) -> None:
    """Load weights saved by :func:`save_snapshot` (a tied ``lm_head`` may be absent); FSDP: into the shards.

    Raises:
        CheckpointError: a missing, unexpected or differently shaped tensor, named.
    """
    own = model.state_dict()
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    missing = [k for k in own if k not in state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and own[k].shape != state[k].shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(items[:3])}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
            if items
        )
        raise CheckpointError(f"weights in {where} do not fit this model ({detail}); check the model keys")
    if tied and "lm_head.weight" not in state and env.sharded:  # the gathered load wants every name
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    load_full_model_state(model, state, env)


def _read_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json`` as a JSON object, or CheckpointError saying it is unreadable."""
    try:
        state = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({e}); resume from another one")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable (not an object); resume from another one")
    return state


def saved_world_size(ckpt: Path) -> int:
    """The number of processes that wrote a checkpoint (1 for checkpoints older than the field)."""
    try:
        return int(_read_state(ckpt).get("world_size", 1))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: {STATE_FILE} is unreadable ({e}); resume from another one")


def split_of(cfg: Config) -> dict[str, Any]:
    """``cfg``'s micro-batch split and memory savers (the SPLIT_KEYS)."""
    return {key: getattr(cfg, key) for key in SPLIT_KEYS}


def saved_asked_split(ckpt: Path) -> dict[str, Any] | None:
    """The split a checkpoint's run was asked for, before auto_fit (None for checkpoints older than it)."""
    asked = _read_state(ckpt).get("asked_split")
    return asked if isinstance(asked, dict) else None


def model_keys(cfg: Config) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


__all__ = [
    "BATCH_KEYS",
    "DATA_KEYS",
    "MODEL_KEYS",
    "ORDER_KEYS",
    "Progress",
    "TrainingState",
    "load_model_state",
    "load_snapshot",
    "model_keys",
    "read_config",
    "save_snapshot",
    "saved_asked_split",
    "saved_world_size",
    "split_of",
    "SPLIT_KEYS",
]
