"""The decode-step A/B of BENCHMARKS.md: batch-1 compiled decoding, then a kernel table of a profiled run.

    PYTHONPATH=. [AB_TUNING=1] [TORCHINDUCTOR_...=1] python3 docs/results/decode_ab.py PRESET flash|math

Prints one JSON line (tokens/s as the bench's ``KV cache + compile`` row measures it, compile time, the
number of device kernels and their total time in a profiled 64-token generation); the kernel table, top
operators by device time, goes to standard error. Inductor settings are read from the environment.
"""

import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from muomni.bench.infer import PROMPT_TOKENS, _row, decode
from muomni.config import load_config
from muomni.models.thinker import Thinker

TUNE = os.environ.get("AB_TUNING", "0") == "1"


def main(preset: str, attention: str) -> None:
    cfg = load_config(preset, [] if attention == "flash" else ["use_flash=false"])
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Thinker(cfg).to(device).eval().to(torch.bfloat16)
    model.enable_kv_cache(True)
    started = time.perf_counter()
    row = _row(model, "KV cache + compile", 1, cfg.ctx_len - PROMPT_TOKENS, compile=True, tune=TUNE)
    out = {
        "preset": preset,
        "attention": "sdpa" if attention == "flash" else "math",
        "flags": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")},
        "tokens_per_s": row["tokens_per_s_total"],
        "ms_per_step": row["ms_per_step"],
        "all_runs": row["all_runs_tokens_per_s"],
        "tuning": TUNE,
        "warmup_s": row["warmup_s"],
        "compile_s": row["compile_s"],
        "wall_s": time.perf_counter() - started,
    }
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        decode(model, 1, 64, True, True, torch.inference_mode, TUNE)
        if device == "cuda":
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    out["cuda_kernels_in_64_tokens"] = len(kernels)
    out["kernel_us_total"] = sum(e.device_time for e in kernels) if kernels else None
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    print(table, file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
