"""End-to-end compiled decoding of a preset at small batches, with module settings changed first.

argv: CONFIG SETTINGS_JSON BATCHES_JSON; SETTINGS_JSON maps "module.NAME" (a module of muomni.models) to a value,
e.g. {"triton_decode.TILE_MIN_BATCH": 2, "thinker.HEAD_FUSED_MAX_BATCH": 1}. A name the module lacks is refused.
"""

import importlib
import json
import sys

import torch

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models.thinker import Thinker

for key, value in json.loads(sys.argv[2]).items():
    module_name, name = key.rsplit(".", 1)
    module = importlib.import_module(f"muomni.models.{module_name}")
    if not hasattr(module, name):
        sys.exit(f"muomni.models.{module_name} has no {name}")
    setattr(module, name, value)

cfg = load_config(sys.argv[1])
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"config": sys.argv[1], "settings": json.loads(sys.argv[2])}
for b in json.loads(sys.argv[3]):
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
print(json.dumps(out), flush=True)
