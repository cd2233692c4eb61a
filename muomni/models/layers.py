"""The Thinker's building blocks: RMSNorm, rotary embeddings, attention, SwiGLU/GELU MLP, mixture of experts.

Names follow Hugging Face Llama (``q_proj`` ... ``o_proj``, ``gate_proj``/``up_proj``/``down_proj``) so that
export to ``LlamaForCausalLM`` is a key map. Shapes: B batch, T new tokens, S cache slots, D model width,
H query heads, H_kv key/value heads, Dh head width, E experts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from muomni.models.decode_ops import (
    FUSED_MAX_BATCH,
    decode_attention,
    linear_residual,
    norm_qkv_rope,
    one_kernel_ready,
    swiglu_residual,
)
from muomni.models.kv_cache import KVCache

RMS_NORM_EPS = 1e-5


class Linear(nn.Linear):
    """``nn.Linear`` that may compute with a low-precision copy of its weight (``weight_dtype=bf16``).

    ``compute_weight``, when set, is a bf16 leaf tensor holding the weight rounded to bf16: the forward and
    backward use it (its gradient lands on it, in bf16) while ``weight`` stays the fp32 master copy that is
    saved, loaded and updated (see :mod:`muomni.training.master_weights`). It is a non-persistent buffer:
    state dicts, and so checkpoints and exports, are those of ``nn.Linear``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("compute_weight", None, persistent=False)

    def active_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight a product with ``x`` uses: the bf16 copy under autocast (which would cast ``weight`` to
        bf16 anyway) or for a bf16 ``x``; else ``weight`` (fp32 work, such as sampling without autocast)."""
        copy = self.compute_weight
        if copy is not None and (x.dtype == copy.dtype or torch.is_autocast_enabled(x.device.type)):
            return copy
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(x), self.bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_len, Dh] in fp32, in the half-split layout Hugging Face Llama uses."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # [Dh/2]
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # [max_len, Dh/2]
    angles = torch.cat([angles, angles], dim=-1)  # [max_len, Dh]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., Dh] by the angles of its positions: ``cos``, ``sin`` [..., Dh], broadcast to ``x``
    (for ``x`` [B, T, H, Dh], the tokens' rows of the tables as [T, 1, Dh])."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # rotate_half
    return (x * cos + rotated * sin).to(x.dtype)


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def _kernel_takes_groups(q: torch.Tensor) -> bool:
    """Whether SDPA's fused kernels for ``q`` take fewer key/value heads than query heads (``enable_gqa``).

    The flash and cuDNN kernels do, in 16 bits on NVIDIA GPUs from Ampere on, for heads up to 256 wide
    (flash's limit): there the copies of k and v cost memory and two passes over them (on an H200, small
    preset training: 6.06 against 6.43 GiB, at the same speed). The memory-efficient kernel (fp32, older
    GPUs, wider heads), ROCm's flash and the CPU's kernels do not: with ``enable_gqa`` SDPA would fall back
    to its math path, materializing every score.
    """
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16) or torch.version.hip is not None:
        return False
    head_dim = q.shape[-1]
    return head_dim <= 256 and head_dim % 8 == 0 and torch.cuda.get_device_properties(q.device).major >= 8


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """PyTorch's fused attention (flash / memory-efficient / cuDNN kernels). q [B,H,T,Dh], k/v [B,H_kv,S,Dh].

    Without a mask this is causal over T == S and no mask is materialized, so the flash kernel can run.
    Where a kernel that reads each key/value head for its group of query heads runs (see
    :func:`_kernel_takes_groups`), k and v go to it as they are; elsewhere they are copied ``H / H_kv``
    times first. With a mask [B, 1, T, S] (cached decoding) the query heads of each group are folded into
    the query length instead of copying the cache.
    """
    b, h, t, dh = q.shape
    groups = h // k.shape[1]
    if mask is None:
        if groups > 1 and _kernel_takes_groups(q):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=True)
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)  # [B, H, S, Dh]
            v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    q = q.reshape(b, k.shape[1], groups * t, dh)  # [B, H_kv, g*T, Dh]: head i uses kv head i // g
    if t > 1 and groups > 1:  # one query row's mask (a decode step) broadcasts over the g rows as it is
        mask = mask.repeat(1, 1, groups, 1)  # [B, 1, g*T, S]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # [B, H_kv, g*T, Dh]
    return y.reshape(b, h, t, dh)  # a copy where the kernel's output layout is not [B, H_kv, g*T, Dh] (CUDA)


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Attention written out: softmax(q k^T / sqrt(Dh) + mask) v, softmax in fp32. Same shapes as SDPA."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # [B, H, S, Dh]
    v = v.repeat_interleave(groups, dim=1)
    # Scaled and masked in q's dtype; only the softmax computes in fp32. Under autocast that saves the fp32
    # copies of every score that a cast, the scale and the mask made, forward and backward (the small preset's
    # eager fp16 rows on an H200: +16% tokens/s, see BENCHMARKS). Where the scale is a power of two (head_dim
    # 16, 64, 256) the forward's numbers are those of scaling in fp32, and in bf16 the gradients' too (tested on
    # CPUs); in fp16 a gradient that falls below the normal range can differ in its last bit. Otherwise the
    # scaled score is rounded once to half precision, as Hugging Face's eager attention does.
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, T, S]
    if mask is None:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1, dtype=torch.float32), p=dropout_p).to(q.dtype)
    return probs @ v  # [B, H, T, Dh]


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, RoPE, and an optional static KV cache."""

    def __init__(
        self, d_model: int, n_heads: int, n_kv_heads: int, dropout: float, use_flash: bool, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        self.dropout = dropout
        self.q_proj = Linear(d_model, n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(n_heads * self.head_dim, d_model, bias=False)
        self.attend: AttentionFn = sdpa_attention if use_flash else math_attention
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        norm: RMSNorm | None = None,
    ) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]. With ``input_pos`` [T] the keys/values go to the cache at those slots.

        ``cos``/``sin`` are the whole RoPE tables [ctx_len, Dh]: the tokens' rows are taken here (positions
        0..T-1, or ``input_pos``), so that the fused decode kernel reads its row itself. ``norm``, the
        block's RMSNorm, is applied to ``x`` here rather than by the caller, so that a compiled decode step
        on CUDA can do the norm, the projections, RoPE and the cache write in one kernel.
        """
        return self.o_proj(self._attend(x, cos, sin, mask, input_pos, norm))

    def add_to(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        input_pos: torch.Tensor,
        norm: RMSNorm,
    ) -> torch.Tensor:
        """``x + self(norm(x), ...)`` (no dropout): a block's attention half in cached decoding. In a compiled
        decode step the output projection and the residual add are one kernel (:func:`linear_residual`)."""
        y = self._attend(x, cos, sin, mask, input_pos, norm)  # [B, T, H * Dh]
        b, t, _ = x.shape
        weight = self.o_proj.weight
        if t == 1 and b <= FUSED_MAX_BATCH and one_kernel_ready(x, [y, weight]):  # o_proj has no bias
            return linear_residual(x.reshape(b, -1), y.reshape(b, -1), weight).view_as(x)
        return x + self.o_proj(y)

    def _attend(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        input_pos: torch.Tensor | None,
        norm: RMSNorm | None,
    ) -> torch.Tensor:
        """The attention of ``norm(x)`` before the output projection, [B, T, H * Dh] (see :meth:`forward`)."""
        b, t, _ = x.shape
        if norm is not None and self._one_kernel_input(x, mask, input_pos, norm):
            cache = self.kv_cache
            q = norm_qkv_rope(
                x.reshape(b, -1), norm.weight, norm.eps,
                self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                self.q_proj.bias, self.k_proj.bias, self.v_proj.bias,
                cos, sin, input_pos, cache.k, cache.v,
            )  # fmt: skip
            return self._attention(q, cache.k[:b], cache.v[:b], mask, input_pos)
        if norm is not None:
            x = norm(x)
        rows = slice(0, t) if input_pos is None else input_pos
        cos, sin = cos[rows, None], sin[rows, None]  # [T, 1, Dh]: a token's angles, the same for every head
        # RoPE on the products' own layout [B, T, H, Dh], before the heads move in front: rotated there, q and k
        # keep one layout through RoPE and its backward. Rotated after the move, the backward's rotate_half
        # came out in [B, H, T, Dh] and a second kernel copied it back. Small preset, `+all` on an H200
        # (docs/results/train_rope_layout_ab.py): RoPE's kernels 43 us a layer against 72 (two backward
        # kernels instead of four), 620,952 and 625,134 tokens/s against 613,339 and 613,043.
        q = apply_rope(self.q_proj(x).view(b, t, self.n_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, H_kv, T, Dh]
        if input_pos is not None and self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # [B, H_kv, S, Dh]
        return self._attention(q, k, v, mask, input_pos)

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q [B, H, T, Dh], k/v [B, H_kv, S, Dh] -> their attention, heads side by side [B, T, H * Dh].

        ``input_pos`` [T], with the cache on: slot = position, so no slot after its last is attended.
        """
        b, _, t, _ = q.shape
        if t == 1 and mask is not None and torch.compiler.is_compiling():
            last = None if input_pos is None else input_pos[-1:]
            y = decode_attention(q, k, v, mask, last)  # a compiled cached decode step (see one_query_attention)
        else:
            y = self.attend(q, k, v, mask, self.dropout if self.training else 0.0)  # [B, H, T, Dh]
        return y.transpose(1, 2).reshape(b, t, -1)

    def _one_kernel_input(
        self, x: torch.Tensor, mask: torch.Tensor | None, input_pos: torch.Tensor | None, norm: RMSNorm
    ) -> bool:
        """Whether this call is a compiled cached decode step that :func:`norm_qkv_rope` can serve."""
        cache = self.kv_cache
        if x.shape[1] != 1 or mask is None or cache is None or input_pos is None or self.head_dim % 2:
            return False
        weights = [p for p in self.parameters() if p is not self.o_proj.weight]
        return one_kernel_ready(x, [norm.weight, cache.k, cache.v, *weights])


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x)); or, with ``swiglu=False``, down(gelu(up(x)))."""

    def __init__(self, d_model: int, d_ff: int, swiglu: bool = True) -> None:
        super().__init__()
        self.gate_proj = Linear(d_model, d_ff, bias=False) if swiglu else None
        self.up_proj = Linear(d_model, d_ff, bias=False)
        self.down_proj = Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is None:
            return self.down_proj(F.gelu(self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def add_to(self, x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
        """``x + self(norm(x))`` (no dropout): a block's MLP half, in two Triton kernels when this is a
        compiled decode step (one token per row) that :func:`swiglu_residual` can serve."""
        if self.gate_proj is not None and x.shape[1] == 1 and x.shape[0] <= FUSED_MAX_BATCH:
            weights = [self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight]
            if one_kernel_ready(x, [norm.weight, *weights]):
                b = x.shape[0]
                return swiglu_residual(x.reshape(b, -1), norm.weight, norm.eps, *weights).view_as(x)
        return x + self(norm(x))


class MoE(nn.Module):
    """Top-k routed mixture of SwiGLU experts (Mixtral/Qwen-MoE style: softmax, top-k, renormalize).

    Tokens are gathered per expert, so each expert runs one dense matmul over just its tokens.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int, top_k: int, swiglu: bool = True) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = Linear(d_model, num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, d_ff, swiglu) for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, D]
        probs = self.gate(x).float().softmax(dim=-1)  # [N, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [N, k]
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)  # tokens routed to expert e
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out.view(shape)
