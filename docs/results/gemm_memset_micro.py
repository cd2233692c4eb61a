"""The small preset's training GEMMs (bf16, 16,384 tokens) replayed from a CUDA graph under a BLAS setting:
time per product and the memsets the library adds (cuBLAS runs a 4-byte memset before its cooperative
kernels; in a graph each costs about 3 us of idle device time before the product). argv: setting
(default | cublaslt | workspace0) out.json. ``workspace0`` must be set in the environment by the caller
(CUBLAS_WORKSPACE_CONFIG=:0:0) before CUDA starts; it is only recorded here."""

import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

setting, out = sys.argv[1:3]
if setting == "cublaslt":
    torch.backends.cuda.preferred_blas_library("cublaslt")
T, D, F, KV, V = 16384, 768, 2048, 256, 32000
g = torch.Generator("cuda").manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)


# (name, a, b): forward x @ W^T, the input gradient dy @ W, the weight gradient dy^T @ x, for each shape.
shapes = {"q/o": (D, D), "k/v": (KV, D), "gate/up": (F, D), "down": (D, F)}
cases = []
for name, (n_out, n_in) in shapes.items():
    x, w, dy = rand(T, n_in), rand(n_out, n_in), rand(T, n_out)
    cases += [(f"{name} fwd", x, w.t()), (f"{name} dgrad", dy, w), (f"{name} wgrad", dy.t(), x)]
result = {"setting": setting, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "cases": {}}
for name, a, b in cases:
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    reps = 20
    with torch.cuda.graph(graph):
        for _ in range(reps):
            a @ b
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    us = start.elapsed_time(end) * 1e3 / (10 * reps)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    kinds = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    memsets = sum("memset" in k.lower() for k in kinds) / reps
    kernels = sorted({k for k in kinds if "memset" not in k.lower()})
    result["cases"][name] = {"us": us, "tflops": flops / us / 1e6, "memsets_per_product": memsets, "kernels": kernels}
    print(
        f"{setting:10s} {name:14s} {us:7.1f} us {flops / us / 1e6:6.0f} TFLOP/s memsets {memsets:.1f} {kernels[0][:50]}"
    )
total = sum(c["us"] for c in result["cases"].values())
print(f"{setting:10s} all 12 products: {total:.1f} us")
result["total_us"] = total
with open(out, "w") as f:
    json.dump(result, f, indent=1)
