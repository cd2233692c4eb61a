"""Optimizer and learning-rate schedule.

Weight decay applies to matrices only: the >= 2-D weights of linear layers. Norm gains, biases and the
token embedding (and so a tied ``lm_head``) are not decayed, as in GPT-2/nanoGPT and most Llama recipes:
shrinking a norm gain or an embedding row towards zero only fights the model.

The schedule is a pure function of the number of optimizer steps actually *applied*
(:func:`lr_at`), so a step skipped for an fp16 overflow or a non-finite loss does not advance it (with
overlapped steps, the one launched beside it already has the next position; see ``TrainingRun._run_steps``),
and resuming needs no scheduler object: the applied-step count in the checkpoint is the scheduler's state.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from muomni.config import Config
from muomni.training.master_weights import MasterWeightAdamW, attach_compute_weights
from muomni.training.offload import CPUOffloadOptimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters into a decayed group (matrices) and a non-decayed one.

    Args:
        model: the model; tied parameters appear once (under their first name).
        weight_decay: the decay of the first group.

    Returns:
        ``[{"params": matrices, "weight_decay": weight_decay, "names": ...}, {"params": rest,
        "weight_decay": 0.0, "names": ...}]``, in ``named_parameters`` order. ``names`` is kept out of
        the optimizer by :func:`build_optimizer`; it is there for tests and logs.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and id(p) not in embeddings
        (decay if is_matrix else no_decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay, "names": [n for n, _ in decay]},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0, "names": [n for n, _ in no_decay]},
    ]


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CUDA) or SGD with Nesterov momentum, with :func:`param_groups`.

    With ``weight_dtype=bf16`` the linear layers get bf16 copies of their weights to compute with, and
    :class:`~muomni.training.master_weights.MasterWeightAdamW` trains the fp32 weights from them.

    SGD's ``weight_decay`` is the classic L2 term added to the gradient; AdamW's is decoupled.
    The learning rate is set before every step by the trainer from :func:`lr_at`.
    """
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.wd)]
    if cfg.cpu_offload == "optimizer":  # master weights and state on the CPU, stepped there
        if cfg.optimizer == "adamw":
            return CPUOffloadOptimizer(groups, torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
        return CPUOffloadOptimizer(groups, torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.weight_dtype == "bf16":  # refused with SGD, offload and FSDP (features.refuse_unavailable)
        copies = attach_compute_weights(model)
        return MasterWeightAdamW(groups, copies, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.optimizer == "adamw":
        # The fused kernel updates every parameter in one launch; on CPU the foreach path is the default.
        fused = True if device.type == "cuda" else None
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can be told on the device to skip a step (:func:`step_unless`): PyTorch's
    fused optimizers take the ``found_inf`` flag that ``GradScaler`` hands them after an fp16 overflow."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_unless(
    optimizer: torch.optim.Optimizer, skip: torch.Tensor, clip: tuple[torch.Tensor, float] | None = None
) -> None:
    """Step ``optimizer``, unless the 0-d device tensor ``skip`` is true, without waiting for its value.

    The fused kernels read the flag on the device and leave parameters and state (the step count too)
    untouched when it is set, so the host launches the update before it knows the step's loss, and the GPU
    runs it while the host waits (on an H200 the small preset's step idled 2.5 ms instead of 3.4).
    Only for optimizers where :func:`skips_on_device` holds.

    ``clip`` = (the gradients' global norm, ``max_norm``) clips them inside the update, as
    ``clip_grad_norm_`` would before it: the fused kernels divide each gradient by the ``grad_scale``
    ``GradScaler`` hands them, here ``max(1, (norm + 1e-6) / max_norm)``, which saves a pass that reads and
    writes every gradient. The gradients are left clipped, as ``clip_grad_norm_`` leaves them.
    """
    optimizer.found_inf = skip.float()  # type: ignore[attr-defined]  # the attributes GradScaler sets
    if clip is not None:
        norm, max_norm = clip
        # clip_grad_norm_'s factor, max_norm / (norm + 1e-6) capped at 1, as the divisor the kernels take.
        optimizer.grad_scale = torch.clamp((norm.float() + 1e-6) / max_norm, min=1.0)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]
        if clip is not None:
            del optimizer.grad_scale  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Schedule:
    """Linear warmup, then cosine / linear decay to ``min_lr`` at ``total_steps`` (or constant).

    Attributes:
        kind: ``cosine``, ``linear`` or ``constant``.
        lr: the peak learning rate.
        min_lr: the rate reached at ``total_steps`` (ignored by ``constant``).
        warmup_steps: steps of linear warmup from ``lr / warmup_steps`` to ``lr``.
        total_steps: the step at which the decay ends.
    """

    kind: str
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        return lr_at(step, self)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, s: Schedule) -> float:
    """The learning rate of the optimizer step that follows ``step`` applied steps (0-based).

    Warmup: step 0 uses ``lr / warmup_steps`` and step ``warmup_steps - 1`` the full ``lr``. The decay
    then runs from that peak (step 0's ``lr`` without warmup) to ``min_lr`` at the run's last step,
    ``total_steps - 1``, and stays there: the peak is used once, and the final rate is trained with.
    """
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return s.lr
    peak = max(s.warmup_steps - 1, 0)
    progress = min(1.0, (step - peak) / max(1, s.total_steps - 1 - peak))
    if s.kind == "linear":
        return s.lr - progress * (s.lr - s.min_lr)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.lr - s.min_lr)


def schedule_change(saved: Any, schedule: Schedule, step: int) -> str | None:
    """What a resumed run's schedule changes, where it moves the next step's learning rate from the one of
    the schedule saved in the checkpoint (``saved``, its ``state_dict``); None where it does not.

    The schedule follows the config the run resumes with, so a finished cosine run resumed with a larger
    ``max_steps`` climbs from ``min_lr`` back towards ``lr``: as the config says, but rarely what is meant.
    """
    try:
        old = Schedule(**saved)
    except TypeError:  # not a saved schedule's fields (an older checkpoint, or none): nothing to compare
        return None
    if step >= schedule.total_steps:  # nothing left to train (the run says so itself)
        return None
    before, now = lr_at(step, old), lr_at(step, schedule)
    if math.isclose(before, now, rel_tol=1e-6):
        return None
    fields = schedule.state_dict()
    changed = ", ".join(f"{key} {saved[key]!r} -> {value!r}" for key, value in fields.items() if saved[key] != value)
    return (
        f"the learning-rate schedule is not the checkpoint's ({changed}): the next step trains at lr {now:.3g} "
        f"where the checkpoint's schedule gives {before:.3g} (the schedule is the resumed config's, as if the "
        "run had been planned so from its first step)"
    )


def planned_steps(cfg: Config, n_train_windows: int) -> int:
    """The optimizer steps the run will take: ``max_steps`` or ``max_epochs`` of data, whichever is fewer."""
    limits = []
    if cfg.max_steps is not None:
        limits.append(cfg.max_steps)
    if cfg.max_epochs is not None:
        windows_per_step = cfg.batch_size * cfg.gradient_accumulation_steps
        limits.append(math.ceil(cfg.max_epochs * n_train_windows / windows_per_step))
    return min(limits)


def make_schedule(cfg: Config, total_steps: int) -> Schedule:
    """The schedule of a config, decaying over ``total_steps`` (see :func:`planned_steps`). A warmup as long
    as the run is almost always a slip (a preset's warmup kept for a short run): it says so in one warning."""
    if cfg.warmup_steps >= total_steps > 1:
        peak = cfg.lr * total_steps / cfg.warmup_steps  # the last step's: see lr_at
        warnings.warn(
            f"warmup_steps {cfg.warmup_steps} is not below the run's {total_steps} steps: the learning rate rises "
            f"for the whole run (to {peak:.3g}; lr is {cfg.lr:g}) and never decays; lower warmup_steps",
            stacklevel=2,
        )
    return Schedule(cfg.scheduler, cfg.lr, cfg.final_lr, cfg.warmup_steps, total_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = [
    "Schedule",
    "build_optimizer",
    "lr_at",
    "make_schedule",
    "param_groups",
    "planned_steps",
    "schedule_change",
    "set_lr",
    "skips_on_device",
    "step_unless",
]
