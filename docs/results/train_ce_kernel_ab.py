"""A preset's +all training row, each chunk's loss and gradient by the Triton kernel (new) or by Inductor's
compilation of PyTorch operations (old). argv: variant preset out.json ; run one variant per process."""

import sys

from plus_all_row import run

from muomni.training import chunked_ce

variant, preset, out = sys.argv[1:4]
if variant == "old":
    chunked_ce.CE_KERNEL_DEVICES = set()
run(variant, out, preset)
