"""Small +all training row, gradients clipped by a pass of their own before the fused AdamW (old) or inside
it, as the divisor its kernel takes (new). argv: variant out.json ; run one variant per process."""

import sys

import torch
from plus_all_row import run

import muomni.training.trainer as tr

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    fused_step = tr.step_unless

    def clip_first(optimizer, skip, clip=None):  # noqa: ANN001, ANN201
        if clip is not None:  # clip_grad_norm_'s multiplication, on the norm already computed
            norm, max_norm = clip
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        fused_step(optimizer, skip)

    tr.step_unless = clip_first
run(variant, out)
