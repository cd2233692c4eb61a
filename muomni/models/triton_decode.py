"""The compiled decode step's fused Triton kernels on CUDA: which kernel serves which batch, its launch
parameters (each with what was measured to choose it), and the functions the custom ops of
:mod:`muomni.models.decode_ops` call. The kernels themselves are in :mod:`muomni.models.decode_kernels`;
split-KV attention's launch is in :mod:`muomni.models.split_kv`, and whether the kernels launch with
PDL (and how their ``tl.dot`` multiplies) in :mod:`muomni.models.decode_launch`.

Per layer: the attention input (norm, q/k/v, RoPE, cache write; :func:`norm_qkv_rope`), split-KV attention
(:func:`muomni.models.split_kv.split_kv_attention`), the output projection with its residual add
(:func:`linear_residual`) and the SwiGLU MLP with its norm and residual add (:func:`swiglu_residual`); then
the final norm and the output head (:func:`norm_linear`, for one row: from 2 rows the modules, whose
product reads the head once; see ``decode_ops.HEAD_FUSED_MAX_BATCH``). Batch 1 runs the row kernels, 2 to 4
rows the batched row kernels, 5 to 64 the tensor-core tiles, more the row kernels again (see
``BATCHED_MIN_BATCH`` and ``TILE_MIN_BATCH``).
"""

import torch
import triton

from muomni.models.decode_kernels.batched import (
    _batched_linear_residual,
    _batched_norm_gate_up,
    _batched_norm_qkv_rope,
)
from muomni.models.decode_kernels.rows import _down_residual, _norm_gate_up, _norm_linear, _norm_qkv_rope
from muomni.models.decode_kernels.tiles import _tile_linear_residual, _tile_norm_gate_up, _tile_norm_qkv_rope

# The functions only: the PDL settings (USE_PDL, PDL_MAX_BATCH) are decode_launch's and are set there.
from muomni.models.decode_launch import _dot_precision, _launch

# The tile kernels' first step out of their loop without PDL too (see decode_kernels.tiles._weights_t):
# for tests of that arithmetic where there is no PDL (Triton's interpreter has none).
EARLY_WITHOUT_PDL = False
# Tile kernels whose programs each take one step of their depth at most are compiled without the loop.
# On an H200, the tiny preset's output projection at batch 16 (x + h W^T, 256 x 256, 16 programs, PDL),
# 64 launches chained in a CUDA graph (docs/results/tile_latency_probe.py, h200_tile_latency_probe.json):
# 1.67 us a launch with the loop compiled in and running no iteration, 1.29 without it (0.83 for the batch-1
# row kernel; 0.64-0.72 for a boundary between two trivial kernels, grid_barrier_probe.py). End to end,
# tiny preset batch 16, alternating processes on one start (h200_decode_one_step_ab.jsonl): 193,552 and
# 193,664 tokens/s with it, 184,292 and 174,467 without (every tiny tile is one step); with it and 4 warps
# a tile, 188,203 and 188,626.
ONE_STEP_TILES = True


def _tile_launch(device: torch.device, batch: int, tile: dict, dim: int, splits: int) -> dict:
    """:func:`_launch` for a tile kernel of ``tile``'s shape over a depth of ``dim`` in ``splits``, with its
    ``EARLY`` and ``ONE_STEP`` constexprs (see :func:`muomni.models.decode_kernels.tiles._weights_t`)."""
    launch = _launch(device, batch)
    one_step = ONE_STEP_TILES and triton.cdiv(dim, splits) <= tile["BK"]  # as _depth_range shares the depth
    return {**launch, "EARLY": launch["PDL"] or EARLY_WITHOUT_PDL or one_step, "ONE_STEP": one_step}


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


# From this batch on, the attention input, output projection and MLP of a decode step run as tensor-core tiles: each
# program reads its weight columns once and applies them to every row of the batch (up to TILE_ROWS). The
# row kernels read the weights once per row: at batch 16 on an H200 they made small-preset decoding
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
# Since the tiles of one step compile without their loop (ONE_STEP_TILES), the steps of 16-row tiles (5 to
# 16 rows) are 256 deep: every split of the small preset is then one step (the attention input and output
# projection in 3 splits, gate/up in 3, down in 8). End to end, alternating processes on one start
# (docs/results/h200_decode_split_depth_ab.jsonl, h200_decode_split_depth_b64_ab.jsonl): small preset
# batch 16, 46,859 and 47,922 tokens/s 256 deep against 44,389 and 44,575 128 deep (42,692 and 43,515
# before ONE_STEP), and 48,038 and 48,088 against 44,333 and 44,309 on the next start; tiny batch 16 (only
# its down projection is split: 4 splits for 8) even, 183,013-198,058 either way. Tiles of more rows stay
# SPLIT_DEPTH_MORE_ROWS deep a step: at batch 64, 256 deep ran the small preset at 108,440 and 108,400
# against 113,548 and 113,549 (the tiny preset 413,646 and 416,092 against 429,516 and 417,151).
SPLIT_MIN_DEPTH = 768
SPLIT_DEPTH = 256
SPLIT_DEPTH_MORE_ROWS = 128
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
# 128-deep steps each then loaded half the depth early (of one 256-deep step each now, all of it), where
# one program loaded one step of six (the tiles of more rows were not measured split and are not).
# Without PDL, unsplit tiles had been 1 us a layer faster than 8 splits. End to end with PDL, small preset
# batch 16, alternating on one start (docs/results/h200_decode_gate_up_split_ab.json): 43,656 and 43,527
# tokens/s in 3 splits, 43,133 and 43,084 in 6, 42,856 and 42,816 unsplit.
GATE_UP_COLUMNS = 32
# Their warps: 4 ran even with 2, small preset batch 16 on an H200, alternating processes (2026-11-30,
# docs/results/decode_tile_regs_ab.py, h200_decode_gate_up_warps_ab.jsonl: 49,305 and 49,345 tokens/s
# against 49,302 and 49,290), and with 2 the kernel holds 134 registers a thread and spills none there.
GATE_UP_WARPS = 2
GATE_UP_SPLITS = 3
SPLIT_LOCKS = 4096  # tiles one launch may split; a wider launch runs unsplit
_locks: dict[torch.device, torch.Tensor] = {}


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
        tile = {**_tile_shape(batch, wq.dtype, dim), "BN": QKV_TILE_PAIRS}
        tiles = (heads + 2 * kv_heads) * triton.cdiv(half, QKV_TILE_PAIRS)
        splits, parts, locks = _split_buffers(x, tiles, tile, QKV_SPLITS, dim, _pair_size(tile))
        _tile_norm_qkv_rope[(tiles, splits)](
            *args[:14], parts, locks, *args[14:], batch, dim, eps, **shape, **tile, SPLITS=splits,
            **_tile_launch(x.device, batch, tile, dim, splits),
        )  # fmt: skip
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
    split_depth = SPLIT_DEPTH if rows == 16 else SPLIT_DEPTH_MORE_ROWS
    # The depths are for 16-bit weights: fp32 tiles twice as deep overran an H200's shared memory at 64 rows.
    depth = (split_depth if dim >= SPLIT_MIN_DEPTH else TILE_DEPTH) * 2 // dtype.itemsize
    return {"BM": rows, "BN": TILE_COLUMNS, "BK": depth, **_dot_precision(dtype), "num_warps": TILE_WARPS}


def _gate_up_shape(batch: int, dtype: torch.dtype, dim: int) -> dict:
    """:func:`_tile_shape` for gate/up: ``GATE_UP_COLUMNS`` wide for 16 rows stepping through a deep row."""
    tile = _tile_shape(batch, dtype, dim)
    wide = dim >= SPLIT_MIN_DEPTH and tile["BM"] == 16
    return {**tile, "BN": GATE_UP_COLUMNS, "num_warps": GATE_UP_WARPS} if wide else tile


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
            SPLITS=splits, **tile, **_tile_launch(x.device, batch, tile, dim, splits),
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
        tile = _gate_up_shape(batch, w_gate.dtype, dim)
        tiles = triton.cdiv(hidden, tile["BN"])
        most = GATE_UP_SPLITS if tile["BM"] == 16 else 1
        splits, parts, locks = _split_buffers(x, tiles, tile, most, dim, _pair_size(tile))
        _tile_norm_gate_up[(tiles, splits)](
            x, norm_weight, w_gate, w_up, h, parts, locks, x.stride(0), h.stride(0), batch, hidden, dim, eps,
            SPLITS=splits, **tile, **_tile_launch(x.device, batch, tile, dim, splits),
        )  # fmt: skip
    else:
        _norm_gate_up[(triton.cdiv(hidden, MLP_ROWS), batch)](
            x, norm_weight, w_gate, w_up, h, x.stride(0), h.stride(0), hidden, eps, DIM=dim,
            ROWS=MLP_ROWS, COLUMNS=min(triton.next_power_of_2(dim), MAX_COLUMNS), num_warps=MLP_WARPS,
            **_launch(x.device, batch),
        )  # fmt: skip
    return linear_residual(x, h, w_down)
