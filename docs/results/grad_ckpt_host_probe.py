"""The host's work a step for each kind of gradient checkpointing, on a CPU.

Widths so small (12 layers of width 64, 16 tokens) that a step's time is the host's work: Python, the
dispatcher and autograd. Ran as ``PYTHONPATH=. python docs/results/grad_ckpt_host_probe.py`` on a 2-core
CPU, torch 2.13.0 (2026-11-30): none 19.07 ms, non-reentrant 39.48, non-reentrant without the recomputation
check 39.73, without the RNG state 39.79, without both 38.56, reentrant 29.26, reentrant without the RNG
state 28.87 (best of 5 rounds of 20 steps). A second run: 18.10, 40.37, 38.67, 39.17, 39.04, 28.90, 29.34.
"""

import time
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from muomni.config import load_config
from muomni.models.thinker import Thinker

torch.set_num_threads(1)
cfg = load_config("small", warn_ignored=False).replace(
    d_model=64, n_heads=4, d_ff=128, vocab_size=512, ctx_len=16, use_flash=True
)
tokens = torch.randint(0, cfg.vocab_size, (1, cfg.ctx_len + 1))
KINDS = {
    "none": None,
    "non-reentrant": {"use_reentrant": False},
    "non-reentrant, no check": {"use_reentrant": False, "determinism_check": "none"},
    "non-reentrant, no RNG state": {"use_reentrant": False, "preserve_rng_state": False},
    "non-reentrant, neither": {"use_reentrant": False, "preserve_rng_state": False, "determinism_check": "none"},
    "reentrant": {"use_reentrant": True},
    "reentrant, no RNG state": {"use_reentrant": True, "preserve_rng_state": False},
}


def build(kind: dict | None) -> Thinker:
    torch.manual_seed(0)
    model = Thinker(cfg).train()
    if kind is not None:
        for block in model.model.layers:
            block.forward = partial(checkpoint, type(block).forward, block, **kind)
    return model


def step(model: Thinker) -> None:
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
    for p in model.parameters():
        p.grad = None


models = {name: build(kind) for name, kind in KINDS.items()}
times: dict[str, list[float]] = {name: [] for name in KINDS}
for _ in range(5):
    for name, model in models.items():
        for _ in range(3):
            step(model)
        started = time.perf_counter()
        for _ in range(20):
            step(model)
        times[name].append((time.perf_counter() - started) / 20 * 1e3)
for name, ms in times.items():
    print(f"{name:30s} {min(ms):6.2f} ms")
