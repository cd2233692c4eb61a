"""Batch-1 generation on the CPU in fp32 against bf16 weights (the inference ``--dtype``), eager with the KV
cache, greedy, random weights: time to first token of a 200-token prompt and decode tokens/s over 64 new
tokens, for the default job's model, the tiny and the small preset, the two dtypes alternating, three rounds.
argv: out.json"""

import json
import sys

import torch

from muomni.config import load_config
from muomni.inference.generate import generate_tokens
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker

results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": []}
for preset in ("default", "tiny", "small"):
    torch.manual_seed(0)
    cfg = load_config(preset)
    model = Thinker(cfg).eval()
    model.enable_kv_cache(True)
    prompt = torch.randint(0, cfg.vocab_size, (min(200, cfg.ctx_len // 2),)).tolist()
    for round_ in range(3):
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            generate_tokens(model, [prompt[:8]], 8, temperature=0.0)  # warm
            stats = GenerationStats()
            generate_tokens(model, [prompt], 64, temperature=0.0, stats=stats)
            row = {
                "preset": preset,
                "dtype": str(dtype),
                "round": round_,
                "ttft_s": stats.time_to_first_token_s,
                "decode_tokens_per_s": stats.decode_tokens_per_s,
            }
            results["rows"].append(row)
            print(row, flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
