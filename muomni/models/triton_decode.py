"""Split-KV attention of one new token over the KV cache, in Triton (flash-decoding, Dao et al. 2023).

At batch 1 a decode step has one query per head: the fused SDPA kernels spread such work over batch x
heads only (cuDNN took 10 us per layer on an H200), and Inductor's reduction over the cache slots ran in
one program per head (8 us per layer of the small preset, 14 us tuned). Here the cache slots are split
over many programs, each computing a partial softmax of its slots for all query heads of one key/value
head, and a second kernel merges the parts (from ``WHOLE_MIN_ROWS`` rows on, enough programs without
splits, one program walks a row's whole cache and no merge is needed). Slots masked out (padding, and
the slots beyond the position, not written yet) count for nothing, whatever they hold. Used by the
compiled decode step on CUDA only, through the custom op in :mod:`muomni.models.layers`. The products run
on tensor cores in the cache's dtype (fp32 ones in full precision); scores, softmax and sums are fp32.
"""

# No ``from __future__ import annotations`` here: Triton 3.1 (torch 2.5's) runs kernels in its interpreter
# with their constexpr parameters as plain ints when the annotations are strings, and tl.arange refuses them.
import functools
import math
import os

import torch
import triton
import triton.language as tl

try:  # Hopper's grid dependency control, in Triton from 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: the kernels launch one after another, as before
    gdc_launch_dependents = gdc_wait = None

# Programmatic dependent launch (PDL; Hopper and later, CUDA graphs keep it): each kernel lets the next one
# start while it runs, and the next one issues the loads that depend on no kernel before it (weights, norm
# gains, biases) and then waits, at `_wait_for_inputs`, until the kernel before it has finished and its
# writes are visible; only then does it read activations, positions or caches, or store anything. A
# decode step is some 70 kernels of a few microseconds, each mostly the latency of its launch and of its
# first loads: with PDL those pass while the kernel before it still runs. False launches every kernel
# only once the one before has finished. Up to PDL_MAX_BATCH rows: on an H200, alternating processes on one
# start (docs/results/h200_decode_pdl_ab.json, h200_decode_b64_ab.json), small preset batch 1 ran 5,404
# and 5,404 tokens/s with PDL against 3,968 and 4,018 without, batch 16 41,479 and 41,414 against 40,416
# and 41,204 (42,698 and 41,816 with the tiles' first weights before the wait, see _weights_t), but batch
# 64 82,807 and 82,837 against 104,856 and 105,314.
USE_PDL = True
PDL_MAX_BATCH = 16
# The tile kernels' first step out of their loop without PDL too (see _weights_t): for tests of that
# arithmetic where there is no PDL (Triton's interpreter has none).
EARLY_WITHOUT_PDL = False


@triton.jit
def _let_next_kernel_start(PDL: tl.constexpr):
    """With PDL, allow the next kernel's launch once every program of this one has started."""
    if PDL:
        gdc_launch_dependents()


@triton.jit
def _wait_for_inputs(PDL: tl.constexpr):
    """With PDL, wait here until the kernel before has finished and its writes are visible.

    Every program of a kernel launched with PDL must pass here before it reads anything a kernel wrote or
    stores anything, and pass here at all: the kernel after it waits for this one only, so this one must
    not finish before the one it follows.
    """
    if PDL:
        gdc_wait()


def _pdl_in_triton() -> bool:
    """Whether this Triton has the grid dependency instructions and the ``launch_pdl`` launch option."""
    if gdc_wait is None:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:  # pragma: no cover - a Triton without the NVIDIA back end
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@functools.cache
def _pdl_on(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: NVIDIA, compute capability 9 or more, Triton has it."""
    if device.type != "cuda" or torch.version.hip or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9 and _pdl_in_triton()


def pdl_max_batch(device: torch.device) -> int:
    """The most rows for which the decode kernels on ``device`` launch with PDL (0: none do)."""
    return PDL_MAX_BATCH if USE_PDL and _pdl_on(device) else 0


def _launch(device: torch.device, batch: int) -> dict:
    """The kernels' ``PDL`` constexpr and, with it on, Triton's launch option (see ``USE_PDL``)."""
    if batch <= pdl_max_batch(device):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


def _tile_launch(device: torch.device, batch: int) -> dict:
    """:func:`_launch` for a tile kernel, with its ``EARLY`` constexpr (see :func:`_weights_t`)."""
    launch = _launch(device, batch)
    return {**launch, "EARLY": launch["PDL"] or EARLY_WITHOUT_PDL}


# Split-KV attention: cache slots per program (one block of them each: shorter programs, more of them),
# the rows (batch x key/value heads) from which blocks are twice as long, and each program's warps. Chosen
# on an H200 with both kernels alone over 12 layers' caches in a CUDA graph, at position 272, among 16/32/64
# slots x 1/2/4 warps (docs/results/h200_attention_dot.json): 32 x 2 was the fastest or within 0.2 us for
# fewer than 64 rows (small preset batch 1: 4.2 us a call, tiny batch 1: 3.7, tiny batch 16: 4.8), 64 x 2
# from 64 rows on (small batch 16: 7.3, batch 64: 18.9). The broadcast-and-sum fp32 products these dots
# replaced took 6.2, 4.7, 5.9, 14.7 and 38.2 us. A merge in the last program of each row (arrival counts,
# as the split-K tiles below use) instead of a second kernel took 5.8 us at small batch 1, on another start.
BLOCK = 32
WIDE_BLOCK = 64
WIDE_BLOCK_MIN_ROWS = 64
ATTENTION_WARPS = 2
MAX_SPLITS = 128  # more programs than that buy nothing on one GPU and cost the merge registers
ATTENTION_STAGES = 3  # software pipelining: Triton's default on these GPUs, the next blocks' loads in flight
# From this many rows, one program per row walks the whole cache and stores the output: no partial sums and
# no merge kernel. On an H200 (docs/results/h200_attention_whole.json), kernels alone at positions 40, 272
# and 500, small preset: batch 64 (256 rows) took 3.3, 12.0 and 17.3 us a call so, against 13.8, 18.8 and
# 22.0 split (end to end, 104,721 against 91,364 tokens/s); batch 16 (64 rows) 9.0, 13.7 us at 272 and 500
# against 7.3 and 8.7 split, and tiny batch 16 (32 rows) lost end to end (140,233 against 168,941).
WHOLE_MIN_ROWS = 256
# The fewest rows for which the splits past the new token's slot skip their loads. Its position must be
# read from the device before any other load of the program: at batch 1 that second memory latency made
# small-preset decoding 10% slower on an H200 (2,599 against 2,887 and 2,834 tokens/s).
SKIP_MIN_BATCH = 16


@triton.jit
def _partial_attention(
    q_ptr, k_ptr, v_ptr, valid_ptr, last_ptr, m_ptr, l_ptr, acc_ptr, out_ptr,
    stride_qb, stride_qh, stride_qd, stride_ob, stride_oh, stride_od,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_valid_b, stride_valid_s,
    slots, slots_per_split, n_splits, scale,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, QUERY_ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, BLOCK_S: tl.constexpr, HAS_LAST: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, WHOLE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (b * KV_HEADS + kv head, split): running max, sum and weighted values of its slots, for the
    # GROUP query heads of its key/value head as rows of two tensor-core products, padded to QUERY_ROWS
    # (the fewest rows tl.dot takes): rows past GROUP are zeros, and those past GROUP_PAD are not stored.
    # WHOLE (one split: the program saw every slot) stores the normalized output itself, with no merge.
    # Everything it reads was written by the kernels before (the query, the cache at the new slot).
    _let_next_kernel_start(PDL)
    _wait_for_inputs(PDL)
    row, split = tl.program_id(0), tl.program_id(1)
    b, kv = row // KV_HEADS, row % KV_HEADS
    g, d = tl.arange(0, QUERY_ROWS), tl.arange(0, DIM_PAD)
    g_ok, d_ok = g < GROUP, d < HEAD_DIM
    q_at = q_ptr + b * stride_qb + (kv * GROUP + g)[:, None] * stride_qh + d[None, :] * stride_qd
    q = tl.load(q_at, mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(k_ptr.dtype.element_ty)  # [Q, D]
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([QUERY_ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([QUERY_ROWS], tl.float32)
    acc = tl.zeros([QUERY_ROWS, DIM_PAD], tl.float32)
    start = split * slots_per_split
    stop = tl.minimum(start + slots_per_split, slots)
    if HAS_LAST:  # no slot past ``last`` is attended: a split wholly past it reads nothing
        stop = tl.minimum(stop, tl.load(last_ptr) + 1)
    for offset in range(0, stop - start, BLOCK_S):
        s = start + offset + tl.arange(0, BLOCK_S)
        # The key, value and validity loads do not wait on each other: one memory latency, not two.
        in_cache = (s < stop)[:, None] & d_ok[None, :]
        keep = tl.load(valid_ptr + b * stride_valid_b + s * stride_valid_s, mask=s < stop, other=0) != 0
        k_at = k_ptr + b * stride_kb + kv * stride_kh + s[None, :] * stride_ks + d[:, None] * stride_kd
        k = tl.load(k_at, mask=(s < stop)[None, :] & d_ok[:, None], other=0.0)  # [D, S], as the product takes it
        v_at = v_ptr + b * stride_vb + kv * stride_vh + s[:, None] * stride_vs + d[None, :] * stride_vd
        v = tl.load(v_at, mask=in_cache, other=0.0)  # [S, D]
        v = tl.where(keep[:, None], v, 0.0)  # a slot not yet written may hold anything, even NaN
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, k, input_precision=PRECISION) * scale  # [Q, S] in fp32
        scores = tl.where(keep[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no kept slot yet: exp() gives 0, not NaN
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(scores - m_safe[:, None])  # [Q, S]
        # The weights meet the values in the cache's dtype, as flash attention's kernels do; sums in fp32.
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if WHOLE:  # l_i > 0 for each query head: a query always sees its own slot; padding rows are not stored
        y = acc / tl.where(g_ok, l_i, 1.0)[:, None]
        out_at = out_ptr + b * stride_ob + (kv * GROUP + g)[:, None] * stride_oh + d[None, :] * stride_od
        tl.store(out_at, y.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    else:
        part = (row * n_splits + split) * GROUP_PAD + g  # [Q] into m/l [rows, splits, G_PAD]
        stored = g < GROUP_PAD
        tl.store(m_ptr + part, m_i, mask=stored)
        tl.store(l_ptr + part, l_i, mask=stored)
        tl.store(acc_ptr + part[:, None] * DIM_PAD + d[None, :], acc, mask=stored[:, None])


@triton.jit
def _merge_splits(
    m_ptr, l_ptr, acc_ptr, out_ptr,
    stride_ob, stride_oh, stride_od,
    n_splits,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program b * H + h: rescale every split's partial result to the common max and normalize.
    _let_next_kernel_start(PDL)
    _wait_for_inputs(PDL)
    head = tl.program_id(0)
    b, h = head // (KV_HEADS * GROUP), head % (KV_HEADS * GROUP)
    row, g = b * KV_HEADS + h // GROUP, h % GROUP
    sp, d = tl.arange(0, SPLITS_PAD), tl.arange(0, DIM_PAD)
    sp_ok = sp < n_splits
    part = (row * n_splits + sp) * GROUP_PAD + g  # [splits]
    m = tl.load(m_ptr + part, mask=sp_ok, other=float("-inf"))
    l_sum = tl.load(l_ptr + part, mask=sp_ok, other=0.0)
    acc = tl.load(acc_ptr + part[:, None] * DIM_PAD + d[None, :], mask=sp_ok[:, None], other=0.0)  # [splits, D]
    weight = tl.exp(m - tl.max(m, axis=0))  # finite max: a query always sees its own slot
    y = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l_sum * weight, axis=0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d * stride_od, y.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def _dot_precision(dtype: torch.dtype) -> dict:
    """How the kernels' ``tl.dot`` multiplies operands of ``dtype``: fp32 ones in full precision, not TF32.

    Triton's interpreter multiplies 16-bit operands wrongly (a bf16 16 x 16 product was off by 1e10), so
    there they are widened to fp32 first: the products of bf16 values are exact in fp32, as a GPU's
    tensor cores form them, so only the order of the fp32 sums differs.
    """
    upcast = os.environ.get("TRITON_INTERPRET") == "1" and dtype != torch.float32
    precision = "ieee" if dtype == torch.float32 or upcast else "tf32"  # tf32: the default, unused for 16 bits
    return {"PRECISION": precision, "UPCAST": upcast}


def split_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, last: torch.Tensor | None = None
) -> torch.Tensor:
    """q [B, H, 1, Dh], k/v [B, H_kv, S, Dh], valid [B, S] (True: attend) -> [B, H, 1, Dh] in q's dtype.

    ``last`` [1], on the device, may say that no slot after it is valid (the new token's position: the
    slots past it are not written yet). From ``SKIP_MIN_BATCH`` rows on, the splits past it then read
    nothing; below, every slot is read (see ``SKIP_MIN_BATCH``).
    """
    batch, heads, _, head_dim = q.shape
    kv_heads, slots = k.shape[1], k.shape[2]
    group, rows = heads // kv_heads, batch * kv_heads
    block = WIDE_BLOCK if rows >= WIDE_BLOCK_MIN_ROWS else BLOCK
    most = 1 if rows >= WHOLE_MIN_ROWS else MAX_SPLITS
    splits = min(triton.cdiv(slots, block), most)
    per_split = triton.cdiv(triton.cdiv(slots, splits), block) * block
    splits = triton.cdiv(slots, per_split)
    group_pad = triton.next_power_of_2(group)
    dim_pad = max(16, triton.next_power_of_2(head_dim))  # tl.dot takes 16 deep at least
    out = torch.empty(batch, heads, 1, head_dim, dtype=q.dtype, device=q.device)
    whole = splits == 1
    m = l_sum = acc = out  # unread by a whole row's program
    if not whole:
        m = torch.empty(rows, splits, group_pad, dtype=torch.float32, device=q.device)
        l_sum = torch.empty_like(m)
        acc = torch.empty(rows, splits, group_pad, dim_pad, dtype=torch.float32, device=q.device)
    valid = valid.view(torch.uint8)  # Triton reads bytes; a bool tensor is one byte per element
    shape = {"KV_HEADS": kv_heads, "GROUP": group, "GROUP_PAD": group_pad, "HEAD_DIM": head_dim, "DIM_PAD": dim_pad}
    shape |= _launch(q.device, batch)
    skip = last is not None and batch >= SKIP_MIN_BATCH
    _partial_attention[(rows, splits)](
        q, k, v, valid, last if skip else valid, m, l_sum, acc, out,  # without HAS_LAST, last_ptr is unread
        q.stride(0), q.stride(1), q.stride(3), out.stride(0), out.stride(1), out.stride(3),
        *k.stride(), *v.stride(), *valid.stride(),
        slots, per_split, splits, 1.0 / math.sqrt(head_dim),
        QUERY_ROWS=max(16, group_pad), BLOCK_S=block, HAS_LAST=skip, WHOLE=whole, num_warps=ATTENTION_WARPS,
        num_stages=ATTENTION_STAGES, **_dot_precision(k.dtype), **shape,
    )  # fmt: skip
    if whole:
        return out
    _merge_splits[(batch * heads,)](
        m, l_sum, acc, out, out.stride(0), out.stride(1), out.stride(3), splits,
        SPLITS_PAD=triton.next_power_of_2(splits), **shape,
    )  # fmt: skip
    return out


# The attention input of one decode step: rows of q/k/v per program, as pairs (row i and row i + Dh/2, the
# two halves RoPE mixes), and the most model-width columns one loop iteration reads. The whole row at once
# for the presets (one iteration: every load of a program goes out together, one memory latency). Chosen on
# an H200 with weights not in L2 (2/4/8/16 pairs x 1/2/4/8 warps): 4 pairs and 2 warps came within 10% of
# the fastest for batch 1 of the small and tiny presets and batch 16 of the small one (3.6, 2.5 and 8.9 us
# a call, against 8.6, 10.2 and 18.3 us for Inductor's tuned kernels doing the same work). End to end, small
# tuned decoding ran the same with 4 x 2 and 8 x 4 (2,400 and 2,394 tokens/s, one machine).
PAIRS = 4
MAX_COLUMNS = 1024
QKV_WARPS = 2


@triton.jit
def _head_block(HALF: tl.constexpr, PAIRS: tl.constexpr):
    """The q/k/v head of this program (the q heads first, then k, then v; each split into blocks of PAIRS
    row pairs) and the first pair of its block."""
    block = tl.program_id(0)
    blocks_per_head: tl.constexpr = (HALF + PAIRS - 1) // PAIRS
    return block // blocks_per_head, (block % blocks_per_head) * PAIRS


@triton.jit
def _head_weights(head, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, HEADS, KV_HEADS, HALF):
    """The weight and bias of q/k/v head ``head`` (the q heads first, then k, then v) and its first row."""
    if head < HEADS:
        w_ptr, bias_ptr, row = wq_ptr, bq_ptr, head * 2 * HALF
    elif head < HEADS + KV_HEADS:
        w_ptr, bias_ptr, row = wk_ptr, bk_ptr, (head - HEADS) * 2 * HALF
    else:
        w_ptr, bias_ptr, row = wv_ptr, bv_ptr, (head - HEADS - KV_HEADS) * 2 * HALF
    return w_ptr, bias_ptr, row


# What the attention input's epilogue reads besides the products is loaded before the products (which
# depend on none of it): its latency passes while the weights stream in, instead of adding memory round
# trips after them.
@triton.jit
def _qkv_biases(j, j_ok, bias_ptr, row, HALF, HAS_BIAS):
    """The bias of rows i and i + Dh/2 for pairs ``j`` of a head whose first row is ``row`` (zeros
    without one), fp32: read before `_wait_for_inputs`, as no kernel writes them."""
    bias_low = tl.zeros(j.shape, tl.float32)
    bias_high = tl.zeros(j.shape, tl.float32)
    if HAS_BIAS:
        bias_low = tl.load(bias_ptr + row + j, mask=j_ok, other=0.0).to(tl.float32)
        bias_high = tl.load(bias_ptr + row + HALF + j, mask=j_ok, other=0.0).to(tl.float32)
    return bias_low, bias_high


@triton.jit
def _rope_angles(j, j_ok, cos_ptr, sin_ptr, pos_ptr, stride_rope):
    """The new token's position and the RoPE angles' cos and sin there for pairs ``j`` (cos[i] ==
    cos[i + Dh/2]; a v head does not use them), fp32. The position is written in the step, so these are
    read after `_wait_for_inputs`."""
    pos = tl.load(pos_ptr)
    cos = tl.load(cos_ptr + pos * stride_rope + j, mask=j_ok, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * stride_rope + j, mask=j_ok, other=0.0).to(tl.float32)
    return pos, cos, sin


@triton.jit
def _norm_qkv_rope(
    x_ptr, norm_ptr, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, cos_ptr, sin_ptr, pos_ptr,
    q_ptr, kc_ptr, vc_ptr,
    stride_xb, stride_qb, stride_qh,
    stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, stride_rope,
    eps,
    DIM: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, HAS_BIAS: tl.constexpr,
    PAIRS_PER_BLOCK: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (head block, b): rows i and i + Dh/2 of one q, k or v head applied to RMSNorm(x[b]), RoPE, store.
    _let_next_kernel_start(PDL)
    b = tl.program_id(1)
    head, first_pair = _head_block(HALF, PAIRS_PER_BLOCK)
    j = first_pair + tl.arange(0, PAIRS_PER_BLOCK)  # [P]: pair within the head
    j_ok = j < HALF
    w_ptr, bias_ptr, row = _head_weights(head, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, HEADS, KV_HEADS, HALF)
    bias_low, bias_high = _qkv_biases(j, j_ok, bias_ptr, row, HALF, HAS_BIAS)
    # W (g * x / rms(x)) = (W (g * x)) / rms(x): the norm's statistic is gathered in the same pass as the
    # products, so no load waits on another. Unlike the eager RMSNorm, the normed row is not rounded to
    # the model's dtype before the product: a difference within that dtype's rounding. The loop is unrolled
    # (one step for the presets), so the first step's weights are on their way before the wait.
    c = tl.arange(0, COLUMNS)
    squares = tl.zeros([COLUMNS], tl.float32)
    low = tl.zeros([PAIRS_PER_BLOCK], tl.float32)  # row i
    high = tl.zeros([PAIRS_PER_BLOCK], tl.float32)  # row i + Dh/2
    for start in tl.static_range(0, DIM, COLUMNS):
        col = start + c
        col_ok = col < DIM
        tile_ok = j_ok[:, None] & col_ok[None, :]
        gain = tl.load(norm_ptr + col, mask=col_ok, other=0.0).to(tl.float32)
        w_low = tl.load(w_ptr + (row + j)[:, None] * DIM + col[None, :], mask=tile_ok, other=0.0)
        w_high = tl.load(w_ptr + (row + HALF + j)[:, None] * DIM + col[None, :], mask=tile_ok, other=0.0)
        if start == 0:
            _wait_for_inputs(PDL)
            pos, cos, sin = _rope_angles(j, j_ok, cos_ptr, sin_ptr, pos_ptr, stride_rope)
        x = tl.load(x_ptr + b * stride_xb + col, mask=col_ok, other=0.0).to(tl.float32)
        squares += x * x
        gx = x * gain
        low += tl.sum(w_low.to(tl.float32) * gx[None, :], axis=1)
        high += tl.sum(w_high.to(tl.float32) * gx[None, :], axis=1)
    inv_rms = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / DIM + eps)
    low, high = low * inv_rms + bias_low, high * inv_rms + bias_high
    dtype = x_ptr.dtype.element_ty
    low, high = low.to(dtype).to(tl.float32), high.to(dtype).to(tl.float32)  # the projection's output
    d_low, d_high = j, HALF + j
    if head < HEADS + KV_HEADS:  # q and k turn by their position: x * cos + rotate_half(x) * sin
        low, high = low * cos - high * sin, high * cos + low * sin
    if head < HEADS:
        at = q_ptr + b * stride_qb + head * stride_qh
        tl.store(at + d_low, low.to(q_ptr.dtype.element_ty), mask=j_ok)
        tl.store(at + d_high, high.to(q_ptr.dtype.element_ty), mask=j_ok)
    elif head < HEADS + KV_HEADS:
        at = kc_ptr + b * stride_kcb + (head - HEADS) * stride_kch + pos * stride_kcs
        tl.store(at + d_low, low.to(kc_ptr.dtype.element_ty), mask=j_ok)
        tl.store(at + d_high, high.to(kc_ptr.dtype.element_ty), mask=j_ok)
    else:
        at = vc_ptr + b * stride_vcb + (head - HEADS - KV_HEADS) * stride_vch + pos * stride_vcs
        tl.store(at + d_low, low.to(vc_ptr.dtype.element_ty), mask=j_ok)
        tl.store(at + d_high, high.to(vc_ptr.dtype.element_ty), mask=j_ok)


# From this batch on, the attention input, output projection and MLP of a decode step run as tensor-core tiles: each
# program reads its weight columns once and applies them to every row of the batch (up to TILE_ROWS). The
# row kernels above read the weights once per row: at batch 16 on an H200 they made small-preset decoding
# slower than cuBLAS (13,583 against 22,180 tokens/s), whose M=16 products in turn ran 4.2 us each, for
# 0.05-0.2 us of weight reads at the copy bandwidth, as they spread over only 24 of 132 multiprocessors.
TILE_MIN_BATCH = 5
TILE_ROWS = 64
TILE_COLUMNS = 16
TILE_DEPTH = 256
TILE_WARPS = 2
QKV_TILE_PAIRS = 16  # row pairs of one head per program of the attention input's tiles
# Split-K: a tile's depth shared by several programs, each storing its fp32 partial sums; the last of a
# tile to finish adds them in split order (the same result whichever finishes last) and runs the epilogue,
# so it stays one kernel. A tile's loop is bound by memory latency, one load after another, and few tiles
# leave most of an H200's 132 multiprocessors idle (the small preset's projections onto the residual
# stream have 48 tiles of 16 columns, its attention input 36). Tiles at least SPLIT_MIN_DEPTH deep are
# SPLIT_DEPTH deep a step and split (the attention input and projections onto the residual stream);
# shallower ones stay TILE_DEPTH deep and whole. Chosen on an H200, small preset, batch 16:
# - kernels alone in a CUDA graph, per layer, 128 deep (docs/results/h200_split_sweep.json): the MLP's down
#   projection (2,048 deep) took 7.8 us unsplit, 4.5 in 8 splits; the attention input 6.6 and 5.2 in 6;
#   gate/up (128 tiles) 7.4 unsplit and 1 us more split, so it is not split. That sweep's output
#   projection ran faster unsplit (3.0 against 3.9 us), but its weights, 14 MB for 12 layers, stayed in
#   L2 there, as they do not in a decode step;
# - end to end, compiled decoding, every tile 128 deep: 29,165 and 29,152 tokens/s unsplit, 32,628 and
#   32,381 split as below (alternating on one start; 31,852 unsplit at 256 deep on another).
# The tiny preset (256 wide) lost with splits of one or two steps: batch 16 ran 134,685 tokens/s against
# 150,288 before (two starts); its 256-deep tiles are back to what was measured then.
SPLIT_MIN_DEPTH = 768
SPLIT_DEPTH = 128
LINEAR_SPLITS = 8
QKV_SPLITS = 6
# Gate/up's tiles are 32 columns wide for up to 16 rows. Chosen on an H200, small preset, kernels alone over
# 12 layers in a CUDA graph (docs/results/h200_tile_stages.json and h200_attention_whole.json): at batch 16,
# 6.7 us a layer at 32 columns, 8.8 at 16 (128 or 256 deep a step, 2 or 4 warps, 1 to 6 pipeline stages:
# 32 x 128 x 2 warps with Triton's 3 stages was within 0.1 us of the fastest); batch 5: 7.5 against 8.8;
# but batch 32: 9.5 against 9.2, batch 64: 14.1 against 10.9. End to end, batch 16: 40,596 tokens/s
# against 38,363 (one start). The tiny preset's 256-deep tiles, one step each, stay 16 wide (3.0 us, 3.6
# at 32 columns). Those 16-row tiles (5 to 16 rows) are split GATE_UP_SPLITS ways from SPLIT_MIN_DEPTH, as
# with PDL each program loads its first step before the wait: for the small preset three programs of two
# 128-deep steps each then load half the depth early, where one program loaded one step of six (the tiles
# of more rows were not measured split and are not). Without PDL, unsplit tiles had been 1 us a layer
# faster than 8 splits. End to end with PDL, small preset batch 16, alternating on one start
# (docs/results/h200_decode_gate_up_split_ab.json): 43,656 and 43,527 tokens/s in 3 splits, 43,133 and
# 43,084 in 6, 42,856 and 42,816 unsplit.
GATE_UP_COLUMNS = 32
GATE_UP_SPLITS = 3
SPLIT_LOCKS = 4096  # tiles one launch may split; a wider launch runs unsplit
_locks: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _arrive(lock_ptr, SPLITS: tl.constexpr):
    """Split-K: count this program's partial sums as stored; True in the last program of its tile.

    The barrier puts every thread's stores before the one thread's acquire-release count (the pattern of a
    grid-wide barrier), and the last program sets the count back to zero for the next launch.
    """
    tl.debug_barrier()
    last = tl.atomic_add(lock_ptr, 1, sem="acq_rel") == SPLITS - 1
    if last:
        tl.atomic_xchg(lock_ptr, 0)
    return last


@triton.jit
def _sum_splits(part_ptr, offsets, SIZE: tl.constexpr, SPLITS: tl.constexpr):
    """The sum of a tile's partials in split order, read past L1 (other multiprocessors wrote them)."""
    total = tl.load(part_ptr + offsets, cache_modifier=".cg")
    for s in tl.static_range(1, SPLITS):
        total += tl.load(part_ptr + s * SIZE + offsets, cache_modifier=".cg")
    return total


@triton.jit
def _depth_range(dim, BK: tl.constexpr, SPLITS: tl.constexpr):
    """The depth [start, end) of this program's split: whole BK steps, the last split takes the rest."""
    depth = tl.cdiv(tl.cdiv(dim, SPLITS), BK) * BK
    start = tl.program_id(1) * depth
    return start, tl.minimum(start + depth, dim)


@triton.jit
def _gather_pair(a, b, squares, part_ptr, lock_ptr, BM: tl.constexpr, BN: tl.constexpr, SPLITS: tl.constexpr):
    """Split-K of a tile of two [BM, BN] products and the rows' [BM] sums of squares (a norm's statistic):
    store this split's, and return the whole sums and whether this program is the tile's last."""
    size: tl.constexpr = 2 * BM * BN + BM
    tile = tl.program_id(0)
    block = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
    parts = part_ptr + tile * SPLITS * size
    mine = parts + tl.program_id(1) * size
    tl.store(mine + block, a)
    tl.store(mine + BM * BN + block, b)
    tl.store(mine + 2 * BM * BN + tl.arange(0, BM), squares)
    last = _arrive(lock_ptr + tile, SPLITS)
    if last:
        a = _sum_splits(parts, block, size, SPLITS)
        b = _sum_splits(parts + BM * BN, block, size, SPLITS)
        squares = _sum_splits(parts + 2 * BM * BN, tl.arange(0, BM), size, SPLITS)
    return a, b, squares, last


# Launched with PDL, the tile kernels take their depth's first step (for the presets' splits most often
# their only one) out of the loop (EARLY): its weights are loaded before `_wait_for_inputs`, the rest in the
# pipelined loop after it. Without PDL the first step stays in the loop, pipelined with the others.
@triton.jit
def _weights_t(w_ptr, rows, rows_ok, k, k_ok, dim):
    """[BK, BN]: columns ``k`` of the weight rows ``rows``, transposed (as the product takes them)."""
    return tl.load(w_ptr + rows[None, :] * dim + k[:, None], mask=k_ok[:, None] & rows_ok[None, :], other=0.0)


@triton.jit
def _batch_rows(x_ptr, m, m_ok, k, k_ok, stride_xb):
    """[BM, BK]: columns ``k`` of the batch's rows (rows past the batch are zeros)."""
    return tl.load(x_ptr + m[:, None] * stride_xb + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _gained_rows(x_ptr, norm_ptr, m, m_ok, k, k_ok, stride_xb):
    """Columns ``k`` of the rows times the norm's gain, and the rows' sums of squares over them (the
    norm's statistic), fp32: W (g * x) / rms(x), with 1 / rms(x) applied after the products, as in the row
    kernels."""
    x = _batch_rows(x_ptr, m, m_ok, k, k_ok, stride_xb).to(tl.float32)
    gain = tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    return x * gain[None, :], tl.sum(x * x, axis=1)


@triton.jit
def _dot(a, w, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a w on tensor cores, ``a`` rounded to the weights' dtype (see :func:`_dot_precision`)."""
    a = a.to(w.dtype)
    if UPCAST:
        a, w = a.to(tl.float32), w.to(tl.float32)
    return tl.dot(a, w, acc, input_precision=PRECISION)


@triton.jit
def _normed_pair_first(
    x_ptr, norm_ptr, wa_ptr, wb_ptr, rows_a, rows_b, rows_ok, m, m_ok, k_start, k_end, dim, stride_xb,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    """Two products of the gained rows (see :func:`_gained_rows`), with weight rows ``rows_a`` of wa and
    ``rows_b`` of wb, [BM, BN] fp32 each, and the rows' sums of squares, so far: with EARLY the split's
    first step, its weights loaded before `_wait_for_inputs`, otherwise nothing yet. Waits either way, and
    returns them with the depth where :func:`_normed_pair_steps` goes on."""
    a = tl.zeros([BM, BN], tl.float32)
    b = tl.zeros([BM, BN], tl.float32)
    squares = tl.zeros([BM], tl.float32)
    first = k_start
    if EARLY:
        k = k_start + tl.arange(0, BK)
        k_ok = k < k_end
        w_a = _weights_t(wa_ptr, rows_a, rows_ok, k, k_ok, dim)
        w_b = _weights_t(wb_ptr, rows_b, rows_ok, k, k_ok, dim)
    _wait_for_inputs(PDL)
    if EARLY:
        gx, squares = _gained_rows(x_ptr, norm_ptr, m, m_ok, k, k_ok, stride_xb)
        a = _dot(gx, w_a, a, PRECISION, UPCAST)
        b = _dot(gx, w_b, b, PRECISION, UPCAST)
        first = k_start + BK
    return a, b, squares, first


@triton.jit
def _normed_pair_steps(
    a, b, squares, first, k_end, x_ptr, norm_ptr, wa_ptr, wb_ptr, rows_a, rows_b, rows_ok, m, m_ok, dim, stride_xb,
    BK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """:func:`_normed_pair_first`'s products and sums of squares over the rest of the split, [first, k_end)."""
    for start in range(first, k_end, BK):
        k = start + tl.arange(0, BK)
        k_ok = k < k_end
        gx, step_squares = _gained_rows(x_ptr, norm_ptr, m, m_ok, k, k_ok, stride_xb)
        squares += step_squares
        a = _dot(gx, _weights_t(wa_ptr, rows_a, rows_ok, k, k_ok, dim), a, PRECISION, UPCAST)
        b = _dot(gx, _weights_t(wb_ptr, rows_b, rows_ok, k, k_ok, dim), b, PRECISION, UPCAST)
    return a, b, squares


@triton.jit
def _tile_norm_qkv_rope(
    x_ptr, norm_ptr, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, cos_ptr, sin_ptr, pos_ptr,
    q_ptr, kc_ptr, vc_ptr, part_ptr, lock_ptr,
    stride_xb, stride_qb, stride_qh,
    stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, stride_rope,
    batch, dim, eps,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    # Program (pair block, split): _norm_qkv_rope's BN row pairs of one head for all rows of the batch, on
    # tensor cores, over the split's share of the depth.
    _let_next_kernel_start(PDL)
    head, first_pair = _head_block(HALF, BN)
    j = first_pair + tl.arange(0, BN)  # [BN]: pair within the head
    m = tl.arange(0, BM)
    j_ok, m_ok = j < HALF, m < batch
    w_ptr, bias_ptr, row = _head_weights(head, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, HEADS, KV_HEADS, HALF)
    bias_low, bias_high = _qkv_biases(j, j_ok, bias_ptr, row, HALF, HAS_BIAS)
    k_start, k_end = _depth_range(dim, BK, SPLITS)
    # rows i (low) and i + Dh/2 (high) of the head's weight; the RoPE angles are read once the wait is passed
    low, high, squares, first = _normed_pair_first(
        x_ptr, norm_ptr, w_ptr, w_ptr, row + j, row + HALF + j, j_ok, m, m_ok, k_start, k_end, dim, stride_xb,
        BM, BN, BK, PRECISION, UPCAST, PDL, EARLY,
    )  # fmt: skip
    pos, cos, sin = _rope_angles(j, j_ok, cos_ptr, sin_ptr, pos_ptr, stride_rope)
    low, high, squares = _normed_pair_steps(
        low, high, squares, first, k_end, x_ptr, norm_ptr, w_ptr, w_ptr, row + j, row + HALF + j, j_ok, m, m_ok, dim,
        stride_xb, BK, PRECISION, UPCAST,
    )  # fmt: skip
    last = True
    if SPLITS > 1:
        low, high, squares, last = _gather_pair(low, high, squares, part_ptr, lock_ptr, BM, BN, SPLITS)
    if last:
        _qkv_epilogue(
            low, high, squares, pos, cos, sin, bias_low, bias_high, m, j, m_ok, j_ok, head, q_ptr, kc_ptr, vc_ptr,
            x_ptr, stride_qb, stride_qh, stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs,
            dim, eps, HEADS, KV_HEADS, HALF,
        )  # fmt: skip


@triton.jit
def _qkv_epilogue(
    low, high, squares, pos, cos, sin, bias_low, bias_high, m, j, m_ok, j_ok, head, q_ptr, kc_ptr, vc_ptr,
    x_ptr, stride_qb, stride_qh, stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs,
    dim, eps, HEADS, KV_HEADS, HALF,
):  # fmt: skip
    """The attention input's tile after its products: the norm's scale, bias, RoPE, the q and cache stores
    (pos to bias_high: what :func:`_rope_angles` and :func:`_qkv_biases` loaded before the last products)."""
    inv_rms = (1.0 / tl.sqrt(squares / dim + eps))[:, None]
    low, high = low * inv_rms + bias_low[None, :], high * inv_rms + bias_high[None, :]
    dtype = x_ptr.dtype.element_ty
    low, high = low.to(dtype).to(tl.float32), high.to(dtype).to(tl.float32)  # the projection's output
    if head < HEADS + KV_HEADS:
        turn_cos, turn_sin = cos[None, :], sin[None, :]
        low, high = low * turn_cos - high * turn_sin, high * turn_cos + low * turn_sin
    tile_ok = m_ok[:, None] & j_ok[None, :]
    if head < HEADS:
        at = q_ptr + m[:, None] * stride_qb + head * stride_qh + j[None, :]
        tl.store(at, low.to(q_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(at + HALF, high.to(q_ptr.dtype.element_ty), mask=tile_ok)
    elif head < HEADS + KV_HEADS:
        at = kc_ptr + m[:, None] * stride_kcb + (head - HEADS) * stride_kch + pos * stride_kcs + j[None, :]
        tl.store(at, low.to(kc_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(at + HALF, high.to(kc_ptr.dtype.element_ty), mask=tile_ok)
    else:
        at = vc_ptr + m[:, None] * stride_vcb + (head - HEADS - KV_HEADS) * stride_vch + pos * stride_vcs + j[None, :]
        tl.store(at, low.to(vc_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(at + HALF, high.to(vc_ptr.dtype.element_ty), mask=tile_ok)


def norm_qkv_rope(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    biases: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """The attention input of one decode step in one kernel: RMSNorm, the q/k/v projections, RoPE, cache write.

    x [B, D] (the residual stream before the norm), weights (q [H*Dh, D], k and v [H_kv*Dh, D], contiguous),
    cos/sin [>pos, Dh] the RoPE tables (their row ``pos`` is read), pos [1] the new token's position and
    cache slot, k/v_cache [>=B, H_kv, S, Dh]: the new key and value are written at slot ``pos``. Returns q
    [B, H, 1, Dh] after RoPE. Batched row kernels for BATCHED_MIN_BATCH to BATCHED_MAX_BATCH rows,
    tensor-core tiles for TILE_MIN_BATCH to TILE_ROWS, row kernels otherwise.
    """
    batch, dim = x.shape
    wq, wk, wv = weights
    head_dim = k_cache.shape[-1]
    heads, kv_heads = wq.shape[0] // head_dim, wk.shape[0] // head_dim
    half = head_dim // 2
    q = torch.empty(batch, heads, 1, head_dim, dtype=x.dtype, device=x.device)
    bq, bk, bv = biases if biases is not None else (wq, wk, wv)  # unread without HAS_BIAS
    args = (
        x, norm_weight, wq, wk, wv, bq, bk, bv, cos, sin, pos,
        q, k_cache, v_cache,
        x.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), cos.stride(0),
    )  # fmt: skip
    shape = {"HEADS": heads, "KV_HEADS": kv_heads, "HALF": half, "HAS_BIAS": biases is not None}
    if _batched(batch, dim):
        _batched_norm_qkv_rope[((heads + 2 * kv_heads) * triton.cdiv(half, BATCHED_PAIRS),)](
            *args, batch, eps, DIM=dim, **shape, PAIRS_PER_BLOCK=BATCHED_PAIRS,
            **_batched_shape(batch, BATCHED_PAIRS, dim), **_launch(x.device, batch),
        )  # fmt: skip
        return q
    if _tiled(batch):
        tile = {**_tile_shape(batch, wq.dtype, dim), "BN": QKV_TILE_PAIRS, **_tile_launch(x.device, batch)}
        tiles = (heads + 2 * kv_heads) * triton.cdiv(half, QKV_TILE_PAIRS)
        splits, parts, locks = _split_buffers(x, tiles, tile, QKV_SPLITS, dim, _pair_size(tile))
        _tile_norm_qkv_rope[(tiles, splits)](
            *args[:14], parts, locks, *args[14:], batch, dim, eps, **shape, **tile, SPLITS=splits
        )
        return q
    _norm_qkv_rope[((heads + 2 * kv_heads) * triton.cdiv(half, PAIRS), batch)](
        *args, eps, DIM=dim, **shape, **_launch(x.device, batch),
        PAIRS_PER_BLOCK=PAIRS, COLUMNS=min(triton.next_power_of_2(dim), MAX_COLUMNS), num_warps=QKV_WARPS,
    )  # fmt: skip
    return q


# The output head of one decode step: rows of the head per program, and warps; the whole model row is read
# in one loop iteration (MAX_COLUMNS), as for the attention input. Chosen on an H200 for the small preset's
# 32,000 x 768 head at batch 1, weights out of L2 (8/16/32/64 rows x 2/4/8 warps): 8 x 8 took 25.7 us a
# call, 16 x 4 27.9, 64 x 2 30.2. The same 49 MB at the copy bandwidth would take 12 us.
HEAD_ROWS = 8
HEAD_WARPS = 8


@triton.jit
def _norm_linear(
    x_ptr, norm_ptr, w_ptr, out_ptr,
    stride_xb, stride_ob,
    rows, eps,
    DIM: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (row block, b): rows of W applied to RMSNorm(x[b]), in the same single pass as _norm_qkv_rope.
    _let_next_kernel_start(PDL)
    block, b = tl.program_id(0), tl.program_id(1)
    r = block * ROWS + tl.arange(0, ROWS)
    r_ok = r < rows
    c = tl.arange(0, COLUMNS)
    squares = tl.zeros([COLUMNS], tl.float32)
    acc = tl.zeros([ROWS], tl.float32)
    for start in tl.static_range(0, DIM, COLUMNS):
        col = start + c
        col_ok = col < DIM
        gain = tl.load(norm_ptr + col, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + r[:, None] * DIM + col[None, :], mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        if start == 0:
            _wait_for_inputs(PDL)
        x = tl.load(x_ptr + b * stride_xb + col, mask=col_ok, other=0.0).to(tl.float32)
        squares += x * x
        acc += tl.sum(w.to(tl.float32) * (x * gain)[None, :], axis=1)
    acc = acc / tl.sqrt(tl.sum(squares, axis=0) / DIM + eps)
    tl.store(out_ptr + b * stride_ob + r, acc.to(out_ptr.dtype.element_ty), mask=r_ok)


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm then a bias-free linear layer in one kernel: x [B, D], weight [N, D] contiguous -> [B, N].

    The output head of a decode step (N the vocabulary): the norm's statistic is gathered in the same pass
    as the products, W (g * x / rms(x)) = (W (g * x)) / rms(x), as in :func:`norm_qkv_rope`.
    """
    batch, dim = x.shape
    rows = weight.shape[0]
    out = torch.empty(batch, rows, dtype=x.dtype, device=x.device)
    _norm_linear[(triton.cdiv(rows, HEAD_ROWS), batch)](
        x, norm_weight, weight, out, x.stride(0), out.stride(0), rows, eps, DIM=dim, ROWS=HEAD_ROWS,
        COLUMNS=min(triton.next_power_of_2(dim), MAX_COLUMNS), num_warps=HEAD_WARPS, **_launch(x.device, batch),
    )  # fmt: skip
    return out


# The SwiGLU MLP of one decode step: rows of gate and up (of down) per program, warps, and the most columns
# of the down projection one loop iteration reads. Chosen on an H200 for the small preset at batch 1 with
# weights out of L2 (1/2/4/8 rows x 1/2/4 warps, 512/1024/2048 columns): one row on one warp, down reading
# its whole 2,048-wide row. In the decode step 4 rows on 2 warps made the down kernel take 7 us (Inductor's:
# 3.1) and decoding slower than without these kernels (2,680-2,712 against 2,795 tokens/s); with 1 x 1,
# 3,185 and 3,137 against 2,914 (docs/BENCHMARKS.md).
MLP_ROWS = 1
MLP_WARPS = 1
DOWN_ROWS = 1
DOWN_WARPS = 1
DOWN_COLUMNS = 2048


@triton.jit
def _norm_gate_up(
    x_ptr, norm_ptr, wg_ptr, wu_ptr, h_ptr,
    stride_xb, stride_hb,
    rows, eps,
    DIM: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (row block, b): silu(gate) * up of rows of both projections applied to RMSNorm(x[b]), one pass.
    _let_next_kernel_start(PDL)
    block, b = tl.program_id(0), tl.program_id(1)
    r = block * ROWS + tl.arange(0, ROWS)
    r_ok = r < rows
    c = tl.arange(0, COLUMNS)
    squares = tl.zeros([COLUMNS], tl.float32)
    gate = tl.zeros([ROWS], tl.float32)
    up = tl.zeros([ROWS], tl.float32)
    for start in tl.static_range(0, DIM, COLUMNS):
        col = start + c
        col_ok = col < DIM
        tile_ok = r_ok[:, None] & col_ok[None, :]
        gain = tl.load(norm_ptr + col, mask=col_ok, other=0.0).to(tl.float32)
        w_gate = tl.load(wg_ptr + r[:, None] * DIM + col[None, :], mask=tile_ok, other=0.0)
        w_up = tl.load(wu_ptr + r[:, None] * DIM + col[None, :], mask=tile_ok, other=0.0)
        if start == 0:
            _wait_for_inputs(PDL)
        x = tl.load(x_ptr + b * stride_xb + col, mask=col_ok, other=0.0).to(tl.float32)
        squares += x * x
        gx = x * gain
        gate += tl.sum(w_gate.to(tl.float32) * gx[None, :], axis=1)
        up += tl.sum(w_up.to(tl.float32) * gx[None, :], axis=1)
    inv_rms = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / DIM + eps)
    dtype = h_ptr.dtype.element_ty
    gate = (gate * inv_rms).to(dtype).to(tl.float32)  # each projection's output, rounded as the modules round
    up = (up * inv_rms).to(dtype).to(tl.float32)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(h_ptr + b * stride_hb + r, (silu * up).to(dtype), mask=r_ok)


@triton.jit
def _down_residual(
    h_ptr, w_ptr, x_ptr, out_ptr,
    stride_hb, stride_xb, stride_ob,
    rows,
    DIM: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (row block, b): x[b] + rows of W h[b]. The residual is loaded with the first step's row of h,
    # before the products: its latency then passes while the weights stream in, not after them.
    _let_next_kernel_start(PDL)
    block, b = tl.program_id(0), tl.program_id(1)
    r = block * ROWS + tl.arange(0, ROWS)
    r_ok = r < rows
    c = tl.arange(0, COLUMNS)
    acc = tl.zeros([ROWS], tl.float32)
    for start in tl.static_range(0, DIM, COLUMNS):
        col = start + c
        col_ok = col < DIM
        w = tl.load(w_ptr + r[:, None] * DIM + col[None, :], mask=r_ok[:, None] & col_ok[None, :], other=0.0)
        if start == 0:
            _wait_for_inputs(PDL)
            x = tl.load(x_ptr + b * stride_xb + r, mask=r_ok, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + b * stride_hb + col, mask=col_ok, other=0.0).to(tl.float32)
        acc += tl.sum(w.to(tl.float32) * h[None, :], axis=1)
    dtype = out_ptr.dtype.element_ty
    tl.store(out_ptr + b * stride_ob + r, (x + acc.to(dtype).to(tl.float32)).to(dtype), mask=r_ok)


@triton.jit
def _tile_norm_gate_up(
    x_ptr, norm_ptr, wg_ptr, wu_ptr, h_ptr, part_ptr, lock_ptr,
    stride_xb, stride_hb,
    batch, rows, dim, eps,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    # Program (n, split): columns [n * BN, (n + 1) * BN) of silu(gate) * up for all rows of the batch
    # (BM >= batch), over the split's share of the depth.
    _let_next_kernel_start(PDL)
    m = tl.arange(0, BM)
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    k_start, k_end = _depth_range(dim, BK, SPLITS)
    gate, up, squares, first = _normed_pair_first(
        x_ptr, norm_ptr, wg_ptr, wu_ptr, n, n, n_ok, m, m_ok, k_start, k_end, dim, stride_xb,
        BM, BN, BK, PRECISION, UPCAST, PDL, EARLY,
    )  # fmt: skip
    gate, up, squares = _normed_pair_steps(
        gate, up, squares, first, k_end, x_ptr, norm_ptr, wg_ptr, wu_ptr, n, n, n_ok, m, m_ok, dim, stride_xb,
        BK, PRECISION, UPCAST,
    )  # fmt: skip
    last = True
    if SPLITS > 1:
        gate, up, squares, last = _gather_pair(gate, up, squares, part_ptr, lock_ptr, BM, BN, SPLITS)
    if last:
        inv_rms = (1.0 / tl.sqrt(squares / dim + eps))[:, None]
        dtype = h_ptr.dtype.element_ty
        gate = (gate * inv_rms).to(dtype).to(tl.float32)  # each projection's output, rounded as the modules do
        up = (up * inv_rms).to(dtype).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        h_at = h_ptr + m[:, None] * stride_hb + n[None, :]
        tl.store(h_at, (silu * up).to(dtype), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _tile_linear_residual(
    h_ptr, w_ptr, x_ptr, out_ptr, part_ptr, lock_ptr,
    stride_hb, stride_xb, stride_ob,
    batch, rows, dim,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
):  # fmt: skip
    # Program (n, split): columns [n * BN, (n + 1) * BN) of x + h W^T for all rows of the batch (BM >= batch),
    # over the split's share of the depth. Every program loads its residual tile (the last of a split tile
    # uses it) with its first rows of h, before the products, as _down_residual does.
    _let_next_kernel_start(PDL)
    tile = tl.program_id(0)
    m = tl.arange(0, BM)
    n = tile * BN + tl.arange(0, BN)
    m_ok, n_ok = m < batch, n < rows
    tile_ok = m_ok[:, None] & n_ok[None, :]
    k_start, k_end = _depth_range(dim, BK, SPLITS)
    first = k_start
    acc = tl.zeros([BM, BN], tl.float32)
    if EARLY:  # the first step's weights before the wait
        k = k_start + tl.arange(0, BK)
        k_ok = k < k_end
        w = _weights_t(w_ptr, n, n_ok, k, k_ok, dim)
    _wait_for_inputs(PDL)
    x = tl.load(x_ptr + m[:, None] * stride_xb + n[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    if EARLY:
        acc = _dot(_batch_rows(h_ptr, m, m_ok, k, k_ok, stride_hb), w, acc, PRECISION, UPCAST)
        first = k_start + BK
    for start in range(first, k_end, BK):
        k = start + tl.arange(0, BK)
        k_ok = k < k_end
        w = _weights_t(w_ptr, n, n_ok, k, k_ok, dim)
        acc = _dot(_batch_rows(h_ptr, m, m_ok, k, k_ok, stride_hb), w, acc, PRECISION, UPCAST)
    last = True
    if SPLITS > 1:
        block = m[:, None] * BN + tl.arange(0, BN)[None, :]
        parts = part_ptr + tile * SPLITS * BM * BN
        tl.store(parts + tl.program_id(1) * BM * BN + block, acc)
        last = _arrive(lock_ptr + tile, SPLITS)
    if last:
        if SPLITS > 1:
            acc = _sum_splits(parts, block, BM * BN, SPLITS)
        dtype = out_ptr.dtype.element_ty
        y = x + acc.to(dtype).to(tl.float32)  # the product rounded as the module rounds it, then the residual add
        tl.store(out_ptr + m[:, None] * stride_ob + n[None, :], y.to(dtype), mask=tile_ok)


# Batched row kernels: from BATCHED_MIN_BATCH to BATCHED_MAX_BATCH rows, a program reads its weight row
# once, as a row kernel does, and applies it to every row of the batch with CUDA cores, in registers (the
# row kernels read the weights once per row of the batch). Its weights are loaded before
# `_wait_for_inputs`, then the batch's rows (from L2: every program reads them). They need the layer's
# width in one load (at most BATCHED_MAX_COLUMNS); wider layers take the row kernels.
# A program's products are laid out flat, one tensor row per (batch row, weight row) pair: the batch's rows
# and the weight rows are both loaded as [pairs, width] tensors (each read several times, from L1), so that
# every operand has the same layout and the sums stay within a warp: products formed as [batch, weight
# rows, width] broadcasts needed layout conversions through shared memory. On an H200, end to end,
# alternating processes on one start (docs/results/h200_decode_batched_rows.json): tiny preset batch 4
# 47,262 and 47,006 tokens/s against 43,525 and 42,471 with the row kernels, small preset 11,811 against
# 9,803 (+19% and +19% on another start); batch 2 +6% to +9% for the small preset, within the spread (+7%,
# -3%) for the tiny one. Not from 5 rows: at 16, with up to 16 rows a program, the tiles were faster (tiny
# 155,889 against 171,620 tokens/s; small 8,299 against 43,429: its gate/up programs of [32, 1,024] pairs
# spill registers). The output head stays with its row kernel: batched, it took 121.6 us a call at small
# batch 4 against 60.0.
BATCHED_MIN_BATCH = 2
BATCHED_MAX_BATCH = 4
BATCHED_MAX_COLUMNS = 2048
# Weight rows a program (of gate and of up each), row pairs of one head a program of the attention input,
# and the warps, chosen so that a product's [pairs, width] tile holds this many values a thread: of 1/2/4
# rows x 32/64/128 values (kernels alone, docs/results/h200_decode_batched_rows.json), 1 x 128 ran the
# MLP half within 0.6 us a layer of the fastest at batch 2 and 4 of both presets (its costliest kernel).
BATCHED_ROWS = 1
BATCHED_PAIRS = 1
BATCHED_VALUES_PER_THREAD = 128


@triton.jit
def _pairs(BB: tl.constexpr, ROWS: tl.constexpr):
    """A program's (batch row, weight row) pairs, flat: [BB * ROWS] batch rows and weight rows (0 to ROWS)."""
    i = tl.arange(0, BB * ROWS)
    return i // ROWS, i % ROWS


@triton.jit
def _row_block_pairs(batch, rows, DIM, BB: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
    """This program's pairs of batch rows ``m`` and weight rows ``r`` (its block of ROWS weight rows), the
    columns ``c``, and which of each are in bounds."""
    m, rr = _pairs(BB, ROWS)
    r = tl.program_id(0) * ROWS + rr
    c = tl.arange(0, COLUMNS)
    return m, r, c, m < batch, r < rows, c < DIM


@triton.jit
def _pair_weights(w_ptr, w_rows, w_rows_ok, c, c_ok, DIM):
    """[pairs, width]: each pair's weight row (``w_rows``)."""
    return tl.load(w_ptr + w_rows[:, None] * DIM + c[None, :], mask=w_rows_ok[:, None] & c_ok[None, :], other=0.0)


@triton.jit
def _pair_gain(norm_ptr, pairs, c, c_ok):
    """[pairs, width]: the norm's gain, the same row for each of ``pairs`` (loaded before the wait). Loaded
    in the pairs' shape (the mask too), so that it has the layout of the rows it multiplies."""
    return tl.load(norm_ptr + c[None, :] + 0 * pairs[:, None], mask=c_ok[None, :] & (pairs[:, None] >= 0), other=0.0)


@triton.jit
def _gained_pair_rows(x_ptr, gain, m, m_ok, c, c_ok, stride_xb):
    """[pairs, width] fp32: each pair's batch row times the norm's gain, and [pairs] the row's sum of squares
    (the norm's statistic, applied after the products as in the row kernels)."""
    x = _pair_rows(x_ptr, m, m_ok, c, c_ok, stride_xb)
    return x * gain.to(tl.float32), tl.sum(x * x, axis=1)


@triton.jit
def _pair_rows(x_ptr, m, m_ok, c, c_ok, stride_xb):
    """[pairs, width] fp32: each pair's batch row."""
    ok = m_ok[:, None] & c_ok[None, :]
    return tl.load(x_ptr + m[:, None] * stride_xb + c[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _batched_norm_qkv_rope(
    x_ptr, norm_ptr, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, cos_ptr, sin_ptr, pos_ptr,
    q_ptr, kc_ptr, vc_ptr,
    stride_xb, stride_qb, stride_qh,
    stride_kcb, stride_kch, stride_kcs, stride_vcb, stride_vch, stride_vcs, stride_rope,
    batch, eps,
    DIM: tl.constexpr, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, HAS_BIAS: tl.constexpr,
    PAIRS_PER_BLOCK: tl.constexpr, BB: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (head block): _norm_qkv_rope's row pairs of one head for every row of the batch.
    _let_next_kernel_start(PDL)
    head, first_pair = _head_block(HALF, PAIRS_PER_BLOCK)
    m, jj = _pairs(BB, PAIRS_PER_BLOCK)
    j = first_pair + jj  # pair within the head
    c = tl.arange(0, COLUMNS)
    j_ok, m_ok, c_ok = j < HALF, m < batch, c < DIM
    w_ptr, bias_ptr, row = _head_weights(head, wq_ptr, wk_ptr, wv_ptr, bq_ptr, bk_ptr, bv_ptr, HEADS, KV_HEADS, HALF)
    bias_low, bias_high = _qkv_biases(j, j_ok, bias_ptr, row, HALF, HAS_BIAS)
    gain = _pair_gain(norm_ptr, m, c, c_ok)
    w_low = _pair_weights(w_ptr, row + j, j_ok, c, c_ok, DIM)
    w_high = _pair_weights(w_ptr, row + HALF + j, j_ok, c, c_ok, DIM)
    _wait_for_inputs(PDL)
    pos, cos, sin = _rope_angles(j, j_ok, cos_ptr, sin_ptr, pos_ptr, stride_rope)
    gx, squares = _gained_pair_rows(x_ptr, gain, m, m_ok, c, c_ok, stride_xb)
    inv_rms = 1.0 / tl.sqrt(squares / DIM + eps)
    low = tl.sum(w_low.to(tl.float32) * gx, axis=1) * inv_rms + bias_low
    high = tl.sum(w_high.to(tl.float32) * gx, axis=1) * inv_rms + bias_high
    dtype = x_ptr.dtype.element_ty
    low, high = low.to(dtype).to(tl.float32), high.to(dtype).to(tl.float32)  # the projection's output
    if head < HEADS + KV_HEADS:  # q and k turn by their position: x * cos + rotate_half(x) * sin
        low, high = low * cos - high * sin, high * cos + low * sin
    ok = m_ok & j_ok
    if head < HEADS:
        at = q_ptr + m * stride_qb + head * stride_qh + j
        tl.store(at, low.to(q_ptr.dtype.element_ty), mask=ok)
        tl.store(at + HALF, high.to(q_ptr.dtype.element_ty), mask=ok)
    elif head < HEADS + KV_HEADS:
        at = kc_ptr + m * stride_kcb + (head - HEADS) * stride_kch + pos * stride_kcs + j
        tl.store(at, low.to(kc_ptr.dtype.element_ty), mask=ok)
        tl.store(at + HALF, high.to(kc_ptr.dtype.element_ty), mask=ok)
    else:
        at = vc_ptr + m * stride_vcb + (head - HEADS - KV_HEADS) * stride_vch + pos * stride_vcs + j
        tl.store(at, low.to(vc_ptr.dtype.element_ty), mask=ok)
        tl.store(at + HALF, high.to(vc_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _batched_norm_gate_up(
    x_ptr, norm_ptr, wg_ptr, wu_ptr, h_ptr,
    stride_xb, stride_hb,
    batch, rows, eps,
    DIM: tl.constexpr, ROWS: tl.constexpr, BB: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (row block): rows of silu(gate) * up applied to RMSNorm of every row of the batch.
    _let_next_kernel_start(PDL)
    m, r, c, m_ok, r_ok, c_ok = _row_block_pairs(batch, rows, DIM, BB, ROWS, COLUMNS)
    gain = _pair_gain(norm_ptr, m, c, c_ok)
    w_gate = _pair_weights(wg_ptr, r, r_ok, c, c_ok, DIM)
    w_up = _pair_weights(wu_ptr, r, r_ok, c, c_ok, DIM)
    _wait_for_inputs(PDL)
    gx, squares = _gained_pair_rows(x_ptr, gain, m, m_ok, c, c_ok, stride_xb)
    inv_rms = 1.0 / tl.sqrt(squares / DIM + eps)
    dtype = h_ptr.dtype.element_ty
    gate = (tl.sum(w_gate.to(tl.float32) * gx, axis=1) * inv_rms).to(dtype).to(tl.float32)  # rounded as the
    up = (tl.sum(w_up.to(tl.float32) * gx, axis=1) * inv_rms).to(dtype).to(tl.float32)  # modules round them
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(h_ptr + m * stride_hb + r, (silu * up).to(dtype), mask=m_ok & r_ok)


@triton.jit
def _batched_linear_residual(
    h_ptr, w_ptr, x_ptr, out_ptr,
    stride_hb, stride_xb, stride_ob,
    batch, rows,
    DIM: tl.constexpr, ROWS: tl.constexpr, BB: tl.constexpr, COLUMNS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # Program (row block): x + rows of h W^T for every row of the batch. The residual is loaded in the same
    # [pairs, width] layout as h (its first column only) and summed out with the product.
    _let_next_kernel_start(PDL)
    m, r, c, m_ok, r_ok, c_ok = _row_block_pairs(batch, rows, DIM, BB, ROWS, COLUMNS)
    w = _pair_weights(w_ptr, r, r_ok, c, c_ok, DIM)
    _wait_for_inputs(PDL)
    ok = m_ok & r_ok
    first = ok[:, None] & (c[None, :] == 0)
    x = tl.sum(tl.load(x_ptr + m[:, None] * stride_xb + r[:, None] + 0 * c[None, :], mask=first, other=0.0), axis=1)
    acc = tl.sum(_pair_rows(h_ptr, m, m_ok, c, c_ok, stride_hb) * w.to(tl.float32), axis=1)
    dtype = out_ptr.dtype.element_ty
    y = x.to(tl.float32) + acc.to(dtype).to(tl.float32)  # the product rounded as the module rounds it, then the add
    tl.store(out_ptr + m * stride_ob + r, y.to(dtype), mask=ok)


def _batched(batch: int, *widths: int) -> bool:
    """Whether ``batch`` rows of layers ``widths`` deep go to the batched row kernels."""
    return BATCHED_MIN_BATCH <= batch <= BATCHED_MAX_BATCH and max(widths) <= BATCHED_MAX_COLUMNS


def _batched_shape(batch: int, rows: int, dim: int) -> dict:
    """A batched row kernel's batch block, width and warps for ``rows`` weight rows a program."""
    block, columns = triton.next_power_of_2(batch), triton.next_power_of_2(dim)
    warps = block * rows * columns // (32 * BATCHED_VALUES_PER_THREAD)
    return {"BB": block, "COLUMNS": columns, "num_warps": min(8, max(1, warps))}


def _tiled(batch: int) -> bool:
    """Whether ``batch`` rows go to the tile kernels (more than TILE_ROWS go back to the row kernels)."""
    return TILE_MIN_BATCH <= batch <= TILE_ROWS


def _split_buffers(
    x: torch.Tensor, tiles: int, tile: dict, most: int, dim: int, size: int
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Split-K's count for a launch of ``tiles`` tiles of depth ``dim`` (up to ``most``, at least one BK
    step each; one below SPLIT_MIN_DEPTH), its partial sums' buffer (``size`` fp32 values a program) and the
    tiles' arrival counts, on x's device.

    The counts are zeroed once per device and left zeroed by every launch, so a launch costs no memset
    (inside a CUDA graph, one more node); they serve launches in stream order, one at a time: two decoding
    threads on one GPU at once would share them. Made while a CUDA graph is being captured they would live
    in the graph's memory, so a launch then runs unsplit.
    """
    device, splits = x.device, min(most, triton.cdiv(dim, tile["BK"]))
    if dim < SPLIT_MIN_DEPTH or splits <= 1 or tiles > SPLIT_LOCKS:
        return 1, x, x  # unread
    locks = _locks.get(device)
    if locks is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return 1, x, x
        locks = _locks[device] = torch.zeros(SPLIT_LOCKS, dtype=torch.int32, device=device)
    return splits, torch.empty(tiles * splits * size, dtype=torch.float32, device=device), locks


def _pair_size(tile: dict) -> int:
    """fp32 values of one program's partials in :func:`_gather_pair`: two [BM, BN] products and [BM]."""
    return 2 * tile["BM"] * tile["BN"] + tile["BM"]


def _tile_shape(batch: int, dtype: torch.dtype, dim: int) -> dict:
    """Tile sizes and dot precision (see :func:`_dot_precision`) for ``batch`` rows and a depth of ``dim``."""
    rows = max(16, triton.next_power_of_2(batch))  # tl.dot takes 16 rows at least
    # The depths are for 16-bit weights: fp32 tiles twice as deep overran an H200's shared memory at 64 rows.
    depth = (SPLIT_DEPTH if dim >= SPLIT_MIN_DEPTH else TILE_DEPTH) * 2 // dtype.itemsize
    return {"BM": rows, "BN": TILE_COLUMNS, "BK": depth, **_dot_precision(dtype), "num_warps": TILE_WARPS}


def _gate_up_shape(batch: int, dtype: torch.dtype, dim: int) -> dict:
    """:func:`_tile_shape` for gate/up: ``GATE_UP_COLUMNS`` wide for 16 rows stepping through a deep row."""
    tile = _tile_shape(batch, dtype, dim)
    return {**tile, "BN": GATE_UP_COLUMNS} if dim >= SPLIT_MIN_DEPTH and tile["BM"] == 16 else tile


def linear_residual(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x + h W^T`` in one kernel: x [B, N], h [B, K], weight [N, K] contiguous -> [B, N] in x's dtype.

    A bias-free projection onto the residual stream (a block's output projection or MLP down projection)
    of a decode step. From BATCHED_MIN_BATCH to BATCHED_MAX_BATCH rows, batched row kernels (a weight row
    read once for the batch); from TILE_MIN_BATCH to TILE_ROWS, tensor-core tiles over the whole batch;
    otherwise one program per weight row and batch row.
    """
    batch, rows = x.shape
    dim = h.shape[1]
    out = torch.empty_like(x)
    if _batched(batch, dim):
        _batched_linear_residual[(triton.cdiv(rows, BATCHED_ROWS),)](
            h, weight, x, out, h.stride(0), x.stride(0), out.stride(0), batch, rows, DIM=dim, ROWS=BATCHED_ROWS,
            **_batched_shape(batch, BATCHED_ROWS, dim), **_launch(x.device, batch),
        )  # fmt: skip
        return out
    if _tiled(batch):
        tiles, tile = triton.cdiv(rows, TILE_COLUMNS), _tile_shape(batch, weight.dtype, dim)
        splits, parts, locks = _split_buffers(x, tiles, tile, LINEAR_SPLITS, dim, tile["BM"] * TILE_COLUMNS)
        _tile_linear_residual[(tiles, splits)](
            h, weight, x, out, parts, locks, h.stride(0), x.stride(0), out.stride(0), batch, rows, dim,
            SPLITS=splits, **tile, **_tile_launch(x.device, batch),
        )  # fmt: skip
        return out
    _down_residual[(triton.cdiv(rows, DOWN_ROWS), batch)](
        h, weight, x, out, h.stride(0), x.stride(0), out.stride(0), rows, DIM=dim,
        ROWS=DOWN_ROWS, COLUMNS=min(triton.next_power_of_2(dim), DOWN_COLUMNS), num_warps=DOWN_WARPS,
        **_launch(x.device, batch),
    )  # fmt: skip
    return out


def swiglu_residual(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """``x + down(silu(gate(n)) * up(n))`` with ``n = RMSNorm(x)``: a block's MLP half in two kernels.

    x [B, D] the residual stream, weights (gate and up [F, D], down [D, F], contiguous) -> [B, D]. The first
    kernel does the norm (gathered in the same pass as the products, as in :func:`norm_qkv_rope`), both
    projections and the SwiGLU product; the second the down projection and the residual add
    (:func:`linear_residual`). Batched row kernels for BATCHED_MIN_BATCH to BATCHED_MAX_BATCH rows,
    tensor-core tiles for TILE_MIN_BATCH to TILE_ROWS, row kernels otherwise.
    """
    batch, dim = x.shape
    w_gate, w_up, w_down = weights
    hidden = w_gate.shape[0]
    h = torch.empty(batch, hidden, dtype=x.dtype, device=x.device)
    if _batched(batch, dim):
        _batched_norm_gate_up[(triton.cdiv(hidden, BATCHED_ROWS),)](
            x, norm_weight, w_gate, w_up, h, x.stride(0), h.stride(0), batch, hidden, eps, DIM=dim,
            ROWS=BATCHED_ROWS, **_batched_shape(batch, BATCHED_ROWS, dim), **_launch(x.device, batch),
        )  # fmt: skip
    elif _tiled(batch):
        tile = {**_gate_up_shape(batch, w_gate.dtype, dim), **_tile_launch(x.device, batch)}
        tiles = triton.cdiv(hidden, tile["BN"])
        most = GATE_UP_SPLITS if tile["BM"] == 16 else 1
        splits, parts, locks = _split_buffers(x, tiles, tile, most, dim, _pair_size(tile))
        _tile_norm_gate_up[(tiles, splits)](
            x, norm_weight, w_gate, w_up, h, parts, locks, x.stride(0), h.stride(0), batch, hidden, dim, eps,
            SPLITS=splits, **tile,
        )  # fmt: skip
    else:
        _norm_gate_up[(triton.cdiv(hidden, MLP_ROWS), batch)](
            x, norm_weight, w_gate, w_up, h, x.stride(0), h.stride(0), hidden, eps, DIM=dim,
            ROWS=MLP_ROWS, COLUMNS=min(triton.next_power_of_2(dim), MAX_COLUMNS), num_warps=MLP_WARPS,
            **_launch(x.device, batch),
        )  # fmt: skip
    return linear_residual(x, h, w_down)
