"""``auto_fit``: recover from running out of GPU memory without changing what is learned.

On an out-of-memory error the step is retried, the same windows in the same order, with the next remedy
of the founding document's checklist: halve the micro-batch and double the accumulation (the effective
batch, the learning rate and the data order stay as they were), then at micro-batch 1 gradient
checkpointing of every block (also where only some were checkpointed), then activation offload to the
CPU. Only when all are on does the run stop, with a message that says what else to change. The adjusted
keys are in the trainer's config, so checkpoints carry them and a resume does not run out of memory again.
"""

from __future__ import annotations

from typing import Any

import torch

from muomni.config import Config
from muomni.errors import UserError


class OutOfMemory(UserError):
    """Even the most frugal settings auto_fit has do not fit in the GPU's memory."""


def smaller_micro_batch(batch_size: int) -> int:
    """The largest divisor of ``batch_size`` that is at most half of it (1 for a prime)."""
    return next(d for d in range(batch_size // 2, 0, -1) if batch_size % d == 0)


def next_remedy(cfg: Config) -> dict[str, Any] | None:
    """The config keys of the next remedy, or None when every remedy is already on."""
    if cfg.batch_size > 1:
        micro = smaller_micro_batch(cfg.batch_size)
        return {"batch_size": micro, "gradient_accumulation_steps": cfg.effective_batch_size // micro}
    if not cfg.use_gradient_checkpointing or cfg.gradient_checkpointing_every > 1:
        return {"use_gradient_checkpointing": True, "gradient_checkpointing_every": 1}  # every block
    if cfg.cpu_offload == "none":
        return {"cpu_offload": "activations"}
    return None


def resplit(batches: list[torch.Tensor], micro: int) -> list[torch.Tensor]:
    """The same windows in the same order, as micro-batches of ``micro`` rows."""
    return list(torch.cat(batches).split(micro))


def give_up_message(cfg: Config, device: torch.device) -> str:
    needed = ""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        peak = torch.cuda.max_memory_allocated(device)
        needed = f" (peak {peak / 2**30:.2f} GiB of {total / 2**30:.1f} GiB)"
    return (
        f"out of GPU memory at micro-batch 1 with gradient checkpointing and activation offload{needed}; "
        f"lower ctx_len ({cfg.ctx_len}) or the model size (d_model {cfg.d_model}, n_layers {cfg.n_layers}, "
        f"vocab_size {cfg.vocab_size})"
    )


class RngSnapshot:
    """The RNG state at the start of a step, so a retried step draws the same dropout masks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
