"""Split-KV attention of one new token over the KV cache (flash-decoding, Dao et al. 2023): its two kernels.

At batch 1 a decode step has one query per head: the fused SDPA kernels spread such work over batch x
heads only (cuDNN took 10 us per layer on an H200), and Inductor's reduction over the cache slots ran in
one program per head (8 us per layer of the small preset, 14 us tuned). Here the cache slots are split
over many programs, each computing a partial softmax of its slots for all query heads of one key/value
head, and a second kernel merges the parts (from ``WHOLE_MIN_ROWS`` rows on, enough programs without
splits, one program walks a row's whole cache and no merge is needed). Slots masked out (padding, and
the slots beyond the position, not written yet) count for nothing, whatever they hold. The products run
on tensor cores in the cache's dtype (fp32 ones in full precision); scores, softmax and sums are fp32.
Launched by :func:`muomni.models.split_kv.split_kv_attention`.
"""

# No ``from __future__ import annotations`` in the kernel modules: Triton 3.1 (torch 2.5's) runs kernels in
# its interpreter with their constexpr parameters as plain ints when the annotations are strings, and
# tl.arange refuses them.
import triton
import triton.language as tl

from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs


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
