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
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.profiler import record_function

# The launches run inside a range of their own, for the profiler: it links a kernel to the host operation
# that launched it, and a Triton launch outside Inductor's graphs (which label theirs) is no PyTorch
# operation. Without them ``muomni profile`` on an H200 gave the optimizer 0.2% of the device's time while
# its own list had this kernel at 3.2%; the ranges were added after that run and are not yet measured there.
ADAMW_RANGE, SQUARES_RANGE = "muomni::adamw", "muomni::sum_of_squares"
# Elements a program steps, and its warps. Timed alone on an H200 over the small preset's parameters (bf16
# gradients for the matrices; docs/results/h200_adamw_micro_aligned.json): 1,024 x 4 warps 859 us, 2,048 882
# us, 4,096 x 8 warps 967 us, 8,192 x 4 warps 1,412 us; PyTorch's fused fp32 AdamW 1,199 us.
BLOCK = 1024
WARPS = 4


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
    weights,
    weight_offsets,
    grads,
    grad_offsets,
    exp_avgs,
    exp_avg_offsets,
    exp_avg_sqs,
    exp_avg_sq_offsets,
    copies,
    copy_offsets,
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
    HAS_COPY: tl.constexpr,
    HAS_DIVISOR: tl.constexpr,
    W_ALIGN: tl.constexpr,
    G_ALIGN: tl.constexpr,
    C_ALIGN: tl.constexpr,
    N_ALIGN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Step ``BLOCK`` elements of tensor ``block_tensor[pid]`` from ``block_start[pid]``. Tensor i of a list
    starts ``offsets[i]`` elements from the list's base (its first tensor); the ``*_ALIGN`` hints (elements,
    checked on the host) let the loads and stores go 16 bytes at a time."""
    pid = tl.program_id(0)
    skip = tl.load(skip_ptr)
    if skip == 0:
        index = tl.load(block_tensor + pid)
        start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
        n = tl.multiple_of(tl.load(numels + index), N_ALIGN)
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < n
        w_at = weights + tl.multiple_of(tl.load(weight_offsets + index), W_ALIGN) + offsets
        g_at = grads + tl.multiple_of(tl.load(grad_offsets + index), G_ALIGN) + offsets
        m_at = exp_avgs + tl.multiple_of(tl.load(exp_avg_offsets + index), W_ALIGN) + offsets
        v_at = exp_avg_sqs + tl.multiple_of(tl.load(exp_avg_sq_offsets + index), W_ALIGN) + offsets
        grad = tl.load(g_at, mask=inside, other=0.0).to(tl.float32)
        w = tl.load(w_at, mask=inside, other=0.0)
        m = tl.load(m_at, mask=inside, other=0.0)
        v = tl.load(v_at, mask=inside, other=0.0)
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
        tl.store(w_at, w, mask=inside)
        tl.store(m_at, m, mask=inside)
        tl.store(v_at, v, mask=inside)
        if HAS_COPY:
            c_at = copies + tl.multiple_of(tl.load(copy_offsets + index), C_ALIGN) + offsets
            tl.store(c_at, _to_bf16_nearest_even(w), mask=inside)


@triton.jit
def _sum_of_squares_kernel(
    block_tensor,
    block_start,
    numels,
    grads,
    grad_offsets,
    partials,
    G_ALIGN: tl.constexpr,
    N_ALIGN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """partials[pid] = the fp32 sum of squares of the ``BLOCK`` elements :func:`_adamw_kernel` would step."""
    pid = tl.program_id(0)
    index = tl.load(block_tensor + pid)
    start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
    n = tl.multiple_of(tl.load(numels + index), N_ALIGN)
    offsets = start + tl.arange(0, BLOCK)
    g_at = grads + tl.multiple_of(tl.load(grad_offsets + index), G_ALIGN) + offsets
    g = tl.load(g_at, mask=offsets < n, other=0.0).to(tl.float32)
    tl.store(partials + pid, tl.sum(g * g, axis=0))


class TensorList(NamedTuple):
    """Tensors of one dtype on one device, for the kernel: the first, each one's distance from it in
    elements (an int64 device tensor), and how many elements those distances are all multiples of, up to
    16 bytes' worth (1 when not)."""

    base: torch.Tensor
    offsets: torch.Tensor
    align: int


def tensor_list(tensors: list[torch.Tensor], device: torch.device) -> TensorList:
    """:class:`TensorList` of ``tensors`` (contiguous, one dtype); the distances are copied to the device
    from pinned memory without a wait."""
    base = tensors[0]
    size = base.element_size()
    distances = [t.data_ptr() - base.data_ptr() for t in tensors]
    aligned = base.data_ptr() % 16 == 0 and all(d % 16 == 0 for d in distances)
    table = torch.tensor([d // size for d in distances], dtype=torch.int64, pin_memory=device.type == "cuda")
    return TensorList(base, table.to(device, non_blocking=True), 16 // size if aligned else 1)


class Blocks(NamedTuple):
    """Each program's tensor index and start, the tensors' sizes (device tensors), and how many elements
    every size is a multiple of (16, or 1)."""

    tensor: torch.Tensor
    start: torch.Tensor
    numels: torch.Tensor
    size_align: int


def block_tables(numels: list[int], device: torch.device) -> Blocks:
    """:class:`Blocks` of tensors of ``numels`` elements."""
    index, start = [], []
    for i, n in enumerate(numels):
        blocks = -(-n // BLOCK)
        index += [i] * blocks
        start += [b * BLOCK for b in range(blocks)]
    return Blocks(
        torch.tensor(index, dtype=torch.int32, device=device),
        torch.tensor(start, dtype=torch.int64, device=device),
        torch.tensor(numels, dtype=torch.int64, device=device),
        16 if all(n % 16 == 0 for n in numels) else 1,
    )


def sum_of_squares(blocks: Blocks, grads: TensorList) -> torch.Tensor:
    """The sum of the squares of every element of ``grads``, in fp32 (0-d), in one kernel and one sum:
    the gradient norm's part for these tensors, whatever their dtype (PyTorch's ``_foreach_norm`` runs a
    kernel per tensor for bf16 when asked for an fp32 result: 85 of them, 0.52 ms, on the small preset)."""
    partials = torch.empty(blocks.tensor.numel(), dtype=torch.float32, device=blocks.tensor.device)
    with record_function(SQUARES_RANGE):
        _sum_of_squares_kernel[(blocks.tensor.numel(),)](
            blocks.tensor,
            blocks.start,
            blocks.numels,
            grads.base,
            grads.offsets,
            partials,
            G_ALIGN=grads.align,
            N_ALIGN=blocks.size_align,
            BLOCK=BLOCK,
            num_warps=WARPS,
        )
    return partials.sum()


def adamw_step(
    blocks: Blocks,
    weights: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    copies: TensorList | None,
    step: torch.Tensor,
    skip: torch.Tensor,
    divisor: torch.Tensor | None,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """Launch the kernel over fp32 ``weights`` and moments, their gradients (bf16 or fp32) and, if given,
    the weights' bf16 ``copies``, with ``blocks`` from :func:`block_tables` for the same sizes.

    ``step`` (fp32, 0-d) is the count of steps applied before this one; the caller advances it (unless
    ``skip``). ``skip``: 0-d, nonzero leaves everything untouched. ``divisor``: 0-d fp32 every gradient is
    divided by (clipping), or None.
    """
    beta1, beta2 = betas
    moments_aligned = exp_avgs.align == exp_avg_sqs.align == weights.align
    copies = copies if copies is not None else weights
    with record_function(ADAMW_RANGE):
        _adamw_kernel[(blocks.tensor.numel(),)](
            blocks.tensor,
            blocks.start,
            blocks.numels,
            weights.base,
            weights.offsets,
            grads.base,
            grads.offsets,
            exp_avgs.base,
            exp_avgs.offsets,
            exp_avg_sqs.base,
            exp_avg_sqs.offsets,
            copies.base,
            copies.offsets,
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
            HAS_COPY=copies is not weights,
            HAS_DIVISOR=divisor is not None,
            W_ALIGN=weights.align if moments_aligned else 1,
            G_ALIGN=grads.align,
            C_ALIGN=copies.align,
            N_ALIGN=blocks.size_align,
            BLOCK=BLOCK,
            num_warps=WARPS,
        )


__all__ = ["BLOCK", "Blocks", "TensorList", "adamw_step", "block_tables", "sum_of_squares", "tensor_list"]
