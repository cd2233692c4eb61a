"""One 4,096 x 32,000 chunk of bf16 logits (the small and tiny presets' chunk): the loss and the logits'
gradient by the Triton kernel of muomni.training.triton_ce (by block and warps) against Inductor's
compilation of the PyTorch operations the chunk ran before. argv: out.json"""

import json
import sys

import torch
import triton

from muomni.training import triton_ce

n, vocab, width = 4096, 32000, 768
torch.manual_seed(0)
h = torch.randn(n, width, device="cuda", dtype=torch.bfloat16)
w = torch.randn(vocab, width, device="cuda", dtype=torch.bfloat16) * 0.05
t = torch.randint(0, vocab, (n,), device="cuda")
t[::97] = -100
logits = h @ w.t()


def inductor_chunk(logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.float()
    keep = t != -100
    safe_t = torch.where(keep, t, torch.zeros_like(t))
    lse = torch.logsumexp(x, dim=-1)
    loss = ((lse - x.gather(1, safe_t[:, None]).squeeze(1)) * keep).sum()
    vocab_ids = torch.arange(x.shape[1], device=x.device)
    grad = torch.exp(x - lse[:, None]) - (vocab_ids[None, :] == safe_t[:, None]).float()
    return loss, grad.to(logits.dtype)


compiled = torch.compile(inductor_chunk)
want_loss, want_grad = compiled(logits, t)
losses, grad = triton_ce.cross_entropy_rows(logits, t, -100)
result = {
    "shape": [n, vocab],
    "hardware": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "triton": triton.__version__,
    "loss_kernel": losses.sum().item(),
    "loss_inductor": want_loss.item(),
    "grad_max_abs_diff": (grad.float() - want_grad.float()).abs().max().item(),
}
moved = 2 * logits.numel() * logits.element_size()  # the logits read once, the gradient written once
grad_out = torch.empty_like(logits)
loss_out = torch.empty(n, device="cuda")


def launch(block: int, warps: int):  # noqa: ANN202
    return lambda: triton_ce._cross_entropy_rows_kernel[(n,)](
        logits, t, grad_out, loss_out, vocab, logits.stride(0), -100, BLOCK=block, num_warps=warps
    )


timings = {"inductor": triton.testing.do_bench(lambda: compiled(logits, t), warmup=50, rep=300)}
timings["kernel_as_shipped"] = triton.testing.do_bench(
    lambda: triton_ce.cross_entropy_rows(logits, t, -100), warmup=50, rep=300
)
for block, warps in ((2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)):
    timings[f"block_{block}_{warps}_warps"] = triton.testing.do_bench(launch(block, warps), warmup=50, rep=300)
result["us"] = {k: round(v * 1e3, 1) for k, v in timings.items()}
result["TB_per_s_at_one_read_one_write"] = {k: round(moved / (v * 1e-3) / 1e12, 2) for k, v in timings.items()}
print(json.dumps(result, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(result, f, indent=1)
