"""The Triton kernel tests of this folder run on a GPU as in a compiled decode step or, without one, in
Triton's interpreter on the CPU: the same kernel code, so every test run that has Triton installed checks
it (the ``test`` extra installs it on Linux x86_64). The interpreter is switched on here, before any test
module of this folder imports Triton."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
