"""muomni train under torchrun (DDP, 2 GPUs) with a preset's +all keys, weight_dtype=fp32 and bf16 in turn:
the loop's logged tokens/s (global), losses and validation losses. argv: PRESET out.json [steps [pairs]]
(100 steps, 2 pairs by default; FIRST=bf16 in the environment starts each pair with bf16). First, unless
the environment has NO_TEST_MODEL=1, on the test model of tests/distributed (device cuda, eager, 4 steps),
weight_dtype=bf16: 2 ranks x batch 2 against 1 process accumulating 2 micro-batches of 2, the relative
error of the worst weight tensor, next to the same comparison with fp32 weights."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "training")]
from training_helpers import overrides, tiny_settings, write_corpus  # noqa: E402

KEYS = ["use_amp=true", "amp_dtype=bf16", "use_flash=true", "use_compile=true", "compile_mode=reduce-overhead",
        "chunked_ce=true", "residual_dtype=bf16", "distributed=ddp"]  # fmt: skip
# NVLink multicast stays off on this machine (see the device notes).
ENV = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
PRESET, OUT = sys.argv[1], sys.argv[2]
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 100
PAIRS = int(sys.argv[4]) if len(sys.argv) > 4 else 2


def launcher(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "muomni"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m", "muomni"]


def metrics(d: Path) -> list[dict]:
    path = d / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def preset_run(name: str, weight_dtype: str) -> dict:
    d = Path(f"/tmp/ddp_wd_{PRESET}_{name}")
    cmd = [*launcher(2), "train", "--config", PRESET, *KEYS, f"weight_dtype={weight_dtype}",
           f"max_steps={STEPS}", f"val_freq={STEPS}", f"checkpoint_freq={STEPS}", "print_freq=1",
           f"save_dir={d}", "resume=never"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=560)
    rows = metrics(d)
    steps = [r for r in rows if "loss" in r]
    run = {"rc": p.returncode, "stdout_head": p.stdout[:1500], "stderr_tail": p.stderr[-1500:],
           "losses": [r["loss"] for r in steps], "tokens_per_s": [r["tokens_per_s"] for r in steps],
           "val": [r["val_loss"] for r in rows if "val_loss" in r]}  # fmt: skip
    if len(steps) > 20:
        run["median_tokens_per_s_after_10"] = statistics.median(r["tokens_per_s"] for r in steps[10:])
    print(name, p.returncode, run["val"], run.get("median_tokens_per_s_after_10"), flush=True)
    if p.returncode:
        print(p.stderr[-3000:])
    return run


def relative(x: dict, y: dict) -> tuple[str, float]:
    errors = {k: ((x[k].float() - y[k].float()).norm() / y[k].float().norm()).item() for k in y}
    worst = max(errors, key=errors.get)
    return worst, errors[worst]


def test_model_check(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    write_corpus(work / "corpus.txt")
    out = {}
    for weight_dtype in ("bf16", "fp32"):
        keys = {"device": "cuda", "use_amp": True, "amp_dtype": "bf16", "weight_dtype": weight_dtype, "dropout": 0.0}
        final = {}
        runs = (("single", 1, {"gradient_accumulation_steps": 2}), ("ddp", 2, {"distributed": "ddp"}))
        for name, procs, more in runs:
            d = work / f"{weight_dtype}_{name}"
            s = tiny_settings(work / "corpus.txt", d, batch_size=2, max_steps=4, **keys, **more)
            env = {**ENV, "MUOMNI_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
            p = subprocess.run([*launcher(procs), "train", *overrides(s)], capture_output=True, text=True, env=env,
                               cwd=ROOT, timeout=300)  # fmt: skip
            if p.returncode:
                print(p.stderr[-3000:])
                out[f"{weight_dtype}_{name}_rc"] = p.returncode
                break
            ckpt = sorted((d / "checkpoints").iterdir())[-1]
            final[name] = load_file(str(ckpt / "model.safetensors"))
            out[f"{weight_dtype}_{name}_losses"] = [r["loss"] for r in metrics(d) if "loss" in r]
        if len(final) == 2:
            out[f"{weight_dtype}_worst_relative_error"] = relative(final["ddp"], final["single"])
        print(weight_dtype, {k: v for k, v in out.items() if k.startswith(weight_dtype)}, flush=True)
    return out


res = {"preset": PRESET, "keys": KEYS, "steps": STEPS}
if os.environ.get("NO_TEST_MODEL") != "1":
    res["test_model"] = test_model_check(Path("/tmp/ddp_wd_test_model"))
# FIRST=bf16 in the environment runs each pair the other way round.
order = ("bf16", "fp32") if os.environ.get("FIRST") == "bf16" else ("fp32", "bf16")
for i, weight_dtype in enumerate(order * PAIRS):
    res[f"{weight_dtype}_{i}"] = preset_run(f"{weight_dtype}_{i}", weight_dtype)
print({k: v for k, v in res.items() if not isinstance(v, dict)})
with open(OUT, "w") as f:
    json.dump(res, f, indent=1)
