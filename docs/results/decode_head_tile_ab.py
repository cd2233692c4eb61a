"""End-to-end compiled decoding with the output head as muomni's tensor-core tiles (``tiles``: the norm folded
in, one kernel with PDL) or as the modules (``modules``: Inductor's norm, then cuBLAS's product), for the
batches that take the tiles. argv: preset variant BATCHES_JSON; prints one JSON line. Runs on commit c5d822c
(``decode_ops.HEAD_TILES``), whose tile head was reverted after this A/B."""

import json
import sys

import torch

from muomni.bench.infer import _row
from muomni.config import load_config
from muomni.models import decode_ops
from muomni.models.thinker import Thinker

preset, variant, batches = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
decode_ops.HEAD_TILES = variant == "tiles"
cfg = load_config(preset)
torch.manual_seed(cfg.seed)
model = Thinker(cfg).cuda().eval().to(torch.bfloat16)
out = {"preset": preset, "variant": variant}
for b in batches:
    r = _row(model, f"b{b}", b, 512, compile=True)
    out[f"b{b}"] = {k: r[k] for k in ("tokens_per_s_total", "ms_per_step", "all_runs_tokens_per_s")}
print(json.dumps(out), flush=True)
