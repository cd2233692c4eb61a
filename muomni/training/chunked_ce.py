"""Fused linear + cross-entropy in chunks: the loss without the full [tokens, vocab] logits.

For μOmni's shapes (vocab 32000, d_model 256) the logits are the largest activation by far: a batch of
32 x 512 tokens has 16k x 32k logits, 2 GiB in fp32, plus their softmax and gradient. Here the tokens are
processed ``chunk_size`` at a time: each chunk's logits are made, turned into the loss *and* the gradients
for the hidden states and the head weight at once, and freed. Peak extra memory is one chunk's logits
instead of all of them, and no logits are kept for the backward pass (the idea of Liger Kernel's
fused linear cross-entropy, https://arxiv.org/abs/2410.10989, written here in plain PyTorch).

The arithmetic is the plain loss's: the matmuls run in the autocast dtype when autocast is on (as the
``lm_head`` would), the log-softmax in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_TOKENS = 4096


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,  # noqa: ANN001
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
        ignore_index: int,
    ) -> torch.Tensor:
        """hidden [N, D], weight [V, D], targets [N] -> summed loss over targets != ignore_index (fp32)."""
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(dtype)  # [n, D]
            t = targets[start : start + chunk_size]  # [n]
            logits = (h @ w.t()).float()  # [n, V]
            keep = t != ignore_index
            total += F.cross_entropy(logits, t.clamp(min=0), reduction="none")[keep].sum()
            # d(sum of losses)/d(logits) = softmax - one_hot, zero on ignored rows
            grad_logits = logits.softmax(dim=-1)
            grad_logits[torch.arange(t.shape[0], device=t.device), t.clamp(min=0)] -= 1.0
            grad_logits *= keep[:, None]
            grad_logits = grad_logits.to(dtype)
            grad_hidden[start : start + chunk_size] = (grad_logits @ w).to(hidden.dtype)
            grad_weight += (grad_logits.t() @ h).float()
            del logits, grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]  # noqa: ANN001, ANN205
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.float()
        return (
            (grad_hidden * scale).to(grad_hidden.dtype),
            (grad_weight * scale).to(grad_weight.dtype),
            None,
            None,
            None,
        )


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Sum of the cross-entropy losses of ``hidden @ weight.T`` against ``targets``, chunk by chunk.

    Args:
        hidden: final hidden states [..., D] (flattened to [N, D]).
        weight: the output head [V, D].
        targets: token ids [...] matching ``hidden``'s leading shape; ``ignore_index`` entries count for nothing.
        chunk_size: tokens per chunk; memory is about ``chunk_size x V x 4`` bytes per live chunk.

    Returns:
        The summed loss, an fp32 scalar; divide by the number of counted targets for the mean.
    """
    return _ChunkedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk_size, ignore_index
    )
