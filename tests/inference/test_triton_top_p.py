"""The top-p kernel against the sorting rule: the same tokens, the same boundary, the same ties.

Without a GPU the kernel runs in Triton's interpreter (switched on here before the kernel's module is
imported), so every run with Triton installed checks it."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from muomni.inference.sampling import SamplingParams, _top_p, race_noise, sample  # noqa: E402
from muomni.models import decode_ops  # noqa: E402

pytest.importorskip("triton", reason="the kernel is Triton's")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def interpreter_or_gpu() -> None:
    if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton's interpreter is off in this process")


def _kernel(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    from muomni.inference.triton_top_p import top_p_race

    return top_p_race(x.to(DEVICE), noise.to(DEVICE), p).cpu()


def _sorting_rule(x: torch.Tensor, noise: torch.Tensor, p: float) -> torch.Tensor:
    return (_top_p(x, p) - noise.log()).argmax(dim=-1)


def _rows(vocab: int, scale: float, seed: int, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=gen) * scale
    return x - x.amax(dim=-1, keepdim=True), race_noise((rows, vocab), torch.device("cpu"), gen)


@pytest.mark.parametrize("vocab", [6, 1000, 32000])
@pytest.mark.parametrize("p", [1e-6, 0.3, 0.9, 0.9999])
def test_the_kernel_picks_the_token_of_the_sorting_rule(vocab: int, p: float) -> None:
    for seed, scale in enumerate((0.01, 1.0, 10.0)):
        x, noise = _rows(vocab, scale, seed)
        assert torch.equal(_kernel(x, noise, p), _sorting_rule(x, noise, p))


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_the_kernel_keeps_the_boundary_of_the_sorting_rule(p: float) -> None:
    # Noise exp(2x) makes every score -x: the race picks the least likely token kept, the boundary itself.
    x, _ = _rows(4096, 2.0, seed=7, rows=8)
    noise = (2 * x).exp().clamp_min(torch.finfo(torch.float32).tiny)
    least_likely_kept = _sorting_rule(x, noise, p)
    assert torch.equal(_kernel(x, noise, p), least_likely_kept)
    # ... which is not just the most likely token: the set is wider than one.
    assert not torch.equal(least_likely_kept, x.argmax(dim=-1))


@pytest.mark.parametrize(("vocab", "p"), [(6, 0.3), (6, 0.5), (6, 0.99), (5, 0.9)])
def test_of_equal_tokens_at_the_boundary_the_kernel_keeps_the_lower_ids(vocab: int, p: float) -> None:
    x = torch.zeros(1, vocab)
    kept = (_top_p(x, p) > float("-inf")).nonzero()[:, 1].tolist()
    for token in range(vocab):  # noise that makes each token the race's winner if it is kept
        noise = torch.ones(1, vocab)
        noise[0, token] = 1e-30
        assert _kernel(x, noise, p).item() == (token if token in kept else _sorting_rule(x, noise, p).item())


@pytest.mark.parametrize("p", [1e-6, 1e-12, 1e-17])
def test_a_p_near_0_keeps_the_most_likely_token_even_when_it_ties(p: float) -> None:
    # At p = 1e-12, 1 - p rounds to 1.0 in fp32 (at 1e-17 in float64 too): the mass that may go would be
    # all of it, and the equal most likely tokens (ids 1 and 2 here) would be dropped with the rest (the
    # race over no token then names token 0, filtered out here). The kernel takes p as 1e-6 at least.
    # Two tokens of probability 1/2 each: their sums are exact in any order.
    x = torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf")]])
    noise = torch.ones(1, 4)
    assert _sorting_rule(x, noise, p).item() == 1
    assert _kernel(x, noise, p).item() == 1


def test_tokens_filtered_before_top_p_stay_out() -> None:
    x, noise = _rows(1000, 1.0, seed=3, rows=2)
    x = x.masked_fill(x < x.topk(50).values[:, -1:], float("-inf"))  # top-k 50
    noise[:, x[0] == float("-inf")] = 1e-30  # the filtered tokens would win if they were in the race
    for p in (0.5, 0.9, 1.0 - 1e-7):
        token = _kernel(x, noise, p)
        assert torch.equal(token, _sorting_rule(x, noise, p))
        assert torch.isfinite(x.gather(1, token[:, None])).all()


def test_sample_hands_top_p_to_the_kernel_on_a_triton_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", {"cuda", "cpu"})
    calls = []
    kernel = decode_ops.top_p_race
    monkeypatch.setattr(
        "muomni.inference.sampling.top_p_race", lambda *args: calls.append(1) or kernel(*args), raising=True
    )
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(1)).to(DEVICE) * 3
    noise = race_noise((3, 500), DEVICE, torch.Generator(DEVICE).manual_seed(2))
    params = SamplingParams(temperature=0.7, top_k=100, top_p=0.9)
    by_kernel = sample(logits, params, noise)
    assert calls == [1]
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", set())
    assert torch.equal(by_kernel, sample(logits, params, noise))  # the sorting rule's token
    assert calls == [1]


def test_a_compiled_step_calls_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole choice in one graph (fullgraph, as a decode step compiles): a check that Dynamo could not
    # trace (importlib's find_spec) failed there, and only there.
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", {"cuda", "cpu"})
    logits = torch.randn(2, 700, generator=torch.Generator().manual_seed(5)).to(DEVICE) * 2
    noise = race_noise((2, 700), DEVICE, torch.Generator(DEVICE).manual_seed(6))
    params = SamplingParams(temperature=0.9, top_p=0.8)
    torch._dynamo.reset()
    compiled = torch.compile(sample, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(logits, params, noise), sample(logits, params, noise))
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", set())
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / 0.9  # as sample scales them
    assert torch.equal(compiled(logits, params, noise).cpu(), _sorting_rule(scaled.cpu(), noise.cpu(), 0.8))


def test_a_vocabulary_wider_than_the_kernel_holds_is_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", {"cuda", "cpu"})
    assert decode_ops.top_p_kernel_ready(torch.zeros(1, decode_ops.TOP_P_MAX_VOCAB))
    assert not decode_ops.top_p_kernel_ready(torch.zeros(1, decode_ops.TOP_P_MAX_VOCAB + 1))
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", {"cuda"})
    assert not decode_ops.top_p_kernel_ready(torch.zeros(1, 10))
