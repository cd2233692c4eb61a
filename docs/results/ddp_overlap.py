"""muomni train under torchrun (DDP, 2 GPUs) on the tiny preset's +all keys, overlap_steps off and on in
turn: tokens/s as the loop logs it (global), losses, and final weights. argv: out.json [steps [pairs]]
(100 steps and 2 pairs by default)"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

KEYS = ["use_amp=true", "amp_dtype=bf16", "use_flash=true", "use_compile=true", "compile_mode=reduce-overhead",
        "chunked_ce=true", "residual_dtype=bf16", "distributed=ddp"]  # fmt: skip
# NVLink multicast stays off on this machine (see the device notes).
ENV = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
PAIRS = int(sys.argv[3]) if len(sys.argv) > 3 else 2


def train(name: str, overlap: str) -> dict:
    d = Path(f"/tmp/ddp_{name}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "muomni", "train",
           "--config", "tiny", *KEYS, f"overlap_steps={overlap}", f"max_steps={STEPS}", f"val_freq={STEPS // 2}",
           f"checkpoint_freq={STEPS}", "print_freq=1", f"save_dir={d}", "resume=never"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    metrics = d / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in rows if "loss" in r]
    run = {"rc": p.returncode, "stdout_head": p.stdout[:1500], "stderr_tail": p.stderr[-1500:],
           "losses": [r["loss"] for r in steps], "lrs": [r["lr"] for r in steps],
           "tokens_per_s": [r["tokens_per_s"] for r in steps],
           "val": [r["val_loss"] for r in rows if "val_loss" in r]}  # fmt: skip
    if len(steps) > 20:
        run["median_tokens_per_s_after_10"] = statistics.median(r["tokens_per_s"] for r in steps[10:])
        run["weights"] = str(sorted((d / "checkpoints").iterdir())[-1] / "model.safetensors")
    overlapped = "overlapped" if "steps overlapped" in p.stdout else "sync"
    print(name, p.returncode, run["val"], run.get("median_tokens_per_s_after_10"), overlapped, flush=True)
    if p.returncode:
        print(p.stderr[-3000:])
    return run


def relative(x: dict, y: dict) -> float:
    return max(((x[k].float() - y[k].float()).norm() / y[k].float().norm()).item() for k in x)


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


res = {}
order = [f"{overlap}_{i}" for i, overlap in enumerate(("false", "true") * PAIRS)]
for name in order:
    res[name] = train(name, name.split("_")[0])
try:
    w = {n: load_file(res[n]["weights"]) for n in order}
    res["weights_rel_sync_vs_overlap"] = relative(w[order[1]], w[order[0]])
    res["weights_rel_sync_vs_sync"] = relative(w[order[2]], w[order[0]])
    res["lrs_equal"] = res[order[0]]["lrs"] == res[order[1]]["lrs"]
    res["loss_maxdiff_sync_vs_overlap"] = max_diff(res[order[0]]["losses"], res[order[1]]["losses"])
    res["loss_maxdiff_sync_vs_sync"] = max_diff(res[order[0]]["losses"], res[order[2]]["losses"])
except Exception as e:  # a run that failed: its error is in the file
    res["compare_error"] = repr(e)
print({k: v for k, v in res.items() if not isinstance(v, dict)})
with open(sys.argv[1], "w") as f:
    json.dump(res, f, indent=1)
