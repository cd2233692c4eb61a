"""Top-p sampling without a sort: one Triton program per row finds the rule's boundary and runs the race.

:func:`muomni.inference.sampling._top_p` sorts each row of the vocabulary to find the tokens that top-p
keeps: on an H200, 75 us a compiled choice at 32,000 tokens and batch 1 (134 us at 16 rows), more than a
whole tiny-preset decode step. The rule needs no order, only the boundary: the smallest probability ``w``
whose tokens and every less likely one hold more than ``1 - p`` of the mass. Every token above ``w`` is
kept, every token below it dropped, and of the tokens equal to ``w`` the lower ids are kept, as many as the
rule lets (the order a stable sort gives them). Here each program holds its row in registers and finds
``w`` by bisection over the bit patterns of the row's ``exp(x - max)`` (non-negative floats order as their
bits do): 30 sums over the row. Then it runs the race of :func:`~muomni.inference.sampling.sample` (argmax
of ``x - log E``) over the kept tokens and writes the token. The tests hold it to the sorting rule's
tokens, boundary and ties.

Measured on an H200 (docs/BENCHMARKS.md, "Sampling"): 40 us a choice at 1, 16 and 64 rows. A first version
took 179 us: its sums in float64 (4.2 us a bisection step, against 0.9 in fp32) and, whatever the row, the
running count of equal tokens and an argmax that kept the most likely token (about 30 us, by difference); here the count
runs only where several tokens equal the boundary, and p is kept at ``MIN_P`` or more instead.
"""

# No ``from __future__ import annotations``: Triton 3.1's interpreter needs real constexpr annotations
# (see muomni.models.triton_decode).
import torch
import triton
import triton.language as tl

from muomni.inference.sampling import TOP_P_BISECTIONS as BISECTIONS
from muomni.inference.sampling import TOP_P_MIN as MIN_P
from muomni.models.decode_ops import TOP_P_MAX_VOCAB as MAX_VOCAB


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
    x_row = x_ptr + row * x_row_stride + cols
    x = tl.load(x_row, mask=inside, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))  # in [0, 1], the largest exactly 1; 0 where x is -inf
    bits = e.to(tl.int32, bitcast=True)
    budget = drop_fraction * tl.sum(e, axis=0)  # the most mass top-p may drop
    # The smallest bit pattern t whose tokens at or below it hold more than the budget: the boundary's.
    # Each sum holds only tokens at or below t, small ones near the boundary, so fp32 keeps it exact
    # enough (as the sorting rule's sums from the least likely up do).
    lo = tl.full((), 0, tl.int32)
    hi = tl.full((), 0x3F800000, tl.int32)  # 1.0: every token is at or below it, and all hold more than the budget
    for _ in range(BISECT):
        mid = (lo + hi) // 2
        above = tl.sum(tl.where(bits <= mid, e, 0.0), axis=0) > budget
        hi = tl.where(above, mid, hi)
        lo = tl.where(above, lo, mid + 1)
    boundary = hi
    keep = bits >= boundary
    ties = (bits == boundary) & inside
    n_ties = tl.sum(ties.to(tl.int32), axis=0)
    if n_ties > 1:
        # Of the tokens equal to the boundary, one is dropped when it, the equal ones of higher id and every
        # token below hold no more than the budget (the sorting rule's order among equals is by id).
        value = boundary.to(tl.float32, bitcast=True)
        below = tl.sum(tl.where(bits < boundary, e, 0.0), axis=0)
        ties_from_here = n_ties - tl.cumsum(ties.to(tl.int32), axis=0) + 1
        keep = (bits > boundary) | (ties & (below + ties_from_here.to(tl.float32) * value > budget))
    noise = tl.load(noise_ptr + row * noise_row_stride + cols, mask=inside, other=1.0)
    x = tl.load(x_row, mask=inside, other=-float("inf")).to(tl.float32)  # again: registers are short
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
    drop = 1.0 - max(p, MIN_P)  # see sampling.TOP_P_MIN
    _top_p_race_kernel[(batch,)](
        x, noise, out, vocab, x.stride(0), noise.stride(0), drop, BLOCK=block, BISECT=BISECTIONS, num_warps=warps
    )
    return out


__all__ = ["MAX_VOCAB", "top_p_race"]
