"""The compiled decode step's fused operations: custom ops around the Triton kernels of
:mod:`muomni.models.triton_decode`, when a step may use them, and its attention off CUDA; and top-p
sampling's kernel (:mod:`muomni.inference.triton_top_p`).

Each op is a ``torch.library`` custom op, so that a compiled decode step calls the kernels as they are (Triton is
imported on the first call), with a fake for tracing. The layers of :mod:`muomni.models.layers` call them only
inside a compiled, cached decode step on a Triton device (:func:`one_kernel_ready`); every other call runs the
modules as written. Top-p's kernel serves eager and compiled sampling alike on a Triton device
(:func:`top_p_kernel_ready`), so both draw the same tokens. Shapes: B batch, S cache slots, D model width,
N output width, H query heads, H_kv key/value heads, Dh head width.
"""

from __future__ import annotations

import importlib.util
import math

import torch

# Devices whose compiled decode step runs the Triton kernels of muomni.models.triton_decode; tests add "cpu",
# where Triton's interpreter runs them.
TRITON_DEVICES = {"cuda"}
# The most rows a decode step hands to the fused output-head kernel (the final norm and the head in one row
# kernel). Its programs read their weight rows once per row of the batch; from 2 rows Inductor's norm and
# cuBLAS's product, which read the head once, are faster. On an H200, end to end, alternating processes on one
# start (docs/results/h200_decode_head_small_batch_ab.jsonl), tokens/s with the kernel up to 4 rows against
# 1 row: tiny preset batch 2 31,303 and 30,996 against 35,187 and 34,521, batch 4 46,636 and 45,650 against
# 60,580 and 60,111; small preset batch 2 8,375 and 8,325 against 8,897 and 8,778, batch 4 11,779 and
# 11,672 against 13,228 and 13,176.
HEAD_FUSED_MAX_BATCH = 1
# The most rows a decode step hands to the fused MLP and output-projection kernels (row kernels for one row,
# batched row kernels up to triton_decode.BATCHED_MAX_BATCH, tensor-core tiles over the whole batch from
# its TILE_MIN_BATCH to its TILE_ROWS, which this must not pass: beyond it the kernels fall back to reading
# the weights once per row).
FUSED_MAX_BATCH = 64


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
    """One-token attention over the KV cache by the Triton kernels of :mod:`muomni.models.split_kv`.

    q [B, H, 1, Dh], k/v [B, H_kv, S, Dh], valid [B, S], ``last`` [1] the last slot any row may attend
    (optional) -> [B, H, 1, Dh]. A custom op, so that a compiled decode step calls the kernels as they are
    (CUDA only: Triton is imported on the first call).
    """
    from muomni.models.split_kv import split_kv_attention as kernels

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


# The widest vocabulary the top-p kernel holds in its registers (a row a program); wider ones take
# sampling.sample's own path (the sort eagerly, the bisection compiled).
TOP_P_MAX_VOCAB = 65536


@torch.library.custom_op("muomni::top_p_race", mutates_args=())
def top_p_race(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """The token top-p sampling picks in each row, x [B, V] scaled logits, noise [B, V] -> [B] int64, by one
    Triton kernel that needs no sort (see :mod:`muomni.inference.triton_top_p`). A custom op, as
    :func:`split_kv_attention` is."""
    from muomni.inference.triton_top_p import top_p_race as kernel

    return kernel(x, noise, p)


@top_p_race.register_fake
def _(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    return x.new_empty(x.shape[0], dtype=torch.int64)


# Looked up once here: a compiled step cannot trace importlib (Dynamo skips it, and fullgraph fails).
HAS_TRITON = importlib.util.find_spec("triton") is not None


def top_p_kernel_ready(x: torch.Tensor) -> bool:
    """Whether :func:`top_p_race` can choose from logits ``x`` [B, V]: on a Triton device, V small enough."""
    return HAS_TRITON and x.device.type in TRITON_DEVICES and x.shape[-1] <= TOP_P_MAX_VOCAB


FUSED_OPS = (
    "split_kv_attention",
    "norm_qkv_rope",
    "norm_linear",
    "linear_residual",
    "swiglu_residual",
    "top_p_race",
)


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
