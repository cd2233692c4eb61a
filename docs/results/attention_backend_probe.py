"""Training attention of the small preset, forward and backward, under each of SDPA's fused kernels.

One layer's shapes (batch 16, 12 query heads over 3 key/value heads, 1,024 tokens, heads 64 wide, bf16,
causal), q/k/v laid out as the model makes them ([B, T, H, Dh] products viewed as [B, H, T, Dh]). Each
variant's forward and backward are replayed from a CUDA graph; its output and gradients are checked
against fp32 math attention first. Variants: cuDNN and flash with the grouped heads as they are
(``enable_gqa``), and both, with the memory-efficient kernel, on copies of k and v (``repeat_interleave``,
whose backward sums the copies' gradients: part of the timed work). argv: out.json
"""

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, H, HKV, T, DH = 16, 12, 3, 1024, 64
GROUP = H // HKV
gen = torch.Generator("cuda").manual_seed(0)


def leaf(heads: int) -> torch.Tensor:
    x = torch.randn(B, T, heads, DH, device="cuda", dtype=torch.bfloat16, generator=gen)
    return x.transpose(1, 2).detach().requires_grad_()  # [B, H, T, Dh], strided as the model's views


q, k, v = leaf(H), leaf(HKV), leaf(HKV)
dy = torch.randn(B, H, T, DH, device="cuda", dtype=torch.bfloat16, generator=gen)


def reference() -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    qf, kf, vf = leaves
    kf, vf = kf.repeat_interleave(GROUP, 1), vf.repeat_interleave(GROUP, 1)
    with sdpa_kernel(SDPBackend.MATH):
        y = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True)
    y.backward(dy.float())
    return (y, *(t.grad for t in leaves))


def variant(backend: SDPBackend, grouped: bool):
    def run() -> torch.Tensor:
        kk, vv = (k, v) if grouped else (k.repeat_interleave(GROUP, 1), v.repeat_interleave(GROUP, 1))
        with sdpa_kernel(backend):
            y = F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=grouped)
        y.backward(dy)
        return y

    return run


def check(run, want: tuple[torch.Tensor, ...]) -> float:
    """The largest error of output and gradients, relative to each reference tensor's largest value."""
    for t in (q, k, v):
        t.grad = None
    y = run()
    got = (y, q.grad, k.grad, v.grad)
    return max(((g.float() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want, strict=True))


def graph_us(run, reps: int = 10) -> float:
    """Time of one forward and backward, replayed from a CUDA graph (gradients accumulate: no matter)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            run()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


want = reference()
variants = {
    "cudnn grouped": (SDPBackend.CUDNN_ATTENTION, True),
    "flash grouped": (SDPBackend.FLASH_ATTENTION, True),
    "cudnn copies": (SDPBackend.CUDNN_ATTENTION, False),
    "flash copies": (SDPBackend.FLASH_ATTENTION, False),
    "efficient copies": (SDPBackend.EFFICIENT_ATTENTION, False),
}
flops = 4 * B * H * T * T * DH / 2 * 3.5  # causal forward (2 products), backward 2.5 times the forward
result = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "shape": [B, H, HKV, T, DH], "rows": {}}
for name, (backend, grouped) in variants.items():
    run = variant(backend, grouped)
    try:
        error = check(run, want)
        us = graph_us(run)
    except RuntimeError as e:  # a kernel that does not take these inputs
        result["rows"][name] = {"error": str(e).splitlines()[0][:200]}
        print(f"{name:18s} unavailable: {str(e).splitlines()[0][:100]}")
        continue
    ok = error < 2e-2
    result["rows"][name] = {"us": us, "tflops": flops / us / 1e6, "max_rel_error": error, "ok": ok}
    verdict = "ok" if ok else "WRONG"
    print(f"{name:18s} {us:7.1f} us fwd+bwd  {flops / us / 1e6:5.0f} TFLOP/s  error {error:.1e} {verdict}")
with open(sys.argv[1], "w") as f:
    json.dump(result, f, indent=1)
