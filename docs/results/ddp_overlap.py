"""muomni train under torchrun (DDP, 2 GPUs) on the tiny preset's +all keys, overlap_steps off and on in
turn: tokens/s as the loop logs it (global), losses, and final weights. argv: out.json"""
import json, os, subprocess, sys, statistics
from pathlib import Path
from safetensors.torch import load_file

keys = ("use_amp=true amp_dtype=bf16 use_flash=true use_compile=true compile_mode=reduce-overhead chunked_ce=true "
        "residual_dtype=bf16 distributed=ddp").split()
env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
res, order = {}, []
for i, overlap in enumerate(("false", "true", "false", "true")):
    name = f"{overlap}_{i}"
    d = Path(f"/tmp/ddp_{name}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "muomni", "train",
           "--config", "tiny", *keys, f"overlap_steps={overlap}", "max_steps=100", "val_freq=50",
           "checkpoint_freq=100", "print_freq=1", f"save_dir={d}", "resume=never"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=200)
    m = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()] if (d / "metrics.jsonl").exists() else []
    steps = [r for r in m if "loss" in r]
    res[name] = {"rc": p.returncode, "stdout_head": p.stdout[:1500], "stderr_tail": p.stderr[-1500:],
                 "losses": [r["loss"] for r in steps], "lrs": [r["lr"] for r in steps],
                 "tokens_per_s": [r["tokens_per_s"] for r in steps],
                 "val": [r["val_loss"] for r in m if "val_loss" in r]}
    if len(steps) > 20:
        res[name]["median_tokens_per_s_after_10"] = statistics.median(r["tokens_per_s"] for r in steps[10:])
        ck = sorted((d / "checkpoints").iterdir())[-1]
        res[name]["weights"] = str(ck / "model.safetensors")
    order.append(name)
    print(name, p.returncode, res[name]["val"], res[name].get("median_tokens_per_s_after_10"),
          "overlapped" if "steps overlapped" in p.stdout else "sync", flush=True)
    if p.returncode:
        print(p.stderr[-3000:])
try:
    rel = lambda x, y: max(((x[k].float() - y[k].float()).norm() / y[k].float().norm()).item() for k in x)
    w = {n: load_file(res[n]["weights"]) for n in order}
    res["weights_rel_sync_vs_overlap"] = rel(w[order[1]], w[order[0]])
    res["weights_rel_sync_vs_sync"] = rel(w[order[2]], w[order[0]])
    res["lrs_equal"] = res[order[0]]["lrs"] == res[order[1]]["lrs"]
    res["loss_maxdiff_sync_vs_overlap"] = max(abs(a - b) for a, b in zip(res[order[0]]["losses"], res[order[1]]["losses"]))
    res["loss_maxdiff_sync_vs_sync"] = max(abs(a - b) for a, b in zip(res[order[0]]["losses"], res[order[2]]["losses"]))
except Exception as e:
    res["compare_error"] = repr(e)
print({k: v for k, v in res.items() if not isinstance(v, dict)})
json.dump(res, open(sys.argv[1], "w"), indent=1)
