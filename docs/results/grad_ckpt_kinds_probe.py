"""Gradient checkpointing's kinds, timed: the small preset's eager fp16 step (SDPA, no compile), muomni and HF.

Times forward + fp32 cross-entropy + backward (no optimizer) for muomni's Thinker and its Hugging Face
Llama twin, without checkpointing and with three kinds of torch.utils.checkpoint (non-reentrant, the same
without preserving the RNG state, reentrant), and profiles two steps without and with the non-reentrant kind.

Ran as ``PYTHONPATH=. python3 docs/results/grad_ckpt_kinds_probe.py OUT`` on an H200 (2026-11-30 14:54 UTC,
torch 2.11.0+cu130, transformers 5.17.0); results in ``h200_grad_ckpt_kinds/probe*``. ``DEV=cpu
PRESET=debug`` runs it on a CPU (host timing only).
"""

import itertools
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from muomni.bench.hf_twin import llama_twin
from muomni.config import load_config
from muomni.models.thinker import Thinker

out = sys.argv[1]
dev = torch.device(os.environ.get("DEV", "cuda"))
cfg = load_config(os.environ.get("PRESET", "small"), warn_ignored=False).replace(
    use_flash=True, use_amp=True, amp_dtype="fp16"
)
torch.manual_seed(0)
tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.ctx_len + 1), device=dev)


def make(kind, variant):
    torch.manual_seed(0)
    base = Thinker(cfg)
    if kind == "hf":
        m = llama_twin(base, "sdpa").to(dev).train()
        if variant:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=variant)

        def fwd(x):
            return m(input_ids=x).logits

    else:
        m = base.to(dev).train()
        if variant:
            for block in m.model.layers:
                block.forward = partial(checkpoint, type(block).forward, block, **variant)
        fwd = m
    return m, fwd


def step(m, fwd):
    with torch.autocast(dev.type, torch.float16 if dev.type == "cuda" else torch.bfloat16):
        logits = fwd(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    for p in m.parameters():
        p.grad = None


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(m, fwd, n=10):
    if dev.type != "cuda":
        step(m, fwd)
        t0 = time.perf_counter()
        step(m, fwd)
        return {"host_ms": (time.perf_counter() - t0) * 1e3}
    for _ in range(3):
        step(m, fwd)
    sync()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    host = []
    ev[0].record()
    for e in ev[1:]:
        t0 = time.perf_counter()
        step(m, fwd)
        host.append(time.perf_counter() - t0)
        e.record()
    sync()
    ms = sorted(a.elapsed_time(b) for a, b in itertools.pairwise(ev))
    return {"device_ms_median": ms[n // 2], "host_ms_median": sorted(host)[n // 2] * 1e3}


variants = {
    "none": None,
    "nonreentrant": {"use_reentrant": False},
    "nonreentrant_norng": {"use_reentrant": False, "preserve_rng_state": False},
    "reentrant": {"use_reentrant": True},
}
results = {}
for kind in ("muomni", "hf"):
    for vname, v in variants.items():
        m, fwd = make(kind, v)
        r = timed(m, fwd)
        r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0
        results[f"{kind}/{vname}"] = r
        print(kind, vname, r, flush=True)
        if vname in ("none", "nonreentrant"):
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step(m, fwd)
                sync()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=45)
            Path(f"{out}/prof_{kind}_{vname}.txt").write_text(table)
            prof.export_chrome_trace(f"{out}/trace_{kind}_{vname}.json")
        del m, fwd
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
Path(f"{out}/ckpt_probe.json").write_text(json.dumps(results, indent=1))
