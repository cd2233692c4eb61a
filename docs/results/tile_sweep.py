"""Time the decode step's tile kernels per configuration (small preset, batch 16 and 64), weights rotated
past L2, against cuBLAS's products of the same shapes.

    PYTHONPATH=. python3 docs/results/tile_sweep.py OUT.json

``do_bench`` times back-to-back calls from Python, so a few-microsecond kernel's figure includes its launch:
these rank configurations, they are not kernel times (the decode step's profile gives those).
"""

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from muomni.models import triton_decode as td

D, FF, COPIES = 768, 2048, 16
BF16 = torch.bfloat16
wg = [torch.randn(FF, D, device="cuda", dtype=BF16) * 0.02 for _ in range(COPIES)]
wu = [torch.randn(FF, D, device="cuda", dtype=BF16) * 0.02 for _ in range(COPIES)]
wd = [torch.randn(D, FF, device="cuda", dtype=BF16) * 0.02 for _ in range(COPIES)]
wo = [torch.randn(D, D, device="cuda", dtype=BF16) * 0.02 for _ in range(COPIES)]
gain = torch.ones(D, device="cuda", dtype=BF16)


def timed_us(launch) -> float:
    """Median us of ``launch(i)``, ``i`` turning over the weight copies."""
    turn = [0]

    def call() -> None:
        turn[0] = (turn[0] + 1) % COPIES
        launch(turn[0])

    return do_bench(call, warmup=10, rep=50, return_mode="median") * 1e3


def measure(batch: int) -> dict[str, float | str]:
    x = torch.randn(batch, D, device="cuda", dtype=BF16)
    h = torch.randn(batch, FF, device="cuda", dtype=BF16)
    y = torch.randn(batch, D, device="cuda", dtype=BF16)
    out = torch.empty_like(x)
    rows = max(16, triton.next_power_of_2(batch))
    res: dict[str, float | str] = {
        "cublas_gate_up": timed_us(lambda i: (F.linear(x, wg[i]), F.linear(x, wu[i]))),
        "cublas_down": timed_us(lambda i: F.linear(h, wd[i])),
        "cublas_o": timed_us(lambda i: F.linear(y, wo[i])),
    }
    for bn, bk, warps in itertools.product((16, 32), (128, 256, 512), (2, 4)):
        kw = {"BM": rows, "BN": bn, "BK": bk, "PRECISION": "tf32", "UPCAST": False, "num_warps": warps}
        grid_ff, grid_d = (triton.cdiv(FF, bn),), (triton.cdiv(D, bn),)
        name = f"{bn}x{bk}x{warps}"
        res[f"gate_up_{name}"] = timed_us(
            lambda i, g=grid_ff, kw=kw: td._tile_norm_gate_up[g](
                x, gain, wg[i], wu[i], h, x.stride(0), h.stride(0), batch, FF, D, 1e-5, **kw
            )
        )
        res[f"down_{name}"] = timed_us(
            lambda i, g=grid_d, kw=kw: td._tile_linear_residual[g](
                h, wd[i], x, out, h.stride(0), x.stride(0), out.stride(0), batch, D, FF, **kw
            )
        )
        res[f"o_{name}"] = timed_us(
            lambda i, g=grid_d, kw=kw: td._tile_linear_residual[g](
                y, wo[i], x, out, y.stride(0), x.stride(0), out.stride(0), batch, D, D, **kw
            )
        )
    names = {k.split("_")[-1] for k in res if k.startswith("down_")}
    totals = {n: res[f"gate_up_{n}"] + res[f"down_{n}"] + res[f"o_{n}"] for n in names}
    res["best_common"] = min(totals, key=totals.get)
    return res


results = {f"b{batch}_{k}": v for batch in (16, 64) for k, v in measure(batch).items()}
Path(sys.argv[1]).write_text(json.dumps(results, indent=1))
