"""End-to-end compiled decoding of a preset: argv CONFIG CONSTS_JSON BATCHES_JSON."""

import json
import sys

import torch

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models import triton_decode as td
from muomni.models.thinker import Thinker

for k, v in json.loads(sys.argv[2]).items():
    if not hasattr(td, k):  # a misspelt setting would make a new attribute and change nothing
        sys.exit(f"decode_e2e.py: muomni.models.triton_decode has no {k}")
    setattr(td, k, v)

cfg = load_config(sys.argv[1])
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"config": sys.argv[1], "consts": sys.argv[2], "new": hasattr(td, "ATTENTION_WARPS")}
for b in json.loads(sys.argv[3]):
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
if "b1" in out and "b16" in out:
    out["ratio16"] = out["b16"]["tokens_per_s_total"] / out["b1"]["tokens_per_s_total"]
print(json.dumps(out), flush=True)
