"""End-to-end compiled decoding of a preset: argv CONFIG CONSTS_JSON BATCHES_JSON.

CONSTS_JSON sets settings of the decode kernels, each on the module that owns it: muomni.models.triton_decode,
split_kv (split-KV attention) or decode_launch (PDL)."""

import json
import sys

import torch
from decode_settings import MODULES, apply

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models.thinker import Thinker

apply(sys.argv[2], "decode_e2e.py")

cfg = load_config(sys.argv[1])
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"config": sys.argv[1], "consts": sys.argv[2], "new": any(hasattr(m, "ATTENTION_WARPS") for m in MODULES)}
for b in json.loads(sys.argv[3]):
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
if "b1" in out and "b16" in out:
    out["ratio16"] = out["b16"]["tokens_per_s_total"] / out["b1"]["tokens_per_s_total"]
print(json.dumps(out), flush=True)
