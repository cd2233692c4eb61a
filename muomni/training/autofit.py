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


def available_cpu_memory() -> int | None:
    """Bytes this machine can still give without swapping (Linux's ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_cpu_memory(cfg: Config, n_params: int, processes: int = 1) -> None:
    """Refuse, before anything is allocated, a CPU job whose weights, gradients and optimizer state alone
    (fp32: 16 bytes a parameter with AdamW, 12 with SGD's momentum, 8 without) exceed the memory free now.

    On a GPU an allocation past its memory raises, and auto_fit or the command line say what to lower; on
    a CPU the system grants the allocations and later kills the process with no message (Linux's
    out-of-memory killer), so the one line has to come first. Activations are not counted: this is a
    lower bound, and a job that passes it may still run out.

    Args:
        n_params: the model's parameters. processes: ranks sharing this machine, each with a whole copy.
    """
    available = available_cpu_memory()
    if available is None:
        return
    state = 8 if cfg.optimizer == "adamw" else (4 if cfg.momentum else 0)
    need = n_params * (8 + state) * processes
    if need > available:
        gib = 2**30
        raise OutOfMemory(
            f"this job needs at least {need / gib:.1f} GiB for its {n_params / 1e6:,.0f}M parameters' weights, "
            f"gradients and optimizer state, and this machine has {available / gib:.1f} GiB free: lower d_model "
            f"({cfg.d_model}), n_layers ({cfg.n_layers}), d_ff ({cfg.d_ff}) or vocab_size ({cfg.vocab_size})"
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
