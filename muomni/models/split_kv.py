"""Split-KV attention of one decode step on CUDA: the launch of its kernels (in
:mod:`muomni.models.decode_kernels.attention`), with its parameters and what was measured to choose them.
Called by the custom op :func:`muomni.models.decode_ops.split_kv_attention`; the decode step's other kernels
are launched by :mod:`muomni.models.triton_decode`, and whether with PDL is chosen in
:mod:`muomni.models.decode_launch`.
"""

import math

import torch
import triton

from muomni.models.decode_kernels.attention import _merge_splits, _partial_attention
from muomni.models.decode_launch import _dot_precision, _launch

# Split-KV attention: cache slots per program (one block of them each: shorter programs, more of them),
# the rows (batch x key/value heads) from which blocks are twice as long, and each program's warps. Chosen
# on an H200 with both kernels alone over 12 layers' caches in a CUDA graph, at position 272, among 16/32/64
# slots x 1/2/4 warps (docs/results/h200_attention_dot.json): 32 x 2 was the fastest or within 0.2 us for
# fewer than 64 rows (small preset batch 1: 4.2 us a call, tiny batch 1: 3.7, tiny batch 16: 4.8), 64 x 2
# from 64 rows on (small batch 16: 7.3, batch 64: 18.9). The broadcast-and-sum fp32 products these dots
# replaced took 6.2, 4.7, 5.9, 14.7 and 38.2 us. A merge in the last program of each row (arrival counts,
# as the split-K tiles of triton_decode use) instead of a second kernel took 5.8 us at small batch 1, on
# another start.
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
