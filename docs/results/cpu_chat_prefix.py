"""A chat turn's time to first token on the CPU, the small preset in bf16, random weights: a 600-token
conversation plus a 20-token message, run again whole (``rerun``) or after the conversation kept in the KV
cache (``kept``, a KVPrefix). Three turns a run, two runs each way, alternating. argv: out.json"""

import json
import statistics
import sys

import torch

from muomni.config import load_config
from muomni.inference.generate import generate_tokens
from muomni.inference.prefix import KVPrefix
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker

torch.manual_seed(0)
cfg = load_config("small")
model = Thinker(cfg).eval().to(torch.bfloat16)
model.enable_kv_cache(True)
history = torch.randint(0, cfg.vocab_size, (600,)).tolist()
runs = []
for mode in ("rerun", "kept", "rerun", "kept"):
    prefix = KVPrefix() if mode == "kept" else None
    generate_tokens(model, [history], 16, temperature=0.0, prefix=prefix)  # the turn before
    seconds = []
    for turn in range(3):
        message = list(range(100 + 20 * turn, 120 + 20 * turn))
        stats = GenerationStats()
        generate_tokens(model, [history + message], 16, temperature=0.0, prefix=prefix, stats=stats)
        seconds.append(stats.time_to_first_token_s)
        if prefix is not None:  # back to the conversation without this message, as the rerun starts from
            generate_tokens(model, [history], 16, temperature=0.0, prefix=prefix)
    runs.append({"mode": mode, "time_to_first_token_s": seconds, "median": statistics.median(seconds)})
    print(mode, [round(s, 3) for s in seconds], flush=True)
with open(sys.argv[1], "w") as f:
    json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs}, f, indent=1)
