"""The host's work a training step in eager mode, muomni's Thinker against Hugging Face's Llama twin, on a CPU.

Widths so small (4 layers of width 64, 16 tokens: the tiny preset's depth) that a step's time is the host's
work: Python, the dispatcher and autograd, which is what the tiny preset's eager rows wait for on a fast GPU.
Each pair computes the same loss from the same weights (checked); forward, fp32 loss, backward, best of 5
rounds of 20 steps, one thread.

    PYTHONPATH=. python docs/results/eager_host_probe.py

On a 2-core CPU, torch 2.13.0, transformers 5.24.0 (2026-11-30 17:33 UTC), muomni against HF: fp32 eager 4.33
against 4.78 ms, bf16 autocast eager 7.75 against 7.96, bf16 autocast sdpa 6.80 against 7.10 (0.90, 0.97, 0.96
of HF's time; the same loss in each pair). A second run: 4.20/4.72, 7.91/8.45, 6.66/7.19 (0.89, 0.94, 0.93).
"""

import time

import torch
import torch.nn.functional as F

from muomni.bench.hf_twin import llama_twin
from muomni.config import load_config
from muomni.models.thinker import Thinker

torch.set_num_threads(1)
base = load_config("tiny", warn_ignored=False).replace(d_model=64, n_heads=4, d_ff=128, vocab_size=512, ctx_len=16)
tokens = torch.randint(0, base.vocab_size, (1, base.ctx_len + 1), generator=torch.Generator().manual_seed(0))
ROWS = {  # name: (use_flash, HF attention, autocast)
    "fp32 eager": (False, "eager", False),
    "bf16 autocast eager": (False, "eager", True),
    "bf16 autocast sdpa": (True, "sdpa", True),
}


def loss_of(model: torch.nn.Module, autocast: bool, hf: bool) -> torch.Tensor:
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = model(tokens[:, :-1])
    logits = out.logits if hf else out
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def step(model: torch.nn.Module, autocast: bool, hf: bool) -> None:
    loss_of(model, autocast, hf).backward()
    for p in model.parameters():
        p.grad = None


def best_ms(model: torch.nn.Module, autocast: bool, hf: bool) -> float:
    rounds = []
    for _ in range(5):
        for _ in range(3):
            step(model, autocast, hf)
        started = time.perf_counter()
        for _ in range(20):
            step(model, autocast, hf)
        rounds.append((time.perf_counter() - started) / 20 * 1e3)
    return min(rounds)


for name, (flash, attn, autocast) in ROWS.items():
    torch.manual_seed(0)
    ours = Thinker(base.replace(use_flash=flash)).train()
    twin = llama_twin(ours, attn).train()
    same = torch.allclose(loss_of(ours, False, False), loss_of(twin, False, True), rtol=1e-5)
    t_ours, t_hf = best_ms(ours, autocast, False), best_ms(twin, autocast, True)
    print(f"{name:22s} muomni {t_ours:6.2f} ms  HF {t_hf:6.2f} ms  ratio {t_ours / t_hf:.2f}  same loss {same}")
