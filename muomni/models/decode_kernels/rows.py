"""The row kernels of a decode step: each program reads a few weight rows and applies them to one row of the
batch, for batch 1 (and wide layers of small batches): the attention input (norm, q/k/v, RoPE, cache
write), the output head after the final norm, and the SwiGLU MLP in two halves. Also the q/k/v head
helpers the tile and batched kernels share. Launch choices: :mod:`muomni.models.triton_decode`.
"""

# No ``from __future__ import annotations`` in the kernel modules: Triton 3.1 (torch 2.5's) runs kernels in
# its interpreter with their constexpr parameters as plain ints when the annotations are strings, and
# tl.arange refuses them.
import triton
import triton.language as tl

from muomni.models.decode_kernels.pdl import _let_next_kernel_start, _wait_for_inputs


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
