"""Setup decisions of the trainer that depend on each other: refused combinations, the gradient norm, compile.

Each is decided once, before the loop: :func:`refuse_unavailable` stops a config whose features cannot
work together with one line naming the key; :func:`grad_norm_fn` picks clipping or plain measurement (and
FSDP's sharded variant); :func:`try_compile` compiles what the loss calls, or leaves it eager, the same way
on every rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from muomni import distributed
from muomni.config import Config
from muomni.errors import ConfigError
from muomni.training.loss import LossModule
from muomni.training.precision import Precision


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients, as ``clip_grad_norm_`` computes it, without clipping."""
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float32) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


def grad_norm_fn(max_norm: float | None, env: distributed.DistEnv) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """The pre-clip global gradient norm, clipping at ``max_norm`` when set.

    FSDP's gradients are shards: ``clip_grad_norm_`` computes their global norm (a DTensor, made whole);
    without clipping it runs with an infinite bound, which scales every gradient by exactly 1.
    """
    if env.sharded:
        bound = max_norm or math.inf
        return lambda params: distributed.full_tensor(nn.utils.clip_grad_norm_(params, max_norm=bound))
    if max_norm:
        return lambda params: nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    return total_grad_norm


def refuse_unavailable(cfg: Config, precision: Precision) -> None:
    if cfg.distributed == "fsdp" and cfg.cpu_offload == "optimizer":
        raise ConfigError(
            "config key 'cpu_offload': optimizer offload does not combine with distributed=fsdp (FSDP already "
            "shards the optimizer state); use cpu_offload=none or activations, or distributed=ddp"
        )
    if cfg.distributed == "fsdp" and precision.scaler.is_enabled():
        raise ConfigError(
            "config key 'amp_dtype': fp16 loss scaling does not combine with distributed=fsdp (each rank would "
            "see only its shard's overflows); use amp_dtype=bf16 or use_amp=false"
        )
    if cfg.cpu_offload == "optimizer" and precision.scaler.is_enabled():
        raise ConfigError(
            "config key 'cpu_offload': optimizer offload needs bf16 or fp32, not fp16 loss scaling; "
            "set amp_dtype=bf16 or use_amp=false"
        )


def try_compile(
    loss_module: LossModule,
    probe_module: nn.Module,
    probe: torch.Tensor,
    precision: Precision,
    mode: str,
    env: distributed.DistEnv,
) -> bool:
    """Compile what the loss calls, tried once on a batch of the training shape; eager if that fails.

    The whole loss is one compiled function (see :meth:`LossModule.use_compiled`).
    The probe (a forward and backward of ``probe_module`` on ``probe``) leaves gradients behind for the
    caller to clear, and does not move the RNG. All ranks then agree on the outcome.

    Returns:
        Whether the compiled version is used.
    """
    loss_module.use_compiled(mode)
    device = probe.device
    devices = [device.index or 0] if device.type == "cuda" else []
    error: Exception | None = None
    try:
        with torch.random.fork_rng(devices=devices):  # the probe must not move the RNG (dropout)
            with precision.ctx:
                loss, _ = probe_module(probe)
            loss.backward()
    except Exception as e:  # compilation fails in many ways (no compiler, unsupported op, ...)
        error = e
    if not distributed.any_rank(error is not None, env, device):
        return True
    loss_module.use_compiled(None)
    name = "error" if error is None else type(error).__name__
    why = "it failed on another rank" if error is None else (str(error).splitlines() or [""])[0][:200]
    warnings.warn(f"torch.compile failed ({name}: {why}); training continues without it", stacklevel=3)
    return False


__all__ = ["grad_norm_fn", "refuse_unavailable", "total_grad_norm", "try_compile"]
