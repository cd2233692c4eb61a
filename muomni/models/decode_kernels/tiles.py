"""The tile kernels of a decode step (``TILE_MIN_BATCH`` to ``TILE_ROWS`` rows): each program reads its
weight columns once and applies them to every row of the batch on tensor cores, with split-K for deep
layers (the last program of a tile to arrive adds the partial sums in split order and runs the epilogue,
so it stays one kernel). Launch choices: :mod:`muomni.models.triton_decode`.
"""

# No ``from __future__ import annotations`` in the kernel modules: Triton 3.1 (torch 2.5's) runs kernels in
# its interpreter with their constexpr parameters as plain ints when the annotations are strings, and
# tl.arange refuses them.
import triton
import triton.language as tl

from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs
from muomni.models.decode_kernels.rows import _head_block, _head_weights, _qkv_biases, _rope_angles


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
# pipelined loop after it. Without PDL the first step stays in the loop, pipelined with the others. Where
# every program's share of the depth is one step at most (ONE_STEP, which implies EARLY), the loop is not
# compiled at all: its software pipeline's prologue and epilogue (predicated copies, waits and barriers)
# cost time even when the loop runs no iteration (see ONE_STEP_TILES in muomni.models.triton_decode).
@triton.jit
def _weights_t(w_ptr, rows, rows_ok, k, k_ok, dim):
    """[BK, BN]: columns ``k`` of the weight rows ``rows``, transposed (as the product takes them)."""
    return tl.load(w_ptr + rows[None, :] * dim + k[:, None], mask=k_ok[:, None] & rows_ok[None, :], other=0.0)


@triton.jit
def _batch_rows(x_ptr, m, m_ok, k, k_ok, stride_xb):
    """[BM, BK]: columns ``k`` of the batch's rows (rows past the batch are zeros)."""
    return tl.load(x_ptr + m[:, None] * stride_xb + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _gain(norm_ptr, k, k_ok):
    """[BK]: columns ``k`` of the norm's gain, fp32 (no kernel writes it: with EARLY, read before the wait)."""
    return tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)


@triton.jit
def _gained_rows(x_ptr, gain, m, m_ok, k, k_ok, stride_xb):
    """Columns ``k`` of the rows times the norm's ``gain`` there, and the rows' sums of squares over them
    (the norm's statistic), fp32: W (g * x) / rms(x), with 1 / rms(x) applied after the products, as in the
    row kernels."""
    x = _batch_rows(x_ptr, m, m_ok, k, k_ok, stride_xb).to(tl.float32)
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
    first step, its weights and the norm's gain loaded before `_wait_for_inputs`, otherwise nothing yet.
    Waits either way, and returns them with the depth where :func:`_normed_pair_steps` goes on."""
    a = tl.zeros([BM, BN], tl.float32)
    b = tl.zeros([BM, BN], tl.float32)
    squares = tl.zeros([BM], tl.float32)
    first = k_start
    if EARLY:
        k = k_start + tl.arange(0, BK)
        k_ok = k < k_end
        w_a = _weights_t(wa_ptr, rows_a, rows_ok, k, k_ok, dim)
        w_b = _weights_t(wb_ptr, rows_b, rows_ok, k, k_ok, dim)
        gain = _gain(norm_ptr, k, k_ok)
    _wait_for_inputs(PDL)
    if EARLY:
        gx, squares = _gained_rows(x_ptr, gain, m, m_ok, k, k_ok, stride_xb)
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
        gx, step_squares = _gained_rows(x_ptr, _gain(norm_ptr, k, k_ok), m, m_ok, k, k_ok, stride_xb)
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
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr, ONE_STEP: tl.constexpr,
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
    if not ONE_STEP:
        low, high, squares = _normed_pair_steps(
            low, high, squares, first, k_end, x_ptr, norm_ptr, w_ptr, w_ptr, row + j, row + HALF + j, j_ok, m, m_ok,
            dim, stride_xb, BK, PRECISION, UPCAST,
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


@triton.jit
def _tile_norm_gate_up(
    x_ptr, norm_ptr, wg_ptr, wu_ptr, h_ptr, part_ptr, lock_ptr,
    stride_xb, stride_hb,
    batch, rows, dim, eps,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLITS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr, ONE_STEP: tl.constexpr,
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
    if not ONE_STEP:
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
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr, ONE_STEP: tl.constexpr,
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
    if not ONE_STEP:
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
