"""Sampling: greedy, temperature, top-k, top-p, the exponential race, the inverse CDF, and option checks."""

from __future__ import annotations

import math

import pytest
import torch
from inference_helpers import tiny_model

from muomni.errors import InputError
from muomni.inference.generate import generate_tokens
from muomni.inference.sampling import (
    ARGMAX_BLOCK,
    SCAN_BLOCK,
    SamplingParams,
    _inverse_cdf,
    _mass_from_here_down,
    _top_p,
    _top_p_by_bisection,
    _top_p_by_sorted_values,
    argmax,
    draw_noise,
    race_noise,
    row_uniforms,
    sample,
)

PROMPTS = [[5, 6, 7, 8], [40, 41]]
CPU = torch.device("cpu")
# Both ways to draw a token: the race (an exponential a token, GPUs) and the inverse CDF (a uniform a row, CPUs).
BOTH_WAYS = pytest.mark.parametrize("draw", [race_noise, row_uniforms], ids=["race", "inverse_cdf"])


def test_a_cpu_draws_one_uniform_a_row_finer_than_fp32s_grid() -> None:
    uniforms = draw_noise((3, 400, 100), CPU, torch.Generator().manual_seed(0))
    assert uniforms.shape == (3, 400, 1) and uniforms.dtype == torch.float64
    # fp32's uniforms are all multiples of 2**-24, too coarse for tokens less likely than that.
    assert ((uniforms * 2**24).frac() != 0).float().mean() > 0.99
    assert race_noise((3, 2, 100), CPU, None).shape == (3, 2, 100)


@BOTH_WAYS
def test_both_ways_sample_the_softmax(draw) -> None:  # noqa: ANN001
    """Frequencies of many draws match softmax(logits / T): each way is exact sampling."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    params = SamplingParams(temperature=1.5)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    noise = draw((n, 5), CPU, gen)
    draws = sample(logits.expand(n, 5), params, noise)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert torch.allclose(freq, (logits[0] / 1.5).softmax(-1), atol=0.015)


@BOTH_WAYS
def test_top_k_and_top_p_keep_only_the_most_likely_tokens(draw) -> None:  # noqa: ANN001
    logits = torch.tensor([[3.0, 2.9, 2.8, -5.0, -5.0, 1.0]])
    gen = torch.Generator().manual_seed(1)
    noise = draw((5000, 6), CPU, gen)
    top2 = sample(logits.expand(5000, 6), SamplingParams(temperature=1.0, top_k=2), noise)
    assert set(top2.tolist()) == {0, 1}
    # the three leading tokens hold ~0.97 of the mass, so top_p=0.9 keeps exactly them
    nucleus = sample(logits.expand(5000, 6), SamplingParams(temperature=1.0, top_p=0.9), noise)
    assert set(nucleus.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("options", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_one_and_tiny_top_p_are_greedy(options: dict) -> None:
    model = tiny_model()
    greedy = generate_tokens(model, PROMPTS, 12, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 12, temperature=1.3, seed=5, **options) == greedy


def test_same_seed_same_sample_different_seed_different() -> None:
    model = tiny_model()
    a = generate_tokens(model, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    b = generate_tokens(model, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    c = generate_tokens(model, PROMPTS, 16, temperature=1.0, top_k=50, top_p=0.95, seed=124)
    assert a == b
    assert a != c
    assert a != generate_tokens(model, PROMPTS, 16, temperature=0.0)  # it did sample


def test_one_prompt_given_twice_in_a_batch_gets_two_samples() -> None:
    """The random draws are shared out across the batch's rows (as the README says): a prompt repeated in one
    batch is sampled once per row, and its seeded text belongs to the batch, not to the prompt alone."""
    model = tiny_model()
    twice = generate_tokens(model, [PROMPTS[0], PROMPTS[0]], 16, temperature=1.0, seed=3)
    assert twice[0] != twice[1]
    assert generate_tokens(model, [PROMPTS[0], PROMPTS[0]], 16, temperature=1.0, seed=3) == twice


def test_global_seed_is_used_without_a_seed() -> None:
    model = tiny_model()
    torch.manual_seed(7)
    a = generate_tokens(model, PROMPTS, 10, temperature=1.0)
    torch.manual_seed(7)
    assert generate_tokens(model, PROMPTS, 10, temperature=1.0) == a


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, "temperature must be 0 (greedy) or positive, not -1.0"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"top_p": 0.0}, "top_p must be in (0, 1] (1 = off), not 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1] (1 = off), not 1.5"),
        ({"top_k": -1}, "top_k must be 0 (off) or a positive number of tokens, not -1"),
    ],
)
def test_bad_sampling_options(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        SamplingParams(**options)


def test_compiled_two_step_argmax_equals_argmax() -> None:
    """The blocked argmax of a compiled step (Inductor on the CPU) against one eager argmax, ties included."""
    torch.manual_seed(0)
    vocab = 3 * ARGMAX_BLOCK + 17  # the last block padded
    values = torch.randn(6, vocab)
    values[1, [5, ARGMAX_BLOCK + 9, vocab - 1]] = 9.0  # ties across blocks: the first wins
    values[2, [ARGMAX_BLOCK + 3, ARGMAX_BLOCK + 4]] = 9.0  # a tie inside one block
    values[3, -1] = 9.0  # in the padded block
    values[4] = float("-inf")  # nothing larger than the padding: index 0, as argmax says
    values[5, :ARGMAX_BLOCK] = 9.0  # a whole block tied
    compiled = torch.compile(argmax, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(values), values.argmax(dim=-1))
    assert torch.equal(compiled(values[:, :ARGMAX_BLOCK]), values[:, :ARGMAX_BLOCK].argmax(dim=-1))


def _kept(logits: torch.Tensor) -> torch.Tensor:
    return logits > float("-inf")


# The two ways top-p finds its kept set off CUDA: the sort (eager) and the bisection (a compiled step).
TOP_P_RULES = pytest.mark.parametrize(
    "top_p", [_top_p, _top_p_by_bisection, _top_p_by_sorted_values], ids=["sort", "bisection", "sorted_values"]
)


@TOP_P_RULES
@pytest.mark.parametrize("p", [0.5, 0.75, 0.875])
def test_top_p_drops_a_token_once_the_tokens_above_it_hold_exactly_p(p: float, top_p) -> None:  # noqa: ANN001
    # Probabilities 1/2, 1/4, 1/8, 1/8 are exact in fp32: the set {1/2} reaches p = 0.5 and is kept alone.
    # The rule was "more than p", which kept one token more at each of these p. (At 0.875 the last two tie:
    # Hugging Face keeps the higher id, muomni the lower; the test below holds that choice.)
    transformers = pytest.importorskip("transformers")
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    reference = _kept(transformers.TopPLogitsWarper(p)(None, logits.clone()))
    n = {0.5: 1, 0.75: 2, 0.875: 3}[p]
    assert reference.sum() == n
    assert _kept(top_p(logits, p)).tolist() == [[i < n for i in range(4)]]


@TOP_P_RULES
@pytest.mark.parametrize("p", [0.9, 0.99, 0.999, 0.9999])
def test_top_p_keeps_the_set_of_the_exact_rule_at_a_large_vocabulary(p: float, top_p) -> None:  # noqa: ANN001
    """Against the rule computed in float64 and against Hugging Face's warper, on 16 rows of 32,000 logits
    (rows of random logits have no ties). Summed from the top in fp32, the kept count was off by up to 7."""
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(16, 32000, generator=torch.Generator().manual_seed(10)) * 2
    probs = logits.double().softmax(-1).sort(dim=-1, descending=True).values
    exact = ((probs.cumsum(-1) - probs) < p).sum(-1)  # tokens whose mass above them is below p
    assert torch.equal(_kept(top_p(logits, p)).sum(-1), exact)
    assert torch.equal(_kept(top_p(logits, p)), _kept(transformers.TopPLogitsWarper(p)(None, logits.clone())))


@pytest.mark.parametrize("vocab", [1, 7, SCAN_BLOCK, SCAN_BLOCK + 1, 3 * SCAN_BLOCK - 5, 32000])
def test_the_blockwise_sums_from_the_least_likely_up_are_the_running_sums(vocab: int) -> None:
    probs = torch.rand(3, vocab, generator=torch.Generator().manual_seed(vocab)).sort(-1, descending=True).values
    probs /= probs.sum(-1, keepdim=True)
    exact = probs.double().flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(_mass_from_here_down(probs).double(), exact, rtol=1e-6, atol=0)
    compiled = torch.compile(_mass_from_here_down, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(probs), _mass_from_here_down(probs))


def test_the_race_in_log_space_picks_the_token_of_the_race_of_probabilities() -> None:
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(3)) * 4
    noise = race_noise((64, 500), CPU, torch.Generator().manual_seed(4))
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.95)
    # The race as it ran before: the probabilities of the kept tokens over the noise.
    top_40 = logits.masked_fill(logits < logits.topk(40).values[:, -1:], float("-inf"))
    kept = _top_p((top_40 - logits.amax(-1, keepdim=True)) / 0.7, 0.95)
    assert torch.equal(sample(logits, params, noise), (kept.softmax(-1) / noise).argmax(-1))


def test_the_inverse_cdf_picks_the_token_of_the_float64_distribution_function() -> None:
    gen = torch.Generator().manual_seed(5)
    for scale in (0.1, 3.0, 12.0):  # flat to very peaked rows
        row = torch.randn(1, 32000, generator=gen) * scale
        row -= row.amax(-1, keepdim=True)
        uniforms = row_uniforms((2000, 32000), CPU, gen)
        exact = (row.double().softmax(-1).cumsum(-1) <= uniforms).sum(-1)  # tokens whose running sum is <= u
        assert torch.equal(_inverse_cdf(row.expand(2000, -1), uniforms), exact), scale


def test_the_inverse_cdf_draws_each_token_at_the_middle_of_its_share_even_far_down_the_tail() -> None:
    # One likely token and 31,999 of 2e-9 each: in an fp32 running sum 1 + 2e-9 is 1, so the tail (6.6e-5
    # of the mass) would never be drawn.
    row = torch.full((1, 32000), -20.0)
    row[0, 0] = 0.0
    cdf = row.double().exp().cumsum(-1)[0]
    cdf /= cdf[-1].clone()
    tokens = torch.tensor([0, 1, 2, 777, 31998, 31999])
    before = torch.where(tokens > 0, cdf[tokens - 1], 0.0)
    uniforms = ((before + cdf[tokens]) / 2)[:, None]
    assert _inverse_cdf(row.expand(len(tokens), -1), uniforms).tolist() == tokens.tolist()


def test_the_inverse_cdf_never_draws_a_filtered_token_even_at_the_ends_of_its_uniform() -> None:
    logits = torch.tensor([[float("-inf"), 0.0, -1.0, float("-inf")]]).expand(2, 4)
    # The largest uniform, 1 - 2**-53, times the total stays below the total: the last kept token, not the 4th.
    uniforms = torch.tensor([[0.0], [1.0 - 2.0**-53]], dtype=torch.float64)
    assert _inverse_cdf(logits, uniforms).tolist() == [1, 2]


@TOP_P_RULES
def test_top_p_keeps_the_lower_ids_of_tokens_tied_at_the_boundary(top_p) -> None:  # noqa: ANN001
    kept = _kept(top_p(torch.zeros(1, 6), 0.3))  # two of six equal tokens reach 0.3
    assert kept.nonzero()[:, 1].tolist() == [0, 1]


@pytest.mark.parametrize("vocab", [6, 300, 4096, 32000])
def test_the_bisection_and_the_sorted_values_keep_the_set_of_the_exact_rule(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    for scale in (0.01, 1.0, 10.0):
        logits = torch.randn(4, vocab, generator=gen) * scale
        probs = logits.double().softmax(-1).sort(dim=-1, descending=True).values
        for p in (1e-12, 1e-6, 0.3, 0.9, 0.9999):
            kept, by_sort = _kept(_top_p_by_bisection(logits, p)), _kept(_top_p(logits, p))
            exact = ((probs.cumsum(-1) - probs) < p).sum(-1)
            assert torch.equal(kept.sum(-1), exact), (scale, p)
            assert torch.equal(_kept(_top_p_by_sorted_values(logits, p)), kept), (scale, p)
            # The same tokens as the sort wherever the sort keeps as many as the float64 rule: at p = 0.9999
            # and scale 10 its fp32 softmax kept one token too few or too many in one row of four.
            same = by_sort.sum(-1) == exact
            assert torch.equal(kept[same], by_sort[same]), (scale, p)
    # A flat tail of 31,990 equal tokens under 10 likely ones: the boundary falls among thousands of ties
    # (the sort's fp32 sums kept one token too few at p = 0.85).
    flat = torch.full((1, 32000), math.log(1e-4))
    flat[0, :10] = 0.0
    probs = flat.double().softmax(-1).sort(dim=-1, descending=True).values
    for p in (0.5, 0.8, 0.85, 0.9, 0.95):
        exact = ((probs.cumsum(-1) - probs) < p).sum(-1)
        for rule in (_top_p_by_bisection, _top_p_by_sorted_values):
            assert torch.equal(_kept(rule(flat, p)).sum(-1), exact), (rule.__name__, p)
    # Ties: at the boundary (a few equal tokens reach p), among the most likely at a p near 0, and after top-k.
    ties = torch.tensor([[0.0, 0.0, 0.0, -1.0, -1.0, -1.0, -1.0, -3.0]])
    for p in (1e-12, 0.2, 0.5, 0.7, 0.8, 0.95):
        assert torch.equal(_kept(_top_p_by_bisection(ties, p)), _kept(_top_p(ties, p))), p
        assert torch.equal(_kept(_top_p_by_sorted_values(ties, p)), _kept(_top_p(ties, p))), p
    filtered = torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf")]])
    for rule in (_top_p_by_bisection, _top_p_by_sorted_values):
        assert _kept(rule(filtered, 1e-17)).tolist() == [[False, True, False, False]]


@BOTH_WAYS
def test_a_compiled_step_takes_top_p_by_bisection_and_samples_what_eager_sampling_does(draw) -> None:  # noqa: ANN001
    logits = torch.randn(8, 4096, generator=torch.Generator().manual_seed(2)) * 3
    noise = draw((8, 4096), CPU, torch.Generator().manual_seed(3))
    params = SamplingParams(temperature=0.9, top_k=500, top_p=0.9)
    torch._dynamo.reset()
    compiled = torch.compile(sample, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(logits, params, noise), sample(logits, params, noise))


@BOTH_WAYS
# On both sides of RACE_UNSHIFTED_MIN_T (1e-4), where the race stops taking the largest logit off first.
@pytest.mark.parametrize("temperature", [1e-3, 1e-4, 1e-5, 1e-30, 2e-38, 1e-38, 1e-45, 1e-300])
def test_a_temperature_too_small_for_fp32_is_greedy_not_token_0(temperature: float, draw) -> None:  # noqa: ANN001
    # logits / 1e-38 overflowed to inf, the softmax gave NaN, and every row sampled token 0 (<pad>). 1e-38 and
    # below now count as greedy (under fp32's smallest normal); at 2e-38 every logit above 6.8 overflows.
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 5
    noise = draw((4, 300), CPU, torch.Generator().manual_seed(1))
    assert torch.equal(sample(logits, SamplingParams(temperature=temperature), noise), logits.argmax(-1))


@BOTH_WAYS
@pytest.mark.parametrize("options", [{}, {"top_k": 3}, {"top_p": 0.9}])
def test_nan_logits_still_give_token_ids_inside_the_vocabulary(draw, options: dict) -> None:  # noqa: ANN001
    # A model whose activations overflowed gives NaN logits; the next step must not index past the vocabulary.
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[0] = float("nan")
    logits[1, 7] = float("nan")
    params = SamplingParams(temperature=0.8, **options)
    tokens = sample(logits, params, draw((3, 50), CPU, torch.Generator().manual_seed(1)))
    assert tokens.shape == (3,) and bool(((tokens >= 0) & (tokens < 50)).all())


def test_top_k_that_is_not_a_whole_number_is_an_input_error() -> None:
    with pytest.raises(InputError, match="top_k must be a whole number of tokens"):
        SamplingParams(top_k=5.0)
