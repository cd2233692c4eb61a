"""The batched row kernels of a decode step (``BATCHED_MIN_BATCH`` to ``BATCHED_MAX_BATCH`` rows): a program
reads its weight rows once, as a row kernel does, and applies them to every row of the batch on CUDA
cores, in registers, its products laid out flat as (batch row, weight row) pairs. Why, and what was
measured: :mod:`muomni.models.triton_decode`.
"""

# No ``from __future__ import annotations`` in the kernel modules: Triton 3.1 (torch 2.5's) runs kernels in
# its interpreter with their constexpr parameters as plain ints when the annotations are strings, and
# tl.arange refuses them.
import triton
import triton.language as tl

from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs
from muomni.models.decode_kernels.rows import _head_block, _head_weights, _qkv_biases, _rope_angles


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
