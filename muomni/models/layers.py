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

from muomni.models.kv_cache import KVCache

RMS_NORM_EPS = 1e-5
# Devices whose compiled decode step runs the Triton kernels of muomni.models.triton_decode; tests add "cpu",
# where Triton's interpreter runs them.
TRITON_DEVICES = {"cuda"}
# The most rows a decode step hands to the fused output-head kernel. Each of its programs reads its weight
# rows for one row of the batch, so the weights are read once per row: on an H200 the small preset decoded
# batch 4 at 8,017 tokens/s with it (and the MLP's row kernels), batch 16 at 13,583 and batch 64 at 16,890;
# with them up to batch 4 only, on another machine start, 7,932, 22,180 and 42,176.
HEAD_FUSED_MAX_BATCH = 4
# The most rows a decode step hands to the fused MLP and output-projection kernels (row kernels for one row,
# batched row kernels up to triton_decode.BATCHED_MAX_BATCH, tensor-core tiles over the whole batch from
# its TILE_MIN_BATCH to its TILE_ROWS, which this must not pass: beyond it the kernels fall back to reading
# the weights once per row).
FUSED_MAX_BATCH = 64


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
    """Rotate ``x`` [B, H, T, Dh] by the angles of its positions (``cos``, ``sin`` [T, Dh])."""
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
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])  # [B, H, T, S]
    if mask is None:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p).to(q.dtype)
    return probs @ v  # [B, H, T, Dh]


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of one new token per row over the KV cache, written as products and sums, softmax in fp32.

    q [B, H, 1, Dh], k/v [B, H_kv, S, Dh], mask [B, 1, 1, S] -> [B, H, 1, Dh]. Used inside a compiled decode
    step off CUDA, where Inductor fuses it into a few loops (CPU decoding 19% faster than with SDPA's
    kernel); on CUDA :func:`split_kv_attention` does the same work. The fused SDPA kernels split the work
    by batch x heads only: at batch 1 with 2 key/value heads (the tiny preset) cuDNN's took 10 us per
    layer, a quarter of an H200 decode step. Eagerly the broadcast product would be materialized, so eager
    decoding keeps SDPA or :func:`math_attention`.
    """
    b, h, _, dh = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    q = q.reshape(b, kv_heads, h // kv_heads, 1, dh).float()  # [B, H_kv, g, 1, Dh]: head i uses kv head i // g
    scores = (q * k[:, :, None].float()).sum(-1) / math.sqrt(dh)  # [B, H_kv, g, S]
    scores = scores.masked_fill(~mask.reshape(b, 1, 1, slots), float("-inf"))
    probs = scores.softmax(dim=-1)
    y = (probs[..., None] * v[:, :, None].float()).sum(-2)  # [B, H_kv, g, Dh]
    return y.to(v.dtype).reshape(b, h, 1, dh)


@torch.library.custom_op("muomni::split_kv_attention", mutates_args=())
def split_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, last: torch.Tensor | None = None
) -> torch.Tensor:
    """One-token attention over the KV cache by the Triton kernels of :mod:`muomni.models.triton_decode`.

    q [B, H, 1, Dh], k/v [B, H_kv, S, Dh], valid [B, S], ``last`` [1] the last slot any row may attend
    (optional) -> [B, H, 1, Dh]. A custom op, so that a compiled decode step calls the kernels as they are
    (CUDA only: Triton is imported on the first call).
    """
    from muomni.models.triton_decode import split_kv_attention as kernels

    return kernels(q, k, v, valid, last)


@split_kv_attention.register_fake
def _(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, last: torch.Tensor | None = None
) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous, as the kernels write it


@torch.library.custom_op("muomni::norm_qkv_rope", mutates_args=("k_cache", "v_cache"))
def norm_qkv_rope(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    wq: torch.Tensor,
    wk: torch.Tensor,
    wv: torch.Tensor,
    bq: torch.Tensor | None,
    bk: torch.Tensor | None,
    bv: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """RMSNorm, q/k/v projections, RoPE and the cache write of one decode step, by one Triton kernel.

    x [B, D] before the norm, cos/sin the RoPE tables [>pos, Dh], pos [1] of the new token -> q [B, H, 1, Dh];
    the key and value go to ``k_cache``/``v_cache`` [>=B, H_kv, S, Dh] at slot ``pos`` (see
    :func:`muomni.models.triton_decode.norm_qkv_rope`). A custom op, as :func:`split_kv_attention` is.
    """
    from muomni.models.triton_decode import norm_qkv_rope as kernel

    biases = None if bq is None or bk is None or bv is None else (bq, bk, bv)
    return kernel(x, norm_weight, eps, (wq, wk, wv), biases, cos, sin, pos, k_cache, v_cache)


@norm_qkv_rope.register_fake
def _(x, norm_weight, eps, wq, wk, wv, bq, bk, bv, cos, sin, pos, k_cache, v_cache) -> torch.Tensor:  # noqa: ANN001
    head_dim = k_cache.shape[-1]
    return x.new_empty(x.shape[0], wq.shape[0] // head_dim, 1, head_dim)


@torch.library.custom_op("muomni::norm_linear", mutates_args=())
def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm then a bias-free linear layer, x [B, D] -> [B, N], by one Triton kernel: the output head of a
    compiled decode step (see :func:`muomni.models.triton_decode.norm_linear`). A custom op, as
    :func:`split_kv_attention` is."""
    from muomni.models.triton_decode import norm_linear as kernel

    return kernel(x, norm_weight, eps, weight)


@norm_linear.register_fake
def _(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("muomni::linear_residual", mutates_args=())
def linear_residual(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x + h W^T``, x [B, N], h [B, K], weight [N, K] -> [B, N]: a block's output projection and residual
    add in a compiled decode step, by one Triton kernel (see :func:`muomni.models.triton_decode.linear_residual`)."""
    from muomni.models.triton_decode import linear_residual as kernel

    return kernel(x, h, weight)


@linear_residual.register_fake
def _(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("muomni::swiglu_residual", mutates_args=())
def swiglu_residual(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
) -> torch.Tensor:
    """``x + down(silu(gate(n)) * up(n))``, ``n = RMSNorm(x)``, x [B, D] -> [B, D]: a block's MLP half in a
    compiled decode step, by two Triton kernels (see :func:`muomni.models.triton_decode.swiglu_residual`)."""
    from muomni.models.triton_decode import swiglu_residual as kernels

    return kernels(x, norm_weight, eps, (w_gate, w_up, w_down))


@swiglu_residual.register_fake
def _(x, norm_weight, eps, w_gate, w_up, w_down) -> torch.Tensor:  # noqa: ANN001
    return torch.empty_like(x)


FUSED_OPS = ("split_kv_attention", "norm_qkv_rope", "norm_linear", "linear_residual", "swiglu_residual")


def register_inductor_fallbacks() -> None:
    """Tell Inductor up front that the custom ops above run as they are, each as one fallback kernel.

    Left to find that out, Inductor (torch 2.11 at least) first formats a log line with the op's arguments,
    and an argument at the end of a chain of these ops prints every op before it, twice over where two
    inputs share an ancestor: compiling the small preset's batch-1 decode step, whose output head comes
    after 12 layers of fused ops, had not finished after 2 minutes (it takes 12 s). Registering the ops
    first skips that path; the layout constraint is the one the implicit fallback would choose. Uses
    Inductor's internal lowering table, so any failure leaves Inductor to its own path.
    """
    try:
        from torch._inductor import lowering
        from torch._library.utils import get_layout_constraint_tag

        for name in FUSED_OPS:
            op = getattr(torch.ops.muomni, name).default
            if op not in lowering.lowerings:
                constraint = lowering.tag_to_layout_constraint(get_layout_constraint_tag(op, with_default=True))
                lowering.make_fallback(op, layout_constraint=constraint, warn=False)
    except (ImportError, AttributeError, TypeError, AssertionError):  # another torch: its own path
        return


def one_kernel_ready(x: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    """Whether the step being compiled can hand ``x`` and ``tensors`` to a kernel of :mod:`triton_decode`.

    Only on a Triton device, without autocast (which would change where rounding happens), with every
    tensor contiguous and in ``x``'s dtype: elsewhere the modules run one by one.
    """
    if not torch.compiler.is_compiling() or x.device.type not in TRITON_DEVICES or torch.is_autocast_enabled():
        return False
    return all(t.dtype == x.dtype and t.is_contiguous() for t in [x, *tensors])


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, last: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention of a compiled cached decode step (one token per row): split-KV Triton kernels on CUDA,
    :func:`one_query_attention` elsewhere. mask [B, 1, 1, S]; ``last`` [1]: no slot after it is attended."""
    if q.device.type in TRITON_DEVICES:
        return split_kv_attention(q, k, v, mask.reshape(mask.shape[0], mask.shape[-1]), last)
    return one_query_attention(q, k, v, mask)


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
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, H_kv, T, Dh]
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, H_kv, T, Dh]
        rows = slice(0, t) if input_pos is None else input_pos
        cos, sin = cos[rows], sin[rows]  # [T, Dh]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
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
