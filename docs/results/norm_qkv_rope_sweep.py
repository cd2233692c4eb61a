"""The attention-input kernel (``muomni.models.triton_decode.norm_qkv_rope``) alone, per configuration.

    PYTHONPATH=. python3 docs/results/norm_qkv_rope_sweep.py OUT.json

Weights not in L2: R weight sets (more than L2 holds) are used in turn inside one CUDA graph; the median
time per call is reported for each pairs x warps configuration, and for Inductor's tuned composition of the
same ops (RMSNorm, three projections, RoPE, two ``index_copy_``) on the same rotation. ``err``: the relative
error of q and of the written key and value against an fp32 computation.
"""

# ruff: noqa: B023  (the closures run within the iteration that defines them)
import itertools
import json
import sys

import torch
from triton.testing import do_bench_cudagraph

import muomni.models.triton_decode as td
from muomni.models.layers import apply_rope, rope_tables

CASES = {"small_b1": (1, 768, 12, 4), "tiny_b1": (1, 256, 4, 2), "small_b16": (16, 768, 12, 4)}  # B, D, H, H_kv
SLOTS, POS, L2_BYTES = 1024, 500, 160e6


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def main(out_path: str) -> None:
    results = {}
    for name, (b, d, h, hk) in CASES.items():
        dh, dt = d // h, torch.bfloat16
        sets_needed = min(512, max(8, int(L2_BYTES // ((h + 2 * hk) * dh * d * 2))))
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(b, d, device="cuda", dtype=dt, generator=g) * 2
        gain = (1 + 0.1 * torch.randn(d, device="cuda", generator=g)).to(dt)
        sets = [
            tuple((0.03 * torch.randn(n * dh, d, device="cuda", generator=g)).to(dt) for n in (h, hk, hk))
            for _ in range(sets_needed)
        ]
        cos_table, sin_table = (t.cuda() for t in rope_tables(dh, SLOTS, 10000.0))
        cos, sin = cos_table[POS], sin_table[POS]
        pos = torch.tensor([POS], device="cuda")
        k_cache = torch.randn(b, hk, SLOTS, dh, device="cuda", dtype=dt)
        v_cache = torch.randn_like(k_cache)

        def composed(x, wq, wk, wv, k_cache, v_cache):  # noqa: ANN001, ANN202
            x32 = x.float()
            normed = gain * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt)
            q, k, v = ((normed @ w.t()).view(b, 1, -1, dh).transpose(1, 2) for w in (wq, wk, wv))
            q, k = apply_rope(q, cos[None], sin[None]), apply_rope(k, cos[None], sin[None])
            k_cache.index_copy_(2, pos, k)
            v_cache.index_copy_(2, pos, v)
            return q

        x32 = x.float()
        normed32 = gain.float() * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5))
        q32, k32, v32 = ((normed32 @ w.float().t()).view(b, 1, -1, dh).transpose(1, 2) for w in sets[0])
        q32, k32 = apply_rope(q32, cos[None], sin[None]), apply_rope(k32, cos[None], sin[None])

        compiled = torch.compile(composed, options={"coordinate_descent_tuning": True})
        compiled(x, *sets[0], k_cache.clone(), v_cache.clone())

        def run_inductor() -> None:
            for weights in sets:
                compiled(x, *weights, k_cache, v_cache)

        row = {"R": sets_needed, "inductor_tuned_us": 1e3 * do_bench_cudagraph(run_inductor, rep=300) / sets_needed}
        for pairs, warps in itertools.product((2, 4, 8, 16), (1, 2, 4, 8)):
            td.PAIRS, td.QKV_WARPS = pairs, warps
            k2, v2 = k_cache.clone(), v_cache.clone()
            got = td.norm_qkv_rope(x, gain, 1e-5, sets[0], None, cos_table, sin_table, pos, k2, v2)
            err = max(
                relative_error(got, q32),
                relative_error(k2[:, :, POS], k32[:, :, 0]),
                relative_error(v2[:, :, POS], v32[:, :, 0]),
            )

            def run_kernel(k2: torch.Tensor = k2, v2: torch.Tensor = v2) -> None:
                for weights in sets:
                    td.norm_qkv_rope(x, gain, 1e-5, weights, None, cos_table, sin_table, pos, k2, v2)

            us = 1e3 * do_bench_cudagraph(run_kernel, rep=300) / sets_needed
            row[f"{pairs}x{warps}x{td.MAX_COLUMNS}"] = {"us": us, "err": err}
        best = min((k for k in row if "x" in k), key=lambda k: row[k]["us"])
        print(name, "inductor", round(row["inductor_tuned_us"], 2), "best", best, round(row[best]["us"], 2), flush=True)
        results[name] = row
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
