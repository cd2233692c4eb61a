"""The +all row with the linear layers' weights in fp32 (autocast casts them, and their gradients back, every
step) against bf16 weight copies trained from fp32 master weights (``weight_dtype=bf16``). argv: variant
(fp32|bf16) preset out.json [block warps: the AdamW kernel's, for a sweep]"""

import sys

from plus_all_row import run

from muomni.training import triton_adamw

variant, preset, out = sys.argv[1:4]
if len(sys.argv) > 4:
    triton_adamw.BLOCK, triton_adamw.WARPS = int(sys.argv[4]), int(sys.argv[5])
run(variant, out, preset, adjust=lambda spec: spec["config"].update(weight_dtype=variant))
