"""The +all row under a BLAS setting, to see whether one without cuBLAS's per-product memsets trains
faster end to end. argv: setting (default | cublaslt | workspace0) preset out.json; ``workspace0`` needs
CUBLAS_WORKSPACE_CONFIG=:0:0 in the environment (set by the caller)."""

import sys

import torch
from plus_all_row import run

setting, preset, out = sys.argv[1:4]
if setting == "cublaslt":
    torch.backends.cuda.preferred_blas_library("cublaslt")
run(setting, out, preset)
