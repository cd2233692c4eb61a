"""Batch-1 compiled decode under the inductor settings named in the environment; kernel table of one step."""
import json, os, sys, time, torch
from muomni.bench.infer import _row, PROMPT_TOKENS
from muomni.config import load_config
from muomni.models.thinker import Thinker
TUNE = os.environ.get("AB_TUNING", "0") == "1"

preset, flash = sys.argv[1], sys.argv[2] == "flash"
cfg = load_config(preset, [] if flash else ["use_flash=false"])
torch.manual_seed(cfg.seed)
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = Thinker(cfg).to(dev).eval().to(torch.bfloat16)
model.enable_kv_cache(True)
new = cfg.ctx_len - PROMPT_TOKENS
t0 = time.perf_counter()
row = _row(model, "KV cache + compile", 1, new, compile=True, tune=TUNE)
out = {"preset": preset, "attention": "sdpa" if flash else "math",
       "flags": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")},
       "tokens_per_s": row["tokens_per_s_total"], "ms_per_step": row["ms_per_step"],
       "all_runs": row["all_runs_tokens_per_s"], "tuning": TUNE, "warmup_s": row["warmup_s"], "compile_s": row["compile_s"], "wall_s": time.perf_counter() - t0}
# One profiled generation: kernels per decoded token and the top kernels by device time.
from muomni.bench.infer import decode
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    decode(model, 1, 64, True, True, torch.inference_mode, TUNE)
    torch.cuda.synchronize() if dev == "cuda" else None
events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
out["cuda_kernels_in_64_tokens"] = len(events)
out["kernel_us_total"] = sum(e.device_time for e in events) if events else None
tab = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
print(tab, file=sys.stderr)
print(json.dumps(out))
