"""The cross-entropy of a chunk of logits and its gradient, in one pass over the logits (Triton).

The chunked loss (:mod:`muomni.training.chunked_ce`) turns each chunk's logits [n, V] into the per-row
losses and the gradient ``softmax - one_hot`` before the two matrix products of the backward pass. Inductor
compiles that to one reduction kernel, which reads each row several times (its maximum, its sum of
exponentials, then the gradient): on an H200 it took 253 us for a 4,096 x 32,000 chunk of bf16 logits, the
time of about 1 GB of traffic where 0.5 GB (the logits read once, the gradient written once) would do.
Here one program holds a whole row in registers, up to ``ONE_PASS_MAX`` columns: it is read once, its
maximum, sum and loss come from the registers, and the gradient is written from them. Wider rows (large
vocabularies) are read twice: once for the maximum and sum (online, in blocks) and once for the gradient.

Arithmetic in fp32 whatever the logits' dtype; the gradient is stored in the logits' dtype, as the
compiled loss stores it.
"""

# No ``from __future__ import annotations``: Triton 3.1's interpreter needs real constexpr annotations
# (see muomni.models.triton_decode).
import torch
import triton
import triton.language as tl

# The widest row one program holds in registers (16 warps: 64 fp32 values a thread at 32,768 columns).
ONE_PASS_MAX = 32768
# The block of columns a program loads at a time when a row is wider than ONE_PASS_MAX.
BLOCK_TWO_PASS = 8192


@triton.jit
def _cross_entropy_rows_kernel(
    logits_ptr,
    targets_ptr,
    grad_ptr,
    loss_ptr,
    n_cols,
    logits_row_stride,
    ignore_index,
    BLOCK: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    """One row: loss = logsumexp(x) - x[target] (0 where target == ignore_index), and
    grad = softmax(x) - one_hot(target) (target 0 where ignored: the caller zeroes those rows' factors)."""
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * logits_row_stride
    row_grad = grad_ptr + row * n_cols
    target = tl.load(targets_ptr + row)
    keep = target != ignore_index
    target = tl.where(keep, target, 0)
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        in_row = cols < n_cols
        x = tl.load(row_logits + cols, mask=in_row, other=-float("inf")).to(tl.float32)
        row_max = tl.max(x, axis=0)
        exps = tl.exp(x - row_max)
        total = tl.sum(exps, axis=0)
        target_logit = tl.sum(tl.where(cols == target, x, 0.0), axis=0)
        grad = exps / total - tl.where(cols == target, 1.0, 0.0)
        tl.store(row_grad + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)
    else:
        # Online maximum and sum: each block rescales the sum so far to the new maximum.
        row_max = -float("inf")
        total = 0.0
        for start in range(0, n_cols, BLOCK):
            in_row = start + cols < n_cols
            x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(x, axis=0))
            total = total * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            row_max = new_max
        target_logit = tl.load(row_logits + target).to(tl.float32)
        for start in range(0, n_cols, BLOCK):
            in_row = start + cols < n_cols
            x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
            grad = tl.exp(x - row_max) / total - tl.where(start + cols == target, 1.0, 0.0)
            tl.store(row_grad + start + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)
    loss = row_max + tl.log(total) - target_logit
    tl.store(loss_ptr + row, tl.where(keep, loss, 0.0))


def cross_entropy_rows(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] (rows contiguous), targets [n] -> (losses [n] fp32, gradient [n, V] in logits' dtype).

    The losses are 0 where a target is ``ignore_index``; those rows' gradients are ``softmax - one_hot(0)``.
    """
    n, n_cols = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    grad = torch.empty((n, n_cols), dtype=logits.dtype, device=logits.device)
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return losses, grad
    one_pass = n_cols <= ONE_PASS_MAX
    block = triton.next_power_of_2(n_cols) if one_pass else BLOCK_TWO_PASS
    _cross_entropy_rows_kernel[(n,)](
        logits,
        targets,
        grad,
        losses,
        n_cols,
        logits.stride(0),
        ignore_index,
        BLOCK=block,
        ONE_PASS=one_pass,
        num_warps=min(16, max(4, block // 2048)),
    )
    return losses, grad


__all__ = ["ONE_PASS_MAX", "cross_entropy_rows"]
