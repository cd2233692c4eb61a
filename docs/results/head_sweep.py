"""Time the fused head kernel (RMSNorm + 32000 x 768 GEMV) per config against Inductor-free references; weights rotated past L2."""

import json
import sys

import torch
from triton.testing import do_bench

from muomni.models import triton_decode as td
from muomni.models.layers import RMSNorm

res = {}
V, D = 32000, 768
for batch in (1, 16):
    ws = [torch.randn(V, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(8)]
    x = torch.randn(batch, D, device="cuda", dtype=torch.bfloat16)
    g = torch.ones(D, device="cuda", dtype=torch.bfloat16)
    norm = RMSNorm(D).cuda().to(torch.bfloat16)
    want = torch.nn.functional.linear(norm(x), ws[0])
    it = [0]

    def nxt():
        it[0] = (it[0] + 1) % 8
        return ws[it[0]]

    res[f"b{batch}_cublas_ms"] = do_bench(
        lambda: torch.nn.functional.linear(norm(x), nxt()), warmup=25, rep=100, return_mode="median"
    )
    for rows in (8, 16, 32, 64):
        for warps in (2, 4, 8):
            td.HEAD_ROWS, td.HEAD_WARPS = rows, warps
            got = td.norm_linear(x, g, 1e-5, ws[0])
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            ms = do_bench(lambda: td.norm_linear(x, g, 1e-5, nxt()), warmup=25, rep=100, return_mode="median")
            res[f"b{batch}_{rows}x{warps}"] = {"us": ms * 1e3, "rel_err": err}
best = min((k for k in res if k.startswith("b1_") and "x" in k and "cublas" not in k), key=lambda k: res[k]["us"])
res["best_b1"] = best
json.dump(res, open(sys.argv[1], "w"), indent=1)
for k, v in res.items():
    print("HEAD", k, v)
