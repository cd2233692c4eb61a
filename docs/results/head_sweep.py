"""Time the fused head kernel (RMSNorm + 32000 x 768 GEMV) per configuration, weights rotated past L2,
against the eager norm and cuBLAS's linear; the relative error is against the eager result."""

import json
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

from muomni.models import triton_decode as td
from muomni.models.layers import RMSNorm

V, D, COPIES = 32000, 768, 8


def timed(fn, weights: list[torch.Tensor]) -> float:
    """Median ms of ``fn(weight)``, each call on the next of ``weights``."""
    turn = [0]

    def call() -> None:
        turn[0] = (turn[0] + 1) % len(weights)
        fn(weights[turn[0]])

    return do_bench(call, warmup=25, rep=100, return_mode="median")


res = {}
for batch in (1, 16):
    ws = [torch.randn(V, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
    x = torch.randn(batch, D, device="cuda", dtype=torch.bfloat16)
    g = torch.ones(D, device="cuda", dtype=torch.bfloat16)
    norm = RMSNorm(D).cuda().to(torch.bfloat16)
    want = torch.nn.functional.linear(norm(x), ws[0])
    res[f"b{batch}_cublas_ms"] = timed(lambda w, x=x, norm=norm: torch.nn.functional.linear(norm(x), w), ws)
    for rows in (8, 16, 32, 64):
        for warps in (2, 4, 8):
            td.HEAD_ROWS, td.HEAD_WARPS = rows, warps
            got = td.norm_linear(x, g, 1e-5, ws[0])
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            ms = timed(lambda w, x=x, g=g: td.norm_linear(x, g, 1e-5, w), ws)
            res[f"b{batch}_{rows}x{warps}"] = {"us": ms * 1e3, "rel_err": err}
configs = [k for k in res if k.startswith("b1_") and "cublas" not in k]
res["best_b1"] = min(configs, key=lambda k: res[k]["us"])
Path(sys.argv[1]).write_text(json.dumps(res, indent=1))
for k, v in res.items():
    print("HEAD", k, v)
