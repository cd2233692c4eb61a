"""The startup report of a training run: what runs where, how big, with which features.

These lines are the first thing to read when a run is slow or wrong: the device, the precision, the
parameter count, the effective batch and tokens per step, the attention kernel, the schedule, and where
the run starts from. :func:`unigram_entropy` gives the loss of the best model that ignores context, the
bar a trained model must clear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from muomni.training.precision import sdpa_backend

if TYPE_CHECKING:
    from muomni.training.trainer import Trainer


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats of the token frequencies: the loss of predicting every token by its frequency alone."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _device_line(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"device: cuda ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return f"device: cpu ({torch.get_num_threads()} threads)"


def _attention_line(t: Trainer) -> str:
    if not t.cfg.use_flash:
        return "attention: math (softmax written out; use_flash=false)"
    return "attention: SDPA, " + sdpa_backend(t.device, t.precision.dtype, t.cfg.n_heads, t.cfg.head_dim)


def _features_line(t: Trainer) -> str:
    cfg = t.cfg
    clip = f"clip at {cfg.max_grad_norm}" if cfg.max_grad_norm else "no clipping"
    compiled = f"compiled ({cfg.compile_mode})" if t.compiled else "eager"
    ckpt = "gradient checkpointing" if cfg.use_gradient_checkpointing else "no gradient checkpointing"
    every = cfg.gradient_checkpointing_every
    if cfg.use_gradient_checkpointing and every > 1:
        ckpt += f" of {len(range(0, cfg.n_layers, every))} of {cfg.n_layers} blocks (every {every})"
    loss = "chunked linear cross-entropy" if cfg.chunked_ce else "full-logits cross-entropy"
    offload = "" if cfg.cpu_offload == "none" else f", {cfg.cpu_offload} offloaded to CPU"
    residual = ", bf16 residual stream" if cfg.residual_dtype == "bf16" else ""
    residual += ", bf16 linear weights (fp32 master weights in the optimizer)" if cfg.weight_dtype == "bf16" else ""
    overlap = ", steps overlapped (the next launched before the loss is read)" if t.overlaps_steps else ""
    return f"features: {compiled}, {ckpt}, {clip}, {loss}{residual}{offload}{overlap}"


def _processes(t: Trainer) -> str:
    env = t.env
    if not env.enabled:
        return "1 process"
    return f"{env.world_size} processes ({env.mode}, {'NCCL' if t.device.type == 'cuda' else 'gloo'})"


def describe_run(t: Trainer) -> list[str]:
    """The startup lines of a trainer (see the module docstring)."""
    cfg, data, p = t.cfg, t.data, t.progress
    fused = " (fused)" if t.optimizer.defaults.get("fused") else ""
    world = t.env.world_size
    epochs = t.total_steps * cfg.effective_batch_size * world / data.n_train_windows
    start = f"resuming from {t.resume_from} at step {p.step}" if t.resume_from else "starting from scratch"
    if t.resume_from is None and cfg.init_from:
        start = f"starting from the weights of {cfg.init_from}"
    return [
        _device_line(t.device),
        f"precision: {t.precision.describe()}",
        f"model: {t.model.num_params() / 1e6:.2f}M parameters ({t.model.num_params(non_embedding=True) / 1e6:.2f}M "
        f"without embeddings), {cfg.n_layers} layers, d_model {cfg.d_model}, ctx_len {cfg.ctx_len}",
        f"data: {cfg.train_text}, {len(data.train_tokens):,} training tokens ({data.n_train_windows:,} windows), "
        f"{len(t.val_set)} validation windows; unigram entropy {t.unigram_entropy:.4f} nats",
        f"batch: effective batch {cfg.effective_batch_size * world} = {cfg.batch_size} x "
        f"{cfg.gradient_accumulation_steps} accumulation x {_processes(t)}; "
        f"{t.global_tokens_per_step:,} tokens per step",
        _attention_line(t),
        _features_line(t),
        f"optimizer: {cfg.optimizer}{fused}, lr {cfg.lr:g}, {cfg.scheduler} schedule, {cfg.warmup_steps} warmup "
        f"steps, min_lr {cfg.final_lr:g} at step {t.total_steps} ({epochs:.2f} epochs)",
        f"{start} (setup took {t.setup_seconds:.1f} s: tokenizer, tokens, model)",
    ]


__all__ = ["describe_run", "unigram_entropy"]
