"""Top-p sampling without a sort: one Triton program per row finds the rule's boundary and runs the race.

Tried in muomni (4d3d6b1, as muomni/inference/triton_top_p.py, called from sampling.sample on CUDA) and
taken out again: on an H200 it took 179 us a compiled choice at batch 1 against 75 us for the sort it
replaced (docs/BENCHMARKS.md, "Sampling"). Kept here as it ran; its constant came from muomni.models.decode_ops
then, and is written out below.

:func:`muomni.inference.sampling._top_p` sorts each row of the vocabulary to find the tokens that top-p
keeps. On an H200 that took about 70 us a step at 32,000 tokens, more than a whole tiny-preset decode step
(docs/BENCHMARKS.md, "Sampling"). The rule needs no order, only the boundary: the smallest probability
``w`` whose tokens and every less likely one hold more than ``1 - p`` of the mass. Every token above ``w`` is
kept, every token below it dropped, and of the tokens equal to ``w`` the lower ids are kept, as many as
the rule lets (the order a stable sort gives them). Here each program holds its row in registers and finds
``w`` by bisection over the bit patterns of the row's ``exp(x - max)`` (non-negative floats order as their
bits do): 30 sums over the row, in float64. Then it runs the race of :func:`~muomni.inference.sampling.sample`
(argmax of ``x - log E``) over the kept tokens and writes the token. The tokens kept are those of the
sorting rule computed exactly on the same probabilities; the tests hold the two to the same tokens.
"""

# No ``from __future__ import annotations``: Triton 3.1's interpreter needs real constexpr annotations
# (see muomni.models.triton_decode).
import torch
import triton
import triton.language as tl

MAX_VOCAB = 65536

# exp(x - max) is at most 1.0, whose bit pattern is 0x3F800000 < 2**30: 30 halvings of [0, 0x3F800000]
# leave one bit pattern.
BISECTIONS = 30


@triton.jit
def _top_p_race_kernel(
    x_ptr,
    noise_ptr,
    out_ptr,
    n_cols,
    x_row_stride,
    noise_row_stride,
    drop_fraction,
    BLOCK: tl.constexpr,
    BISECT: tl.constexpr,
):
    """One row: the token of argmax(x - log E) among the tokens top-p keeps (``drop_fraction`` = 1 - p)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    inside = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=inside, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))  # in [0, 1]; 0 where x is -inf (filtered tokens, padding)
    bits = e.to(tl.int32, bitcast=True)
    budget = drop_fraction * tl.sum(e.to(tl.float64), axis=0)  # the most mass top-p may drop
    # The smallest bit pattern t whose tokens at or below it hold more than the budget: the boundary's.
    lo = tl.full((), 0, tl.int32)
    hi = tl.full((), 0x3F800000, tl.int32)  # 1.0: every token is at or below it, and all hold more than the budget
    for _ in range(BISECT):
        mid = (lo + hi) // 2
        held = tl.sum(tl.where(bits <= mid, e, 0.0).to(tl.float64), axis=0)
        above = held > budget
        hi = tl.where(above, mid, hi)
        lo = tl.where(above, lo, mid + 1)
    boundary = hi
    value = boundary.to(tl.float32, bitcast=True).to(tl.float64)
    below = tl.sum(tl.where(bits < boundary, e, 0.0).to(tl.float64), axis=0)
    # Of the tokens equal to the boundary, one is dropped when it, the equal ones of higher id and every
    # token below hold no more than the budget (the sorting rule's order among equals is by id).
    ties = (bits == boundary) & inside
    ties_from_here = tl.sum(ties.to(tl.int32), axis=0) - tl.cumsum(ties.to(tl.int32), axis=0) + 1
    keep = (bits > boundary) | (ties & (below + ties_from_here.to(tl.float64) * value > budget))
    keep = keep | (cols == tl.argmax(e, axis=0, tie_break_left=True))  # the most likely token always stays
    noise = tl.load(noise_ptr + row * noise_row_stride + cols, mask=inside, other=1.0)
    score = tl.where(keep & inside, x - tl.log(noise), -float("inf"))
    tl.store(out_ptr + row, tl.argmax(score, axis=0, tie_break_left=True).to(tl.int64))


def top_p_race(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    """x [B, V] scaled logits (filtered ones -inf), noise [B, V] Exp(1) -> the sampled token of each row [B].

    The same tokens as ``argmax(_top_p(x, p) - log(noise))`` (see the module docstring); V at most
    ``MAX_VOCAB``.
    """
    batch, vocab = x.shape
    if vocab > MAX_VOCAB:
        raise ValueError(f"top_p_race holds at most {MAX_VOCAB} tokens a row, not {vocab}")
    if x.stride(1) != 1 or noise.stride(1) != 1:
        x, noise = x.contiguous(), noise.contiguous()
    out = torch.empty(batch, dtype=torch.int64, device=x.device)
    block = triton.next_power_of_2(vocab)
    warps = min(max(block // 1024, 4), 32)  # 32 to 64 values a thread in registers
    _top_p_race_kernel[(batch,)](
        x, noise, out, vocab, x.stride(0), noise.stride(0), 1.0 - p, BLOCK=block, BISECT=BISECTIONS, num_warps=warps
    )
    return out


__all__ = ["MAX_VOCAB", "top_p_race"]
