"""Small preset +all training: timed steps and a kernel profile. argv: variant out.json"""

import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from muomni.bench.train import rows_for
from muomni.config import load_config
from muomni.training.runlog import RunLog
from muomni.training.trainer import Trainer

variant, out = sys.argv[1], sys.argv[2]
DEV = os.environ.get("DEV", "cuda")
keys = [r for r in rows_for(torch.device(DEV)) if r.name == "+all"][0].keys
over = dict(keys)
if variant == "cudnn":
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(True)
if variant == "maxauto":
    over["compile_mode"] = "max-autotune"
if variant == "nochunk":
    over["chunked_ce"] = False
tmp = tempfile.mkdtemp()
cfg = load_config(os.environ.get("PRESET", "small")).replace(
    **over, max_steps=40, warmup_steps=4, val_freq=10**6, checkpoint_freq=10**6, save_dir=tmp, resume="never"
)
t0 = time.time()
tr = Trainer(cfg)
log = RunLog(tr.save_dir, 0, cfg.max_steps, cfg.print_freq)


def step():
    tr.fitted_step(tr.next_batches(), log)
    tr.progress.step += 1
    tr.progress.applied_steps += 1


for _ in range(4):
    step()
(torch.cuda.synchronize() if DEV == "cuda" else None)
setup_s = time.time() - t0
times = []
for _ in range(int(os.environ.get("STEPS", 12))):
    a = time.perf_counter()
    step()
    (torch.cuda.synchronize() if DEV == "cuda" else None)
    times.append(time.perf_counter() - a)
med = statistics.median(times)
res = {
    "variant": variant,
    "setup_s": setup_s,
    "step_ms": med * 1e3,
    "tok_s": (cfg.batch_size * cfg.ctx_len) / med,
    "times": times,
}
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step()
    (torch.cuda.synchronize() if DEV == "cuda" else None)
# Device-side events, the optimizer's user annotation included (counted as "adam": BENCHMARKS.md takes it out).
ks = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
tot = collections.Counter()
cnt = collections.Counter()
for e in ks:
    tot[e.name[:90]] += e.device_time / 3
    cnt[e.name[:90]] += 1
cats = collections.Counter()
for n, t in tot.items():
    low = n.lower()
    c = (
        "gemm"
        if any(s in low for s in ("gemm", "cutlass", "xmma", "nvjet", "sm90", "cublas")) and "flash" not in low
        else "attn"
        if any(s in low for s in ("flash", "fmha", "cudnn", "attention"))
        else "adam"
        if "adam" in low
        else "triton"
        if "triton" in low
        else "other"
    )
    cats[c] += t
starts = sorted((e.time_range.start, e.time_range.end) for e in ks)
span = (starts[-1][1] - starts[0][0]) / 3
res.update(
    kernel_us_per_step=sum(tot.values()),
    span_us_per_step=span,
    categories=dict(cats),
    n_kernels_per_step=len(ks) / 3,
    top=[(n, round(t, 1), cnt[n] // 3) for n, t in tot.most_common(45)],
)
Path(out).write_text(json.dumps(res, indent=1))
print(
    "TRAIN",
    variant,
    "setup",
    round(setup_s),
    "s step",
    round(med * 1e3, 2),
    "ms",
    round((cfg.batch_size * cfg.ctx_len) / med),
    "tok/s kernels",
    round(sum(tot.values())),
    "us span",
    round(span),
    {k: round(v) for k, v in cats.items()},
)
for n, t, c in res["top"][:25]:
    print("  ", round(t), c, n)
