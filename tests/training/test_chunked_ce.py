"""Chunked linear cross-entropy equals the plain loss and its gradients (fp32, 1e-5)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from muomni.training.chunked_ce import chunked_linear_cross_entropy


def plain_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    return F.cross_entropy(logits, targets.reshape(-1), reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_loss_and_gradients_equal_plain(chunk_size: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 24, requires_grad=True)
    weight = torch.randn(97, 24, requires_grad=True)
    targets = torch.randint(0, 97, (3, 21))
    targets[1, 5] = -100  # ignored positions count for nothing
    scale = 1.0 / 62  # the trainer divides by the window's target count
    chunked = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    (chunked * scale).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = plain_loss(hidden, weight, targets)
    (plain * scale).backward()
    assert torch.allclose(chunked, plain, rtol=1e-5, atol=0)
    assert torch.allclose(grads[0], hidden.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads[1], weight.grad, rtol=1e-5, atol=1e-7)


def test_tied_weight_gets_both_gradients() -> None:
    """With tied embeddings the head weight also feeds the input: both gradient paths must add up."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(50, 16)
    ids = torch.randint(0, 50, (2, 9))
    results = []
    for fn in (chunked_linear_cross_entropy, plain_loss):
        emb.zero_grad()
        hidden = torch.tanh(emb(ids[:, :-1]))
        fn(hidden, emb.weight, ids[:, 1:]).backward()
        results.append(emb.weight.grad.clone())
    assert torch.allclose(results[0], results[1], rtol=1e-5, atol=1e-6)  # fp32 sums in another order


def test_bf16_autocast_is_close_to_plain_autocast() -> None:
    torch.manual_seed(2)
    hidden = torch.randn(40, 32)
    weight = torch.randn(128, 32)
    targets = torch.randint(0, 128, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = chunked_linear_cross_entropy(hidden, weight, targets, chunk_size=16)
        plain = F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="sum")
    assert chunked.dtype == torch.float32
    assert torch.allclose(chunked, plain, rtol=2e-3)


def test_traced_chunks_equal_plain() -> None:
    """Traced by torch.compile, a chunk makes its gradient from a one-hot comparison instead of the eager
    in-place scatter: the same loss and gradients, ignored targets included."""
    torch.manual_seed(3)
    hidden = torch.randn(2, 13, 24, requires_grad=True)
    weight = torch.randn(97, 24, requires_grad=True)
    targets = torch.randint(0, 97, (2, 13))
    targets[0, 3] = -100
    traced = torch.compile(chunked_linear_cross_entropy, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (partial(traced, chunk_size=8), plain_loss):
        hidden.grad = weight.grad = None
        loss = fn(hidden, weight, targets)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    for got, want in zip(*results):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
