"""Compiled decoding of a preset at one batch under decode settings (as decode_e2e.py takes them), with the
registers and spills of every tile kernel variant it compiled (Triton's metadata, on the GPU).
argv: CONFIG CONSTS_JSON BATCH"""

import json
import sys

import torch
from decode_settings import apply

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models.decode_kernels import tiles
from muomni.models.thinker import Thinker

apply(sys.argv[2], "decode_tile_regs_ab.py")
cfg = load_config(sys.argv[1])
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
batch = int(sys.argv[3])
r = _row(model, f"b{batch}", batch, 512, compile=True)
out = {"config": sys.argv[1], "consts": sys.argv[2], "batch": batch, "tokens_per_s_total": r["tokens_per_s_total"],
       "ms_per_step": r["ms_per_step"], "all_runs_tokens_per_s": r["all_runs_tokens_per_s"], "kernels": []}  # fmt: skip
try:  # Triton's caches are internal: what this version keeps where
    for name in ("_tile_norm_qkv_rope", "_tile_norm_gate_up", "_tile_linear_residual"):
        for cache in getattr(tiles, name).device_caches.values():
            for compiled in cache[0].values():
                compiled._init_handles()
                out["kernels"].append({"name": name, "regs": compiled.n_regs, "spills": compiled.n_spills,
                                       "warps": compiled.metadata.num_warps,
                                       "shared": compiled.metadata.shared})  # fmt: skip
except Exception as e:  # noqa: BLE001 - the timing above stands without the metadata
    out["kernels_error"] = f"{type(e).__name__}: {e}"[:300]
print(json.dumps(out), flush=True)
