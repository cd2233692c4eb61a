"""Batch-1 compiled decoding rows of BENCHMARKS.md's decode-step tables, with a profiled 64-token run.

    PYTHONPATH=. python3 docs/results/decode_graphs.py PRESET OUT.json plain,tune

For each variant (``plain``: ``KV cache + compile``; ``tune``: ``+ tune``) it measures the bench's own
row over the whole context (the bench itself stops at 512 new tokens), then counts the device kernels
of a profiled 64-token generation and their total time, and prints the top kernels by device time.
The variants of the tables (unrolled chunks, FlexAttention, the first split-KV kernels) are the code
of the commits the tables name.
"""

import json
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from muomni.bench.infer import PROMPT_TOKENS, _row, decode
from muomni.config import load_config
from muomni.models.thinker import Thinker


def main(preset: str, out_path: str, variants: list[str]) -> None:
    cfg = load_config(preset)
    torch.manual_seed(cfg.seed)
    model = Thinker(cfg).to("cuda").eval().to(torch.bfloat16)
    model.enable_kv_cache(True)
    new = cfg.ctx_len - PROMPT_TOKENS  # the whole context: 496 tokens for tiny, 1,008 for small
    results = {"preset": preset, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "rows": []}
    for variant in variants:
        tune = variant == "tune"
        started = time.perf_counter()
        row = _row(model, "KV cache + compile" + (" + tune" if tune else ""), 1, new, compile=True, tune=tune)
        row["wall_s"] = time.perf_counter() - started
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            decode(model, 1, 64, True, True, torch.inference_mode, tune)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        row["kernels_in_64_tokens"] = len(kernels)
        row["kernel_us_in_64_tokens"] = sum(e.device_time for e in kernels)
        results["rows"].append(row)
        print(variant, f"{row['tokens_per_s_total']:.0f} tokens/s", f"compile {row['compile_s']:.0f} s", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90))
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3].split(","))
