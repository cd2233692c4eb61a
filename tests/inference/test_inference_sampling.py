"""Sampling: greedy, temperature, top-k, top-p, the exponential race, and option checks."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import tiny_model

from muomni.errors import InputError
from muomni.inference.generate import generate_tokens
from muomni.inference.sampling import ARGMAX_BLOCK, SamplingParams, argmax, draw_noise, sample

PROMPTS = [[5, 6, 7, 8], [40, 41]]


def test_exponential_race_samples_the_softmax() -> None:
    """Frequencies of many draws match softmax(logits / T): the noise trick is exact sampling."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    params = SamplingParams(temperature=1.5)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    noise = draw_noise((n, 5), torch.device("cpu"), gen)
    draws = sample(logits.expand(n, 5), params, noise)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert torch.allclose(freq, (logits[0] / 1.5).softmax(-1), atol=0.015)


def test_top_k_and_top_p_keep_only_the_most_likely_tokens() -> None:
    logits = torch.tensor([[3.0, 2.9, 2.8, -5.0, -5.0, 1.0]])
    gen = torch.Generator().manual_seed(1)
    noise = draw_noise((5000, 6), torch.device("cpu"), gen)
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
