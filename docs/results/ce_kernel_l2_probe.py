"""Does the loss kernel's second walk of a row come from L2? One 4,096 x 32,000 chunk of bf16 logits (the
small and tiny presets' chunk), timed alone: the kernel as shipped (one program a row, 4,096 programs)
against a variant whose programs walk rows in a grid-stride loop (P programs, so about P rows are in
flight: P x 64 KB against the H200's 50 MB of L2), with the second walk forward or backward (backward, the
blocks read last come first). Every variant's losses and gradient are checked equal to the shipped
kernel's (the same arithmetic in the same order). argv: out.json. Without a GPU it checks the variant
under Triton's interpreter on a small chunk and exits."""

import json
import os
import sys

if not os.environ.get("TRITON_INTERPRET") and not __import__("torch").cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported

import torch
import triton
import triton.language as tl

from muomni.training import triton_ce


@triton.jit
def _rows_strided_kernel(
    logits_ptr,
    targets_ptr,
    grad_ptr,
    loss_ptr,
    n_rows,
    n_cols,
    logits_row_stride,
    ignore_index,
    BLOCK: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """triton_ce's kernel, its rows walked by a grid-stride loop; BACKWARD: the second walk from the end."""
    cols = tl.arange(0, BLOCK)
    n_blocks = tl.cdiv(n_cols, BLOCK)
    first, stride = tl.program_id(0).to(tl.int64), tl.num_programs(0).to(tl.int64)
    for row in tl.range(first, n_rows, stride):
        row_logits = logits_ptr + row * logits_row_stride
        row_grad = grad_ptr + row * n_cols
        target = tl.load(targets_ptr + row)
        keep = target != ignore_index
        target = tl.where(keep, target, 0)
        row_max = -float("inf")
        total = 0.0
        for start in range(0, n_cols, BLOCK):
            in_row = start + cols < n_cols
            x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
            new_max = tl.maximum(row_max, tl.max(x, axis=0))
            total = total * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            row_max = new_max
        target_logit = tl.load(row_logits + target).to(tl.float32)
        for step in range(0, n_blocks):
            start = ((n_blocks - 1 - step) if BACKWARD else step) * BLOCK
            in_row = start + cols < n_cols
            x = tl.load(row_logits + start + cols, mask=in_row, other=-float("inf")).to(tl.float32)
            grad = tl.exp(x - row_max) / total - tl.where(start + cols == target, 1.0, 0.0)
            tl.store(row_grad + start + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_row)
        loss = row_max + tl.log(total) - target_logit
        tl.store(loss_ptr + row, tl.where(keep, loss, 0.0))


def strided(logits, t, programs, backward, block=triton_ce.BLOCK, warps=triton_ce.WARPS):  # noqa: ANN001, ANN201
    n, vocab = logits.shape
    grad = torch.empty_like(logits)
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    _rows_strided_kernel[(programs,)](
        logits, t, grad, losses, n, vocab, logits.stride(0), -100, BLOCK=block, BACKWARD=backward, num_warps=warps
    )
    return losses, grad


def check(logits, t, programs, backward, block=triton_ce.BLOCK, warps=triton_ce.WARPS) -> None:  # noqa: ANN001
    want_losses, want_grad = triton_ce.cross_entropy_rows(logits, t, -100)
    losses, grad = strided(logits, t, programs, backward, block, warps)
    assert torch.equal(losses, want_losses) and torch.equal(grad, want_grad), (programs, backward, block)


if not torch.cuda.is_available():  # the interpreter: a small chunk, blocks that do not divide the row
    torch.manual_seed(0)
    logits = torch.randn(7, 300, dtype=torch.bfloat16)
    t = torch.randint(0, 300, (7,))
    t[3] = -100
    for programs in (1, 3, 7, 9):
        for backward in (False, True):
            check(logits, t, programs, backward, block=128, warps=1)
    print("interpreter: the variant equals the shipped kernel for 1, 3, 7 and 9 programs, both walks")
    sys.exit(0)

n, vocab, width = 4096, 32000, 768
torch.manual_seed(0)
h = torch.randn(n, width, device="cuda", dtype=torch.bfloat16)
w = torch.randn(vocab, width, device="cuda", dtype=torch.bfloat16) * 0.05
t = torch.randint(0, vocab, (n,), device="cuda")
t[::97] = -100
logits = h @ w.t()
sms = torch.cuda.get_device_properties(0).multi_processor_count
moved = 2 * logits.numel() * logits.element_size()  # the logits read once, the gradient written once
result = {"shape": [n, vocab], "hardware": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__, "multiprocessors": sms, "us": {}}  # fmt: skip
grad_out, loss_out = torch.empty_like(logits), torch.empty(n, device="cuda")


def bench(name: str, fn) -> None:  # noqa: ANN001
    ms = triton.testing.do_bench(fn, warmup=50, rep=300)
    result["us"][name] = round(ms * 1e3, 1)
    print(f"{name}: {ms * 1e3:.1f} us, {moved / (ms * 1e-3) / 1e12:.2f} TB/s at one read and one write", flush=True)


bench("shipped", lambda: triton_ce.cross_entropy_rows(logits, t, -100, out=grad_out))
for block, warps in ((triton_ce.BLOCK, triton_ce.WARPS),):  # the shipped block and warps
    for per_sm in (1, 2, 3, 4, 6, 8, None):  # None: one program a row, as shipped
        programs = n if per_sm is None else per_sm * sms
        for backward in (False, True):
            check(logits, t, programs, backward, block, warps)
            name = f"block_{block}_{warps}w_{'rows' if per_sm is None else f'{per_sm}_per_sm'}" + (
                "_backward" if backward else ""
            )

            def launch(programs=programs, backward=backward, block=block, warps=warps) -> None:  # noqa: ANN001
                _rows_strided_kernel[(programs,)](
                    logits, t, grad_out, loss_out, n, vocab, logits.stride(0), -100,
                    BLOCK=block, BACKWARD=backward, num_warps=warps,
                )  # fmt: skip

            bench(name, launch)
            with open(sys.argv[1], "w") as f:  # after each, so that a run cut short keeps what it timed
                json.dump(result, f, indent=1)
with open(sys.argv[1], "w") as f:
    json.dump(result, f, indent=1)
