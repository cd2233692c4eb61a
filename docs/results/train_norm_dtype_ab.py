"""The +all row with RMSNorm's gain applied in the activation's dtype (``weight.to(x.dtype) * normed``: a
bf16 output under autocast with the bf16 residual stream) against the code as it is (fp32 gain times the
bf16 normed row: an fp32 output that the next product casts back). argv: variant (fp32gain|xgain) preset
out.json"""

import sys

import torch
from plus_all_row import run

from muomni.models import layers

variant, preset, out = sys.argv[1:4]
if variant == "xgain":

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(x.dtype) * normed.to(x.dtype)

    layers.RMSNorm.forward = forward
run(variant, out, preset)
