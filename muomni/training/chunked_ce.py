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

import importlib.util

import torch

DEFAULT_CHUNK_TOKENS = 4096
# Devices whose chunks run the Triton kernel of muomni.training.triton_ce for the loss and the logits'
# gradient; tests add "cpu", where Triton's interpreter runs it.
CE_KERNEL_DEVICES = {"cuda"}
_HAS_TRITON = importlib.util.find_spec("triton") is not None


@torch.library.custom_op("muomni::cross_entropy_rows", mutates_args=())
def cross_entropy_rows(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses [n] fp32, gradient [n, V]) of logits [n, V] by the Triton kernel (see
    :func:`muomni.training.triton_ce.cross_entropy_rows`). A custom op, so that a compiled loss calls it as it is."""
    from muomni.training.triton_ce import cross_entropy_rows as kernel

    return kernel(logits, targets, ignore_index)


@cross_entropy_rows.register_fake
def _(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.new_empty(logits.shape[0], dtype=torch.float32), logits.new_empty(logits.shape)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def chunk_loss_and_grads(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk: h [n, D], w [V, D], t [n] -> (summed loss fp32, grad of h [n, D], grad of w [V, D]).

    On a GPU the loss and the logits' gradient come from one Triton kernel (:func:`cross_entropy_rows`).
    Elsewhere they are written without data-dependent shapes, so that ``torch.compile`` turns the softmax,
    the loss and the logits' gradient into one reduction between the three matmuls.
    """
    keep = t != ignore_index  # [n]
    k = keep[:, None].to(h.dtype)
    if h.device.type in CE_KERNEL_DEVICES and _HAS_TRITON:
        # On an H200, a 4,096 x 32,000 chunk of bf16 logits: 196 us, against 261 us for Inductor's reduction
        # of the operations below; the tiny preset's +all step ran 5% faster, the small preset's 1%.
        logits = h @ w.t()  # [n, V]
        if torch.compiler.is_compiling():
            losses, grad = cross_entropy_rows(logits, t, ignore_index)
        else:  # eagerly in place, the logits are done: no second [n, V] buffer
            from muomni.training.triton_ce import cross_entropy_rows as kernel

            losses, grad = kernel(logits, t, ignore_index, out=logits)
        return losses.sum(), (grad @ w) * k, grad.t() @ (h * k)
    logits = (h @ w.t()).float()  # [n, V]
    safe_t = torch.where(keep, t, torch.zeros_like(t))
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    loss = ((lse - logits.gather(1, safe_t[:, None]).squeeze(1)) * keep).sum()
    # d(sum of losses)/d(logits) = softmax - one_hot
    if torch.compiler.is_compiling():
        # The one-hot as a comparison, so Inductor makes the gradient in the same pass that reads the logits:
        # a scatter needs the fp32 probabilities written out first (on an H200, 180 us more per 4096 x 32000
        # chunk of the small preset: the copy to fp32 and a second pass).
        vocab = torch.arange(logits.shape[1], device=logits.device)
        grad = torch.exp(logits - lse[:, None]) - (vocab[None, :] == safe_t[:, None]).float()
    else:  # in place, the logits are done: eagerly no second [n, V] buffer
        grad = logits.sub_(lse[:, None]).exp_().scatter_add_(1, safe_t[:, None], -torch.ones_like(lse[:, None]))
    grad = grad.to(h.dtype)  # [n, V]
    # Ignored rows count for nothing: zeroed in the [n, D] factors, not with another pass over [n, V].
    return loss, (grad @ w) * k, grad.t() @ (h * k)


_compiled_chunk = None


def chunk_fn(compiled: bool):  # noqa: ANN201
    """The per-chunk function: traced inline when the caller is itself being compiled (the whole loss then
    becomes one graph), else ``chunk_loss_and_grads``, compiled once per process if ``compiled``."""
    global _compiled_chunk
    if not compiled or torch.compiler.is_compiling():
        return chunk_loss_and_grads
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(chunk_loss_and_grads, dynamic=False)  # the last chunk compiles once more
    return _compiled_chunk


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,  # noqa: ANN001
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
        ignore_index: int,
        compiled: bool,
    ) -> torch.Tensor:
        """hidden [N, D], weight [V, D], targets [N] -> summed loss over targets != ignore_index (fp32)."""
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        fn = chunk_fn(compiled)
        # Out of place (lists, then one sum and one cat): TorchDynamo traces this into the caller's graph,
        # and PyTorch 2.11 compiled an earlier version, which wrote into buffers made here, to wrong gradients.
        losses, grads_h, grad_weight = [], [], None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size].to(dtype)  # [n, D]
            loss, grad_h, grad_w = fn(h, w, targets[start : start + chunk_size], ignore_index)
            losses.append(loss)
            grads_h.append(grad_h.to(hidden.dtype))
            grad_weight = grad_w.float() if grad_weight is None else grad_weight + grad_w.float()
        total = torch.stack(losses).sum()
        grad_hidden = torch.cat(grads_h)
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
            None,
        )


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    ignore_index: int = -100,
    compiled: bool = False,
) -> torch.Tensor:
    """Sum of the cross-entropy losses of ``hidden @ weight.T`` against ``targets``, chunk by chunk.

    Args:
        hidden: final hidden states [..., D] (flattened to [N, D]).
        weight: the output head [V, D].
        targets: token ids [...] matching ``hidden``'s leading shape; ``ignore_index`` entries count for nothing.
        chunk_size: tokens per chunk; memory is about ``chunk_size x V x 4`` bytes per live chunk.
        compiled: run each chunk through ``torch.compile`` (fused softmax/loss/gradient: much faster on GPUs).
            Inside a compiled caller the chunks are traced into the caller's graph instead.

    Returns:
        The summed loss, an fp32 scalar; divide by the number of counted targets for the mean.
    """
    return _ChunkedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        targets.reshape(-1),
        chunk_size,
        ignore_index,
        compiled,
    )
