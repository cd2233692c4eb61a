"""Time the two MLP kernels per configuration, small preset batch 1, weights rotated past L2."""

import itertools
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from muomni.models import triton_decode as td

D, F, COPIES = 768, 2048, 16
wg = [torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
wu = [torch.randn(F, D, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
wd = [torch.randn(D, F, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(COPIES)]
x = torch.randn(1, D, device="cuda", dtype=torch.bfloat16)
g = torch.ones(D, device="cuda", dtype=torch.bfloat16)
h = torch.randn(1, F, device="cuda", dtype=torch.bfloat16)
out = torch.empty_like(x)


def timed_us(launch) -> float:
    """Median us of ``launch(i)``, ``i`` turning over the weight copies."""
    turn = [0]

    def call() -> None:
        turn[0] = (turn[0] + 1) % COPIES
        launch(turn[0])

    return do_bench(call, warmup=25, rep=100, return_mode="median") * 1e3


def gate_up(rows: int, warps: int):
    def launch(i: int) -> None:
        td._norm_gate_up[(triton.cdiv(F, rows), 1)](
            x, g, wg[i], wu[i], h, x.stride(0), h.stride(0), F, D, 1e-5, ROWS=rows, COLUMNS=1024, num_warps=warps
        )

    return launch


def down(rows: int, warps: int, cols: int):
    def launch(i: int) -> None:
        td._down_residual[(triton.cdiv(D, rows), 1)](
            h, wd[i], x, out, h.stride(0), x.stride(0), out.stride(0), D, F, ROWS=rows, COLUMNS=cols, num_warps=warps
        )

    return launch


res = {}
for rows, warps in itertools.product((1, 2, 4, 8), (1, 2, 4)):
    res[f"gate_up_{rows}x{warps}"] = timed_us(gate_up(rows, warps))
    for cols in (512, 1024, 2048):
        res[f"down_{rows}x{warps}x{cols}"] = timed_us(down(rows, warps, cols))
bg = min((k for k in res if k.startswith("gate_up")), key=res.get)
bd = min((k for k in res if k.startswith("down")), key=res.get)
res["best"] = [bg, bd]
Path(sys.argv[1]).write_text(json.dumps(res, indent=1))
for k, v in sorted(res.items(), key=lambda kv: str(kv[1])):
    print("MLP", k, v)
print("BEST", bg.split("_")[-1], bd.split("_")[-1])
