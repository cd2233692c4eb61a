"""muomni's written-out attention in fp16 on a GPU, against the same attention with every score cast to fp32
before the scale and the mask (what it did before): how far apart the outputs and gradients are, and the time
of a forward and backward pass of each, at the small preset's shape (batch 16, 12 heads, 1024 x 1024, head_dim
64) and at head_dim 48 (a scale that is not a power of two).

    PYTHONPATH=. python3 docs/results/math_attention_half_probe.py OUT.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys

import torch

from muomni.models.layers import math_attention


def scaled_in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1).to(q.dtype) @ v


def outputs_and_grads(attention, q, k, v, grad) -> list[torch.Tensor]:  # noqa: ANN001
    out = attention(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), grad)]


def time_ms(attention, q, k, v, grad, reps: int = 20) -> float:  # noqa: ANN001
    times = []
    for _ in range(reps + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        outputs_and_grads(attention, q, k, v, grad)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[3:])


def main(out_path: str) -> None:
    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for head_dim in (64, 48):
        torch.manual_seed(0)
        shape = (16, 12, 1024, head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
        grad = torch.randn(shape, device="cuda", dtype=torch.float16)
        now = lambda q, k, v: math_attention(q, k, v, None, 0.0)  # noqa: E731
        got, want = outputs_and_grads(now, q, k, v, grad), outputs_and_grads(scaled_in_fp32, q, k, v, grad)
        row = {}
        for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
            diff = (g.float() - w.float()).abs()
            row[name] = {
                "equal": bool(torch.equal(g, w)),
                "max_abs_diff": diff.max().item(),
                "max_abs": w.float().abs().max().item(),
                "differing": int((diff > 0).sum().item()),
            }
        row["ms_now"], row["ms_scaled_in_fp32"] = time_ms(now, q, k, v, grad), time_ms(scaled_in_fp32, q, k, v, grad)
        results[f"head_dim_{head_dim}"] = row
        print(head_dim, json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
