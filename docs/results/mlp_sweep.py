"""Time the two MLP kernels per config, small preset batch 1, weights rotated past L2."""

import itertools
import json
import sys

import torch
from triton.testing import do_bench

from muomni.models import triton_decode as td

D, F = 768, 2048
res = {}
wg = [torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(16)]
wu = [torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(16)]
wd = [torch.randn(D, F, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(16)]
x = torch.randn(1, D, device="cuda", dtype=torch.bfloat16)
g = torch.ones(D, device="cuda", dtype=torch.bfloat16)
h = torch.randn(1, F, device="cuda", dtype=torch.bfloat16)
out = torch.empty_like(x)
it = [0]


def nxt():
    it[0] = (it[0] + 1) % 16
    return it[0]


for rows, warps in itertools.product((1, 2, 4, 8), (1, 2, 4)):

    def gu():
        i = nxt()
        td._norm_gate_up[(triton_cdiv(F, rows), 1)](
            x, g, wg[i], wu[i], h, x.stride(0), h.stride(0), F, D, 1e-5, ROWS=rows, COLUMNS=1024, num_warps=warps
        )

    import triton

    triton_cdiv = triton.cdiv
    res[f"gate_up_{rows}x{warps}"] = do_bench(gu, warmup=25, rep=100, return_mode="median") * 1e3
    for cols in (512, 1024, 2048):

        def dn():
            i = nxt()
            td._down_residual[(triton.cdiv(D, rows), 1)](
                h,
                wd[i],
                x,
                out,
                h.stride(0),
                x.stride(0),
                out.stride(0),
                D,
                F,
                ROWS=rows,
                COLUMNS=cols,
                num_warps=warps,
            )

        res[f"down_{rows}x{warps}x{cols}"] = do_bench(dn, warmup=25, rep=100, return_mode="median") * 1e3
bg = min((k for k in res if k.startswith("gate_up")), key=res.get)
bd = min((k for k in res if k.startswith("down")), key=res.get)
res["best"] = [bg, bd]
json.dump(res, open(sys.argv[1], "w"), indent=1)
for k, v in sorted(res.items(), key=lambda kv: str(kv[1])):
    print("MLP", k, v)
print("BEST", bg.split("_")[-1], bd.split("_")[-1])
