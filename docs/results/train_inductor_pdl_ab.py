"""The +all row with Inductor's Triton kernels launched with programmatic dependent launch (PDL: each kernel
may start while the one before it finishes, inside the CUDA graph too) against the code as it is. argv:
variant (pdl|off) preset out.json"""

import sys

import torch._inductor.config as inductor_config
from plus_all_row import run

variant, preset, out = sys.argv[1:4]
if not hasattr(inductor_config.triton, "enable_pdl"):
    sys.exit(f"this torch ({inductor_config.__name__}) has no inductor_config.triton.enable_pdl")
inductor_config.triton.enable_pdl = variant == "pdl"
run(variant, out, preset)
