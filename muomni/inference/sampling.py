"""Choosing the next token from logits: greedy, temperature, top-k, top-p, all on the device.

Two exact ways to draw a token, neither with ``torch.multinomial`` (no host sync: the step compiles into
one graph), chosen by the device through the noise :func:`draw_noise` gives:

- **On a GPU, the exponential race**, as gpt-fast does: the argmax of ``p_i / E_i`` with ``E_i ~ Exp(1)``
  picks token ``i`` with probability ``p_i``. It runs in log space, as the argmax of
  ``logits / T - log E_i`` (``p_i`` is ``exp(logits_i / T)`` over a sum every token shares), without the
  softmax's passes over the vocabulary: on an H200, 6.4 against 12.6 us a compiled choice at batch 1.
- **On a CPU, the inverse of the distribution function**: one uniform ``u`` a row, and the first token
  whose running sum of ``exp(logits / T)`` exceeds ``u`` times the row's total. The race needs an
  exponential a token, and torch draws those on a CPU one at a time in double precision: 0.71 ms a row of
  32,000 on a 2-core Xeon, 42% of the tiny preset's whole compiled greedy step, where the running sum
  takes 0.06 ms (docs/BENCHMARKS.md, "Sampling on a CPU").

The noise is drawn outside the compiled step from a seeded ``torch.Generator`` (compiled graphs cannot
take a generator), which also makes eager and compiled decoding draw the very same samples for the same
seed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from muomni.errors import InputError
from muomni.models.decode_ops import top_p_kernel_ready, top_p_race


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` are off."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p"):  # from Python, "0.8" failed in a comparison with a TypeError
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(f"{name} must be a number, not {type(value).__name__} {value!r}")
        if not self.temperature >= 0.0:  # also rejects NaN
            raise InputError(f"temperature must be 0 (greedy) or positive, not {self.temperature}")
        if math.isinf(self.temperature):  # it divides the logits: inf would sample every token alike
            raise InputError(f"temperature must be finite, not {self.temperature}: 0 (greedy) or a number such as 0.8")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise InputError(f"top_k must be a whole number of tokens (0 = off), not {self.top_k!r}")
        if self.top_k < 0:
            raise InputError(f"top_k must be 0 (off) or a positive number of tokens, not {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1] (1 = off), not {self.top_p}")

    @property
    def greedy(self) -> bool:
        """Temperature 0, or one so small that fp32 holds it only as 0 or a subnormal: its limit, greedy."""
        return self.temperature < torch.finfo(torch.float32).tiny


# The seeds torch.Generator.manual_seed takes; it counts a negative one back from 2**64 (-1 is 2**64 - 1).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def check_seed(seed: int | None) -> None:
    """Reject a seed that ``manual_seed`` would refuse with a ValueError (or, not an int, a TypeError)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise InputError(f"seed must be an int, not {type(seed).__name__} {seed!r}")
    if seed is not None and not SEED_MIN <= seed <= SEED_MAX:
        raise InputError(f"seed must be in [-2**63, 2**64 - 1], not {seed}")


def draw_noise(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """The noise :func:`sample` takes for logits of ``shape`` [..., B, V] on ``device``: one uniform a row
    on a CPU (:func:`row_uniforms`), an exponential a token elsewhere (:func:`race_noise`)."""
    draw = row_uniforms if _uniform_a_row(device) else race_noise
    return draw(shape, device, generator)


def blank_noise(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Noise of :func:`draw_noise`'s shape and dtype, drawn from no generator: for running a compiled step
    once before a generation (compiling it then), without moving the seeded generator on."""
    if _uniform_a_row(device):
        return torch.full((*shape[:-1], 1), 0.5, dtype=torch.float64, device=device)
    return torch.ones(shape, dtype=torch.float32, device=device)


def _uniform_a_row(device: torch.device) -> bool:
    """Whether sampling on ``device`` draws a uniform a row (a CPU) rather than an exponential a token."""
    return torch.device(device).type == "cpu"


def race_noise(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """Exp(1) noise [..., B, V] in fp32 for the race; clamped away from 0 so ``log E`` stays finite."""
    noise = torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    return noise.clamp_min_(torch.finfo(torch.float32).tiny)


def row_uniforms(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform in [0, 1) a row, [..., B, 1], in float64 for :func:`_inverse_cdf`.

    float64, because fp32's uniforms are multiples of 2**-24 (6e-8), coarser than the probability of many
    tokens of a peaked row: on that grid such a token would be drawn with probability 0 or 2**-24, not its own.
    """
    return torch.rand((*shape[:-1], 1), dtype=torch.float64, device=device, generator=generator)


def _is_row_uniform(noise: torch.Tensor) -> bool:
    """Whether ``noise`` came from :func:`row_uniforms` (float64) rather than :func:`race_noise` (fp32)."""
    return noise.dtype == torch.float64


def _inverse_cdf(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token [B] at ``uniform`` [B, 1] of the distribution ``softmax(logits)`` [B, V] (filtered tokens -inf).

    The weights are ``exp(logits)``, each in fp32 as the race's are, summed in float64: in fp32, 1 plus a
    token of 2e-9 is 1, and a row's unlikely tail would never be drawn. The chosen token is the first whose
    running sum exceeds ``uniform`` times the total; a filtered token adds nothing and is never first. As
    ``uniform`` < 1, the product rounds below the total (even the largest double below 1 times x rounds
    below x), so some token with weight always exceeds it.
    """
    cdf = logits.exp().double().cumsum(dim=-1)  # [B, V]
    point = uniform * cdf[:, -1:]
    # Held inside the vocabulary for a row of NaN logits (from a model whose activations overflowed), whose
    # point is past every sum: a token of no meaning, as the race's argmax gives, but not an id out of range.
    return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp_max_(logits.shape[-1] - 1)


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row [B, V]; the rest become -inf."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (Holtzman et al. 2019).

    A token is dropped when the tokens ranked above it already hold ``p`` or more, so the most likely token
    always stays and a tiny ``p`` is greedy. The mass above a token is found as 1 minus the mass of it and
    every token below it, summed from the least likely up: summed from the top instead, fp32 rounds the
    mass near 1, and with a vocabulary of 32,000 and ``p`` = 0.999 the kept set was off by a few tokens in
    most rows. Of tokens tied at the boundary, the lower ids stay (as greedy picks the lowest id).
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # [B, V]
    probs = sorted_logits.softmax(dim=-1)
    drop_sorted = _mass_from_here_down(probs) <= 1.0 - p
    drop_sorted[:, 0] = False  # rounding must not drop the most likely token at a p near 0
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _top_p_by_bisection(logits: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`_top_p`'s kept set without a sort, for a compiled step off CUDA: the rule's boundary found by
    bisection, as :mod:`muomni.inference.triton_top_p`'s kernel finds it (see there).

    The boundary is the smallest probability whose tokens and every less likely one hold more than 1 - p
    of the mass; tokens above it stay, tokens below go, and of the tokens equal to it the lower ids stay
    as far as the rule allows. Each of the 30 steps is one masked sum over the row. Compiled on a 2-core
    CPU, 0.32 ms a row of 32,000 against 3.4 ms for the sort (eagerly the sort is as fast or faster: each
    step is then several operations of their own). Its sums hold only the tokens at or below each
    threshold, so its set is the float64 rule's where the sort's fp32 softmax can be a token off (at p =
    0.9999 over very peaked rows): eager and compiled sampling off CUDA can differ there.
    """
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()  # [B, V] in [0, 1]; the largest exactly 1
    bits = e.view(torch.int32)  # non-negative floats order as their bit patterns do
    budget = (1.0 - max(p, TOP_P_MIN)) * e.sum(dim=-1, keepdim=True)  # the most mass that may go
    lo = torch.zeros_like(budget, dtype=torch.int32)
    hi = torch.full_like(lo, ONE_BITS)  # 1.0: every token is at or below it, and all hold more
    for _ in range(TOP_P_BISECTIONS):
        mid = (lo + hi) // 2
        above = torch.where(bits <= mid, e, 0.0).sum(dim=-1, keepdim=True) > budget
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid + 1)
    ties = bits == hi
    below = torch.where(bits < hi, e, 0.0).sum(dim=-1, keepdim=True)
    ties_from_here = ties.sum(dim=-1, keepdim=True) - _running_sum(ties.int()) + 1  # equal ones of this id or higher
    keep = (bits > hi) | (ties & (below + ties_from_here * hi.view(torch.float32) > budget))
    return logits.masked_fill(~keep, float("-inf"))


def _top_p_by_sorted_values(logits: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`_top_p`'s kept set from the probabilities sorted without their ids, for eager sampling on a CPU.

    torch sorts a row of 32,000 with its ids in 2.6 ms on a 2-core Xeon; numpy sorts the values alone in
    0.09 ms, and the boundary needs no more. Summed in float64 from the least likely up, the tokens go
    while they and every less likely one hold at most 1 - p of the mass: the first ``n`` of the sorted
    row. Tokens above the ``n``-th value stay, those below it go, and of the tokens equal to it as many go
    as the ``n`` counts beyond the smaller ones, the highest ids first (as :func:`_top_p_by_bisection`).
    """
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp()  # [B, V] in [0, 1], as the bisection's
    ascending = torch.from_numpy(np.sort(e.numpy(), axis=-1))
    mass_up_to = ascending.double().cumsum(dim=-1)  # each sorted value with every smaller one
    budget = (1.0 - max(p, TOP_P_MIN)) * mass_up_to[:, -1:]  # below the total: the largest always stays
    n_gone = torch.searchsorted(mass_up_to, budget, right=True)  # [B, 1] how many sums are <= budget
    n_gone.clamp_max_(e.shape[-1] - 1)  # a NaN row's budget is past every sum (see _inverse_cdf)
    boundary = ascending.gather(-1, n_gone)  # the least likely value that stays
    keep = e >= boundary
    ties_gone = n_gone - torch.searchsorted(ascending, boundary)  # tokens equal to it that go as well
    if ties_gone.any():  # rare with real logits: a data-dependent branch, fine in an eager step
        ties = e == boundary
        higher_tied_ids = ties.sum(dim=-1, keepdim=True) - ties.int().cumsum(dim=-1)  # tied tokens after this id
        keep &= ~ties | (higher_tied_ids >= ties_gone)
    return logits.masked_fill(~keep, float("-inf"))


def _top_p_rule(logits: torch.Tensor) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The top-p filter for ``logits`` [B, V] where no kernel runs: in a compiled step the bisection (a
    sort compiles slowly), eager on a CPU numpy's sort of the values, elsewhere torch's sort."""
    if torch.compiler.is_compiling():
        return _top_p_by_bisection
    return _top_p_by_sorted_values if logits.device.type == "cpu" else _top_p


# exp(x - max) is at most 1.0, whose bit pattern is 0x3F800000 < 2**30: 30 halvings of [0, 0x3F800000]
# leave one bit pattern.
ONE_BITS = 0x3F800000
TOP_P_BISECTIONS = 30
# The smallest p top-p's bisection takes. A smaller p keeps the most likely token alone, as this one does
# for any vocabulary under a million: the tokens above the second most likely hold at least 1 / vocab.
# At TOP_P_MIN the top token's margin over the budget stays far above fp32's rounding of the sums, which a
# p near 0 (1 - p rounding to 1.0) would not leave.
TOP_P_MIN = 1e-6
# The smallest temperature at which the race divides the logits as they are: logits / T overflows fp32 only
# past |logits| = T x 3.4e38, here 3.4e34, beyond any model's. Below it the largest logit is taken off first.
RACE_UNSHIFTED_MIN_T = 1e-4
# Values per block of the blockwise running sum (see :func:`_running_sum`).
SCAN_BLOCK = 256


def _mass_from_here_down(probs: torch.Tensor) -> torch.Tensor:
    """For probabilities [B, V] sorted from the most likely down, each one's sum with all those after it,
    summed from the least likely up."""
    return _running_sum(probs.flip(-1)).flip(-1)


def _running_sum(x: torch.Tensor) -> torch.Tensor:
    """``x.cumsum(dim=-1)`` of [B, V], in blocks of ``SCAN_BLOCK``: a running sum within each block plus the
    sum of the blocks before it. One running sum over a whole row of 32,000 did not compile for 4 to 64 rows
    on a GPU (torch 2.11's Inductor split the scan and failed to generate its kernel)."""
    batch, vocab = x.shape
    blocks = -(-vocab // SCAN_BLOCK)
    within = F.pad(x, (0, blocks * SCAN_BLOCK - vocab)).view(batch, blocks, SCAN_BLOCK).cumsum(dim=-1)
    totals = within[..., -1]  # [B, blocks]
    before = totals.cumsum(dim=-1) - totals  # the sum of the blocks before each
    return (within + before[..., None]).view(batch, -1)[:, :vocab]


# Logits per block of the two-step argmax of a compiled step (see :func:`argmax`).
ARGMAX_BLOCK = 256


def argmax(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(dim=-1)`` of [B, V]: the first index of each row's largest value.

    In a compiled step it is found in two steps, the largest value and its index in each block of
    ``ARGMAX_BLOCK`` values, then the first block holding the row's largest: Inductor gives a one-row
    argmax one program, which took 7 us over the 32,000 logits of an H200 decode step. The first largest
    value of the first block holding it is the row's first largest value, so ties go as in one argmax.
    """
    batch, vocab = values.shape
    if not torch.compiler.is_compiling() or vocab <= ARGMAX_BLOCK:
        return values.argmax(dim=-1)
    blocks = -(-vocab // ARGMAX_BLOCK)
    padded = F.pad(values, (0, blocks * ARGMAX_BLOCK - vocab), value=float("-inf"))  # never the largest
    best, where = padded.view(batch, blocks, ARGMAX_BLOCK).max(dim=-1)  # [B, blocks] each
    block = best.argmax(dim=-1, keepdim=True)  # [B, 1]
    return (block * ARGMAX_BLOCK + where.gather(1, block)).squeeze(1)


def sample(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None) -> torch.Tensor:
    """Next token ids [B] from ``logits`` [B, V]; ``noise`` from :func:`draw_noise` unless greedy: [B, 1]
    uniforms (float64) choose by :func:`_inverse_cdf`, [B, V] exponentials (fp32) by the race."""
    if params.greedy:
        return argmax(logits)
    if noise is None:
        raise ValueError("sampling with temperature > 0 needs noise from draw_noise")
    logits = logits.float()
    by_race = not _is_row_uniform(noise)
    if by_race and params.temperature >= RACE_UNSHIFTED_MIN_T:
        # The race's token, top-k's and top-p's sets do not change when every logit moves alike (top-p
        # takes the largest off for itself), so the race skips the shift below: one pass over the row less.
        logits = logits / params.temperature
    else:
        # The largest logit taken off first: logits / T overflowed to inf at a T of 1e-38, the softmax then
        # gave NaN and the argmax token 0. After it every scaled logit is <= 0, the largest exactly 0, which
        # the inverse CDF's exp needs too.
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / params.temperature
    if params.top_k > 0:
        logits = _top_k(logits, params.top_k)
    if params.top_p < 1.0:
        if by_race and top_p_kernel_ready(logits):  # the same tokens, without the sort (see triton_top_p)
            return top_p_race(logits, noise, params.top_p)
        logits = _top_p_rule(logits)(logits, params.top_p)
    if not by_race:
        return _inverse_cdf(logits, noise)
    # The race p / E in log space; filtered tokens are -inf and never win.
    return argmax(logits - noise.log())
