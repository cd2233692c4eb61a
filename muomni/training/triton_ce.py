"""The cross-entropy of a chunk of logits and its gradient, in one Triton kernel.

The chunked loss (:mod:`muomni.training.chunked_ce`) turns each chunk's logits [n, V] into the per-row
losses and the gradient ``softmax - one_hot`` before the two matrix products of the backward pass. Inductor
compiles that to one reduction kernel, which took 262 us for a 4,096 x 32,000 chunk of bf16 logits on an
H200: 2.0 TB/s counted as the logits read once and the gradient written once, half the copy bandwidth.
Here a program walks one row in blocks twice: first for the row's maximum and sum of exponentials (online,
each block rescaling the sum so far), then for the gradient. The row is 64 KB of bf16 at 32,000 columns,
small enough that its second walk may come from L2 rather than memory. Timed alone on an H200 with
8,192-column blocks and 8 warps: 196 us (2.7 TB/s counted as above). Holding a whole row in registers, read
once, was slower: 242 us with 16 warps a row, one program a multiprocessor with its loads and stores one
after the other (docs/results/h200_ce_kernel.json).

Arithmetic in fp32 whatever the logits' dtype; the gradient is stored in the logits' dtype, as the
compiled loss stores it.
"""

# No ``from __future__ import annotations``: Triton 3.1's interpreter needs real constexpr annotations
# (see muomni.models.triton_decode).
import torch
import triton
import triton.language as tl

# Columns a program loads at a time, and its warps (the fastest of those timed, see above).
BLOCK = 8192
WARPS = 8


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
    row_max = -float("inf")
    total = 0.0
    for start in range(0, n_cols, BLOCK):
        in_row = start + cols < n_cols
        x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        total = total * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        row_max = new_max
    target_logit = tl.load(row_logits + target).to(tl.float32)
    for start in range(0, n_cols, BLOCK):  # the row again (64 KB of bf16 at 32,000 columns: likely in L2)
        in_row = start + cols < n_cols
        x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
        grad = tl.exp(x - row_max) / total - tl.where(start + cols == target, 1.0, 0.0)
        tl.store(row_grad + start + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)
    loss = row_max + tl.log(total) - target_logit
    tl.store(loss_ptr + row, tl.where(keep, loss, 0.0))


def cross_entropy_rows(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V] (rows contiguous), targets [n] -> (losses [n] fp32, gradient [n, V] in logits' dtype).

    The losses are 0 where a target is ``ignore_index``; those rows' gradients are ``softmax - one_hot(0)``.
    ``out`` [n, V], contiguous, receives the gradient; it may be ``logits`` itself (each program reads a
    block of its row before it writes it), which saves a second [n, V] buffer.
    """
    n, n_cols = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    targets = targets.contiguous()
    if out is None:
        out = torch.empty((n, n_cols), dtype=logits.dtype, device=logits.device)
    elif out.shape != logits.shape or out.dtype != logits.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {tuple(logits.shape)} tensor of {logits.dtype}")
    grad = out
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n == 0:
        return losses, grad
    _cross_entropy_rows_kernel[(n,)](
        logits, targets, grad, losses, n_cols, logits.stride(0), ignore_index, BLOCK=BLOCK, num_warps=WARPS
    )
    return losses, grad


__all__ = ["BLOCK", "cross_entropy_rows"]
