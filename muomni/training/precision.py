"""Mixed precision, decided once at setup: an autocast context (or a null one) and a GradScaler.

``amp_dtype auto``: bf16 on CUDA GPUs that have it, else fp16 with loss scaling. On a CPU, bf16 where the
CPU computes in bf16 itself (AVX-512 BF16 or AMX; see :func:`cpu_has_native_bf16`), else fp32; bf16 when
asked for. fp16 autocast on the CPU is slower than fp32 on most CPUs and needs loss scaling, so it falls
back to fp32 with a warning. A disabled :class:`torch.amp.GradScaler` is a
no-op (``scale`` returns the loss, ``step`` calls ``optimizer.step``), so the training step reads the same
with and without fp16.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from muomni.config import Config
from muomni.errors import ConfigError

DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


@dataclass
class Precision:
    """How the forward pass runs and how the loss is scaled.

    Attributes:
        dtype: the autocast dtype, or None for fp32.
        device_type: ``cuda`` or ``cpu``.
        scaler: the loss scaler; enabled only for fp16.
        ctx: the context the forward pass runs under (reusable).
    """

    dtype: torch.dtype | None
    device_type: str
    scaler: torch.amp.GradScaler
    ctx: AbstractContextManager

    @classmethod
    def create(cls, dtype: torch.dtype | None, device_type: str, use_scaler: bool | None = None) -> Precision:
        """Build one; ``use_scaler`` defaults to ``dtype == float16``."""
        scale = dtype == torch.float16 if use_scaler is None else use_scaler
        ctx = nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)
        return cls(dtype, device_type, torch.amp.GradScaler(device_type, enabled=scale), ctx)

    def describe(self) -> str:
        if self.dtype is None:
            mode = "fp32 (no autocast)"
        else:
            mode = f"{DTYPE_NAMES[self.dtype]} autocast, fp32 weights"
        return mode + (", GradScaler loss scaling" if self.scaler.is_enabled() else "")


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a config asks for on ``device`` (None: fp32).

    Raises:
        ConfigError: ``amp_dtype=bf16`` on a CUDA GPU without bf16.
    """
    if not cfg.use_amp:
        return None
    if device.type == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported()
        if cfg.amp_dtype == "bf16" and not has_bf16:
            raise ConfigError("config key 'amp_dtype': this GPU has no bf16; use amp_dtype=fp16 or auto")
        if cfg.amp_dtype == "fp16" or not has_bf16:
            return torch.float16
        return torch.bfloat16
    if cfg.amp_dtype == "bf16" or (cfg.amp_dtype == "auto" and cpu_has_native_bf16()):
        return torch.bfloat16
    if cfg.amp_dtype == "fp16":
        warnings.warn(
            "amp_dtype=fp16 is for CUDA; on the CPU training runs in fp32 (amp_dtype=bf16 for AMP)", stacklevel=3
        )
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16, or AMX's tiles), so that bf16 autocast runs
    bf16 arithmetic rather than emulating it. On one (a 2-core AMD EPYC with AVX-512 BF16) the built-in
    default job trained in 2:32 against 3:24 in fp32, in 0.90 against 1.30 GB, to the same loss; CPUs
    without them (most laptops' AVX2, ARM) keep fp32, where bf16 was not measured."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private but since 2.1
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(cfg: Config, device: torch.device) -> Precision:
    """The :class:`Precision` of a config on ``device``."""
    return Precision.create(amp_dtype(cfg, device), device.type)


def sdpa_backend(device: torch.device, dtype: torch.dtype | None, n_heads: int, head_dim: int) -> str:
    """Which fused attention kernel SDPA picks for causal training attention on CUDA, found cheaply.

    Asks PyTorch's own dispatch checks (``can_use_flash_attention`` ...) with a tiny input of the
    training dtype and head shape. Falls back to listing the enabled backends when the checks are
    unavailable in this PyTorch.
    """
    if device.type != "cuda":
        return "CPU kernel (flash/memory-efficient kernels are CUDA-only)"
    b = torch.backends.cuda
    dt = dtype or torch.float32
    q = torch.empty(1, n_heads, 16, head_dim, device=device, dtype=dt)
    try:
        params = b.SDPAParams(q, q, q, None, 0.0, True, False)
        checks = [("flash", b.can_use_flash_attention), ("memory-efficient", b.can_use_efficient_attention)]
        if hasattr(b, "can_use_cudnn_attention"):
            checks.append(("cuDNN", b.can_use_cudnn_attention))
        for name, can_use in checks:
            if can_use(params, False):
                return name
        return "math (no fused kernel accepts this dtype/shape)"
    except (AttributeError, TypeError, RuntimeError):
        flags = {
            "flash": b.flash_sdp_enabled(),
            "memory-efficient": b.mem_efficient_sdp_enabled(),
            "math": b.math_sdp_enabled(),
        }
        return "one of the enabled: " + ", ".join(k for k, on in flags.items() if on)


__all__ = ["Precision", "amp_dtype", "cpu_has_native_bf16", "resolve_precision", "sdpa_backend"]
