"""Kernel-only decode attention at batch 16/64 (12 or 4 layers' caches, CUDA graph): split + merge as now
vs one program per row (WHOLE), over block x stages x warps; plus gate/up columns at other batches.
Checks each against math attention. argv: OUT.json"""

import itertools
import json
import sys
import time

import torch
import triton
from triton.testing import do_bench_cudagraph

from muomni.config import load_config
from muomni.models import split_kv as da
from muomni.models import triton_decode as td
from muomni.models.layers import math_attention
from muomni.models.thinker import Thinker

SHAPES = {"small": (12, 4, 1024, 12, [16, 64]), "tiny": (4, 2, 512, 4, [16])}
res = {
    "torch": torch.__version__,
    "triton": triton.__version__,
    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
}
defaults = {
    k: getattr(da, k)
    for k in ("BLOCK", "WIDE_BLOCK", "ATTENTION_WARPS", "ATTENTION_STAGES", "WHOLE_MIN_ROWS", "MAX_SPLITS")
}
configs = [("split", {})] + [(f"split{s}_b64", {"MAX_SPLITS": s, "BLOCK": 64, "WIDE_BLOCK": 64}) for s in (2, 4)]
configs += [
    (
        f"whole_b{b}_s{st}_w{w}",
        {"WHOLE_MIN_ROWS": 1, "BLOCK": b, "WIDE_BLOCK": b, "ATTENTION_STAGES": st, "ATTENTION_WARPS": w},
    )
    for b, st, w in itertools.product((32, 64, 128), (2, 3, 4), (2, 4))
]
for name, (H, KV, S, L, batches) in SHAPES.items():
    for batch in batches:
        torch.manual_seed(0)
        q = torch.randn(batch, H, 1, 64, device="cuda", dtype=torch.bfloat16)
        caches = [
            (
                torch.randn(batch, KV, S, 64, device="cuda", dtype=torch.bfloat16),
                torch.randn(batch, KV, S, 64, device="cuda", dtype=torch.bfloat16),
            )
            for _ in range(L)
        ]
        for pos in (40, 272, 500):
            valid = torch.zeros(batch, S, dtype=torch.bool, device="cuda")
            valid[:, : pos + 1] = True
            last = torch.tensor([pos], device="cuda")
            k0, v0 = caches[0]
            want = math_attention(q.float(), k0.float(), v0.float(), valid[:, None, None, :], 0.0)
            row = {}
            for cname, over in configs:
                for k, v in {**defaults, **over}.items():
                    setattr(da, k, v)
                try:
                    got = da.split_kv_attention(q, k0, v0, valid, last).float()
                    err = (got - want).abs().max().item()

                    def run(caches=caches, q=q, valid=valid, last=last):
                        for k, v in caches:
                            da.split_kv_attention(q, k, v, valid, last)

                    us = do_bench_cudagraph(run, rep=60, return_mode="median") * 1e3 / L
                    row[cname] = {"us": round(us, 2), "max_err": err}
                except Exception as e:
                    row[cname] = {"error": str(e)[:200]}
            for k, v in defaults.items():
                setattr(da, k, v)
            res[f"{name}_b{batch}_pos{pos}"] = row
            best = sorted((r["us"], c) for c, r in row.items() if "us" in r)[:4]
            print(
                name,
                batch,
                pos,
                "split",
                row["split"].get("us"),
                "best",
                best,
                "maxerr",
                round(max(r.get("max_err", 0) for r in row.values()), 4),
                flush=True,
            )
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)

# gate/up tile columns at other batches (small preset, 12 layers)
cfg = load_config("small")
model = Thinker(cfg).cuda().to(torch.bfloat16).eval()
layers = list(model.model.layers)
for batch, bn in itertools.product((5, 16, 32, 64), (16, 32, 64)):
    x = torch.randn(batch, cfg.d_model, device="cuda", dtype=torch.bfloat16)
    h = torch.empty(batch, cfg.d_ff, device="cuda", dtype=torch.bfloat16)
    td.GATE_UP_COLUMNS = bn
    tile = td._gate_up_shape(batch, torch.bfloat16, cfg.d_model)

    def run(x=x, h=h, batch=batch, tile=tile):
        for layer in layers:
            m = layer.mlp
            td._tile_norm_gate_up[(triton.cdiv(cfg.d_ff, tile["BN"]),)](
                x,
                layer.post_attention_layernorm.weight,
                m.gate_proj.weight,
                m.up_proj.weight,
                h,
                x.stride(0),
                h.stride(0),
                batch,
                cfg.d_ff,
                cfg.d_model,
                1e-5,
                **tile,
            )

    try:
        us = do_bench_cudagraph(run, rep=60, return_mode="median") * 1e3 / len(layers)
        res[f"gateup_b{batch}_bn{bn}"] = round(us, 2)
    except Exception as e:
        res[f"gateup_b{batch}_bn{bn}"] = str(e)[:200]
print({k: v for k, v in res.items() if k.startswith("gateup")}, flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(res, f, indent=1)
