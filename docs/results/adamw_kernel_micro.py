"""The optimizer step of the small preset alone, timed with CUDA events (50 steps after 5): PyTorch's fused
AdamW on fp32 weights and gradients (what ``+all`` ran before ``weight_dtype=bf16``, with the casts autocast
does a step timed apart), against :class:`MasterWeightAdamW` on bf16 copies and gradients, for each of a few
block sizes and warp counts of its Triton kernel; and the gradient norm of each. argv: out.json"""

import json
import sys

import torch

from muomni.config import load_config
from muomni.models.thinker import Thinker
from muomni.training import triton_adamw
from muomni.training.master_weights import MasterWeightAdamW, attach_compute_weights
from muomni.training.optim import param_groups


def timed(fn, steps=50, warmup=5):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps * 1e3  # us a step


def model_and_groups():
    torch.manual_seed(0)
    model = Thinker(load_config("small")).cuda()
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, 0.1)]
    return model, groups


results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
model, groups = model_and_groups()
params = [p for g in groups for p in g["params"]]
for p in params:
    p.grad = torch.randn_like(p) * 1e-3
fused = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
divisor, skip = torch.ones((), device="cuda"), torch.zeros((), device="cuda")


def fused_step():
    fused.grad_scale, fused.found_inf = divisor, skip
    fused.step()


results["torch_fused_fp32_us"] = timed(fused_step)
linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
grads16 = [w.grad.to(torch.bfloat16) for w in linear]
results["autocast_weight_casts_us"] = timed(lambda: [w.to(torch.bfloat16) for w in linear])
results["autocast_grad_casts_us"] = timed(lambda: [g.float() for g in grads16])

model, groups = model_and_groups()
copies = attach_compute_weights(model)
for g in groups:
    for p in g["params"]:
        holder = copies.get(p, p)
        holder.grad = (torch.randn_like(p) * 1e-3).to(holder.dtype)
ours = MasterWeightAdamW(groups, copies, lr=1e-4, betas=(0.9, 0.95), eps=1e-8)


def our_step():
    ours.grad_scale, ours.found_inf = divisor, skip
    ours.step()


from muomni.training.features import total_grad_norm  # noqa: E402

results["norm_torch_fp32_us"] = timed(lambda: total_grad_norm(params))
results["norm_master_bf16_us"] = timed(ours.grad_norm)
for block in (1024, 2048, 4096, 8192):
    for warps in (4, 8):
        triton_adamw.BLOCK, triton_adamw.WARPS = block, warps
        ours._tables.clear()
        results[f"master_bf16_block{block}_warps{warps}_us"] = timed(our_step)
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=1)
for k, v in results.items():
    print(k, v if isinstance(v, str) else f"{v:.1f}")
