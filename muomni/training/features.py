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
    grads = [p.grad for p in params if p.grad is not None]
    if any(g.dtype != torch.float32 for g in grads):
        # bf16 gradients (weight_dtype=bf16): each norm computed in fp32, as it is of their fp32 versions;
        # get_total_norm would return each in bf16, and the clip would follow its rounding.
        try:
            norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
        except TypeError:  # torch before 2.4: no dtype argument
            norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
        return torch.linalg.vector_norm(torch.stack(norms))
    if hasattr(nn.utils, "get_total_norm"):  # torch 2.6+: a foreach kernel per device and dtype, not one per tensor
        return nn.utils.get_total_norm(grads)
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
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


def warn_inert_on_cpu(cfg: Config, device: torch.device) -> None:
    """One warning per key asked for that a CPU run cannot act on (their defaults stay silent)."""
    if device.type != "cpu":
        return
    if cfg.auto_fit:
        warnings.warn(
            "auto_fit acts on CUDA's out-of-memory errors, and a CPU raises none: a job whose weights and "
            "optimizer state do not fit is refused at start instead; lower batch_size or ctx_len yourself",
            stacklevel=3,
        )
    if cfg.cpu_offload != "none":
        warnings.warn(
            f"cpu_offload={cfg.cpu_offload} moves GPU memory to the CPU; on the CPU it saves nothing (the copies "
            "stay in the same memory); use cpu_offload=none",
            stacklevel=3,
        )


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
    if cfg.residual_dtype == "bf16" and precision.dtype != torch.bfloat16:
        raise ConfigError(
            "config key 'residual_dtype': a bf16 residual stream needs bf16 autocast, and this run is "
            f"{precision.describe()}; set use_amp=true amp_dtype=bf16, or residual_dtype=fp32"
        )
    if cfg.weight_dtype == "bf16":
        _refuse_bf16_weights(cfg, precision)
    if cfg.cpu_offload == "optimizer" and precision.scaler.is_enabled():
        raise ConfigError(
            "config key 'cpu_offload': optimizer offload needs bf16 or fp32, not fp16 loss scaling; "
            "set amp_dtype=bf16 or use_amp=false"
        )


def _refuse_bf16_weights(cfg: Config, precision: Precision) -> None:
    """What ``weight_dtype=bf16`` (:mod:`~muomni.training.master_weights`) does not combine with."""
    problem = None
    if precision.dtype != torch.bfloat16:
        problem = f"bf16 weights need bf16 autocast, and this run is {precision.describe()}"
        fix = "set use_amp=true amp_dtype=bf16"
    elif cfg.optimizer != "adamw":
        problem, fix = "bf16 weights are trained by AdamW only", "use optimizer=adamw"
    elif cfg.cpu_offload == "optimizer":
        problem, fix = "bf16 weights do not combine with optimizer offload", "use cpu_offload=none or activations"
    elif cfg.distributed == "fsdp":
        # FSDP's mixed precision (param_dtype) already gathers each weight in bf16 for the products.
        problem, fix = "FSDP already computes with bf16 weights (its mixed precision)", "use distributed=ddp"
    elif cfg.use_moe:
        problem = "bf16 weights are not yet available with mixture-of-experts (an expert may get no gradient)"
        fix = "use use_moe=false"
    if problem:
        raise ConfigError(f"config key 'weight_dtype': {problem}; {fix}, or weight_dtype=fp32")


# How far the compiled loss may be from the eager one on the probe batch (autocast's rounding differs
# between the two; a mis-compiled gradient is off by far more).
LOSS_TOLERANCE, NORM_TOLERANCE = 2e-2, 5e-2


def _probe(
    module: nn.Module, probe: torch.Tensor, precision: Precision, params: list[nn.Parameter], measure: bool
) -> list[float]:
    """One forward and backward on ``probe``; its loss and gradient norm if ``measure``, else nothing.
    The gradients of ``params`` are cleared after, and the RNG is not moved."""
    device = probe.device
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            with precision.ctx:
                loss, _ = module(probe)
            loss.backward()
        return [loss.item(), total_grad_norm(params).item()] if measure else []
    finally:
        for p in params:
            p.grad = None


def _mismatch(eager: list[float], compiled: list[float]) -> str | None:
    for what, e, c, tol in zip(("loss", "gradient norm"), eager, compiled, (LOSS_TOLERANCE, NORM_TOLERANCE)):
        if not abs(c - e) <= tol * abs(e):
            return f"its {what} on a probe batch is {c:.6g}, eager gives {e:.6g}"
    return None


def try_compile(
    loss_module: LossModule,
    probe_module: nn.Module,
    probe: torch.Tensor,
    precision: Precision,
    mode: str,
    env: distributed.DistEnv,
    check: bool,
) -> bool:
    """Compile the loss, tried on a batch of the training shape and, with ``check``, compared with eager.

    The whole loss is one compiled function (see :meth:`LossModule.use_compiled`). If that fails, or
    gives another loss or gradient norm than eager on the probe (``check``: only without dropout, whose
    random masks differ between the two), chunked cross-entropy is tried outside the graph, then eager.
    All ranks agree on the outcome. The probe leaves no gradients and does not move the RNG.

    Returns:
        Whether a compiled version is used.
    """
    # The bf16 weight copies (buffers) take gradients too: the probe must clear theirs.
    params = [t for t in (*loss_module.parameters(), *loss_module.buffers()) if t.requires_grad]
    reference = None
    if check:
        try:
            reference = _probe(probe_module, probe, precision, params, measure=True)
        except torch.OutOfMemoryError:  # auto_fit will find a smaller split; the check is skipped
            torch.cuda.empty_cache()
    for in_graph in (True, False) if loss_module.chunked else (True,):
        loss_module.use_compiled(mode, chunks_in_graph=in_graph)
        problem: str | None = None
        try:
            got = _probe(probe_module, probe, precision, params, measure=reference is not None)
            problem = _mismatch(reference, got) if reference else None
        except Exception as e:  # compilation fails in many ways (no compiler, unsupported op, ...)
            problem = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        if not distributed.any_rank(problem is not None, env, probe.device):
            return True
        what = "the compiled loss" if in_graph else "the compiled backbone"
        why = problem or "it failed on another rank"
        fallback = "chunked cross-entropy outside the graph" if in_graph and loss_module.chunked else "no compile"
        warnings.warn(f"torch.compile: {what} is not used ({why}); training continues with {fallback}", stacklevel=3)
    loss_module.use_compiled(None)
    return False


__all__ = ["grad_norm_fn", "refuse_unavailable", "total_grad_norm", "try_compile"]
