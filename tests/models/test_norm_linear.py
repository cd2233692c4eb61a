"""The fused output head of a decode step (RMSNorm, then the head's matrix) against the eager modules.

Like the other kernel tests, this runs the Triton kernel on a GPU, or in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernel is Triton's")

from muomni.models.layers import RMSNorm  # noqa: E402
from muomni.models.triton_decode import norm_linear  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize(
    ("batch", "d_model", "vocab"),
    [
        (1, 64, 300),  # the test models' shape; a vocabulary that is not a multiple of the row block
        (3, 768, 1000),  # the small preset's width, three rows
        (2, 1200, 37),  # wider than one loop iteration; fewer rows than one block
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_linear_matches_the_modules(batch: int, d_model: int, vocab: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    norm = RMSNorm(d_model).to(DEVICE, dtype)
    head = torch.nn.Linear(d_model, vocab, bias=False).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)  # a gain far from its init
        head.weight.normal_(0.0, 0.05)
        x = 3 * torch.randn(batch, d_model, device=DEVICE, dtype=dtype)  # an RMS far from 1
        want = head(norm(x))
        got = norm_linear(x, norm.weight, norm.eps, head.weight)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
