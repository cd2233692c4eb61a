"""The tiny preset end to end at batch 1 and 16, gate/up's one-step tiles as they are or 32 columns on 4 warps.

    PYTHONPATH=. python3 docs/results/decode_e2e_tiny_gate_up.py now|wide4

``wide4`` is the fastest configuration of the kernel sweep for the tiny preset's 256-deep gate/up
(docs/results/h200_tile_stages.json: 2.85 us a layer against 3.0); one variant per process.
"""

import json
import sys

import torch

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models import triton_decode as td
from muomni.models.thinker import Thinker

variant = sys.argv[1]
if variant == "wide4":
    shape = td._gate_up_shape

    def wide(batch: int, dtype: torch.dtype, dim: int) -> dict:
        tile = shape(batch, dtype, dim)
        if dim < td.SPLIT_MIN_DEPTH and tile["BM"] == 16:
            tile = {**tile, "BN": 32, "num_warps": 4}
        return tile

    td._gate_up_shape = wide
cfg = load_config("tiny")
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"variant": variant}
for b in (1, 16):
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
out["ratio16"] = out["b16"]["tokens_per_s_total"] / out["b1"]["tokens_per_s_total"]
print(json.dumps(out), flush=True)
