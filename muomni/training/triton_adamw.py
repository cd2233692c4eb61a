"""AdamW over many tensors in one Triton kernel, reading bf16 or fp32 gradients and writing a bf16 copy.

The update of :class:`muomni.training.master_weights.MasterWeightAdamW` on CUDA. One launch steps a list of
tensors, as PyTorch's fused AdamW does; what it adds is mixed dtypes: the gradient may be bf16 (the
gradient of a layer's bf16 weight copy) while the weight it updates (the master copy) and both moments are
fp32, and the new weight is also written rounded to bf16, into the copy the next forward pass uses. That is
28 bytes a parameter read or written, the same as PyTorch's fp32 kernel, which cannot take a bf16 gradient.

Each tensor's addresses come from tables of device pointers (``tl.load`` of an int64, cast to a pointer),
so the tensors need not be one buffer. Each program steps ``BLOCK`` elements of one tensor; which tensor and
where in it are tables built once per set of sizes.

The arithmetic is PyTorch's fused AdamW's (``aten/src/ATen/native/cuda/fused_adam_utils.cuh``), in fp32:
the decoupled decay ``w -= lr * wd * w`` first, then the moments, then
``w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``. The step count ``t`` is read on the
device, as are the skip flag (a non-finite step leaves everything untouched) and the gradient's divisor
(clipping), so that the host need not wait for any of them. Unlike PyTorch's kernel it does not write the
divided gradient back: the trainer clears the gradients after the step.
"""

# No ``from __future__ import annotations``: Triton 3.1's interpreter needs real constexpr annotations
# (see muomni.models.triton_decode).
import math

import torch
import triton
import triton.language as tl

# Elements a program steps, and its warps: 16 fp32 values a thread, loaded 4 at a time.
BLOCK = 4096
WARPS = 8


@triton.jit
def _to_bf16_nearest_even(x):
    """fp32 -> bf16 rounded to nearest, ties to even, as PyTorch's cast rounds (and so autocast's): written
    out in integer arithmetic because Triton's interpreter truncates in ``.to(tl.bfloat16)``."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _adamw_kernel(
    block_tensor,
    block_start,
    numels,
    weight_ptrs,
    grad_ptrs,
    exp_avg_ptrs,
    exp_avg_sq_ptrs,
    copy_ptrs,
    step_ptr,
    skip_ptr,
    divisor_ptr,
    lr,
    beta1,
    beta2,
    log_beta1,
    log_beta2,
    eps,
    weight_decay,
    GRAD_BF16: tl.constexpr,
    HAS_COPY: tl.constexpr,
    HAS_DIVISOR: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Step ``BLOCK`` elements of tensor ``block_tensor[pid]`` from ``block_start[pid]``."""
    pid = tl.program_id(0)
    skip = tl.load(skip_ptr)
    if skip == 0:
        index = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        n = tl.load(numels + index)
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < n
        weight_ptr = tl.load(weight_ptrs + index).to(tl.pointer_type(tl.float32))
        if GRAD_BF16:
            grad_ptr = tl.load(grad_ptrs + index).to(tl.pointer_type(tl.bfloat16))
        else:
            grad_ptr = tl.load(grad_ptrs + index).to(tl.pointer_type(tl.float32))
        exp_avg_ptr = tl.load(exp_avg_ptrs + index).to(tl.pointer_type(tl.float32))
        exp_avg_sq_ptr = tl.load(exp_avg_sq_ptrs + index).to(tl.pointer_type(tl.float32))
        grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + offsets, mask=inside, other=0.0)
        m = tl.load(exp_avg_ptr + offsets, mask=inside, other=0.0)
        v = tl.load(exp_avg_sq_ptr + offsets, mask=inside, other=0.0)
        if HAS_DIVISOR:
            grad = grad / tl.load(divisor_ptr)
        t = tl.load(step_ptr) + 1.0
        bias_correction1 = 1.0 - tl.exp(t * log_beta1)
        bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(t * log_beta2))
        w = w - lr * weight_decay * w
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * grad * grad
        denom = tl.sqrt(v) / bias_correction2_sqrt + eps
        w = w - (lr / bias_correction1) * m / denom
        tl.store(weight_ptr + offsets, w, mask=inside)
        tl.store(exp_avg_ptr + offsets, m, mask=inside)
        tl.store(exp_avg_sq_ptr + offsets, v, mask=inside)
        if HAS_COPY:
            copy_ptr = tl.load(copy_ptrs + index).to(tl.pointer_type(tl.bfloat16))
            tl.store(copy_ptr + offsets, _to_bf16_nearest_even(w), mask=inside)


def pointer_table(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The tensors' addresses as an int64 device tensor (copied from pinned memory without a wait)."""
    table = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)


def block_tables(numels: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tensor index, start) of each program, and the tensors' sizes, as device tensors."""
    index, start = [], []
    for i, n in enumerate(numels):
        blocks = -(-n // BLOCK)
        index += [i] * blocks
        start += [b * BLOCK for b in range(blocks)]
    return (
        torch.tensor(index, dtype=torch.int32, device=device),
        torch.tensor(start, dtype=torch.int64, device=device),
        torch.tensor(numels, dtype=torch.int64, device=device),
    )


def adamw_step(
    blocks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
    step: torch.Tensor,
    skip: torch.Tensor,
    divisor: torch.Tensor | None,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_bf16: bool,
) -> None:
    """Launch the kernel over the tensors of ``tables`` = (weights, gradients, exp_avg, exp_avg_sq, bf16
    copies or None), each an int64 pointer table, with ``blocks`` from :func:`block_tables`.

    ``step`` (fp32, 0-d) is the count of steps applied before this one; the caller advances it (unless
    ``skip``). ``skip``: 0-d, nonzero leaves everything untouched. ``divisor``: 0-d fp32 every gradient is
    divided by (clipping), or None.
    """
    block_tensor, block_start, numels = blocks
    weights, grads, exp_avgs, exp_avg_sqs, copies = tables
    beta1, beta2 = betas
    _adamw_kernel[(block_tensor.numel(),)](
        block_tensor,
        block_start,
        numels,
        weights,
        grads,
        exp_avgs,
        exp_avg_sqs,
        copies if copies is not None else weights,
        step,
        skip,
        divisor if divisor is not None else step,
        lr,
        beta1,
        beta2,
        math.log(beta1) if beta1 > 0 else -math.inf,
        math.log(beta2) if beta2 > 0 else -math.inf,
        eps,
        weight_decay,
        GRAD_BF16=grad_bf16,
        HAS_COPY=copies is not None,
        HAS_DIVISOR=divisor is not None,
        BLOCK=BLOCK,
        num_warps=WARPS,
    )


__all__ = ["BLOCK", "adamw_step", "block_tables", "pointer_table"]
