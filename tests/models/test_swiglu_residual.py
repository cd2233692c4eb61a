"""The fused MLP half of a decode step (RMSNorm, SwiGLU MLP, residual add) against the eager modules.

Like the other kernel tests, this runs the Triton kernels on a GPU, or in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton's")

from muomni.models import triton_decode  # noqa: E402
from muomni.models.layers import MLP, RMSNorm  # noqa: E402
from muomni.models.triton_decode import swiglu_residual  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

FP32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(
    ("batch", "d_model", "d_ff", "columns", "dtype"),
    [
        (1, 64, 128, None, FP32),  # the test models' shape
        (1, 64, 128, None, BF16),
        (1, 768, 2048, None, FP32),  # the small preset's shape (one row: the interpreter runs a program a row)
        (2, 300, 90, None, FP32),  # widths that are not powers of two; two rows
        (2, 300, 90, None, BF16),
        (2, 100, 200, 32, FP32),  # widths that are not powers of two; batched rows (loops only for one row)
        # Two to BATCHED_MAX_BATCH rows: batched row kernels, the weights read once for every row.
        (4, 768, 256, None, BF16),  # the small preset's width at batch 4
        (1, 100, 200, 32, FP32),  # rows wider than one loop iteration (as past 1,024 / 2,048 columns), masked
        # From TILE_MIN_BATCH rows: tensor-core tiles over the whole batch.
        (16, 768, 2048, None, FP32),  # the small preset at batch 16
        (16, 768, 2048, None, BF16),
        (5, 300, 90, None, BF16),  # the fewest rows of a tile; widths that are not powers of two
        (64, 100, 200, 32, FP32),  # the most rows; depths of more than one loop iteration, masked
    ],
)
def test_swiglu_residual_matches_the_modules(
    batch: int, d_model: int, d_ff: int, columns: int | None, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    if columns is not None:
        monkeypatch.setattr(triton_decode, "MAX_COLUMNS", columns)
        monkeypatch.setattr(triton_decode, "DOWN_COLUMNS", columns)
        monkeypatch.setattr(triton_decode, "TILE_DEPTH", columns)
    torch.manual_seed(0)
    mlp = MLP(d_model, d_ff).to(DEVICE, dtype)
    norm = RMSNorm(d_model).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.5)  # a gain far from its init
        for p in mlp.parameters():
            p.normal_(0.0, 0.05)
        x = 3 * torch.randn(batch, d_model, device=DEVICE, dtype=dtype)  # an RMS far from 1
        want = x + mlp(norm(x))
        weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
        got = swiglu_residual(x, norm.weight, norm.eps, weights)
    assert got.shape == want.shape and got.dtype == dtype
    if dtype == torch.float32:  # the MLP's own share too, not only the residual in the sum
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got - x, want - x, atol=1e-4, rtol=1e-4)
    else:  # bf16 rounds the norm, the projections and the product in other places: as close to fp32 as eager
        with torch.no_grad():
            exact = x.float() + mlp.float()(norm.float()(x.float()))

        def error(y: torch.Tensor) -> float:
            return ((y.float() - exact).norm() / exact.norm()).item()

        # Triton's interpreter rounds fp32 to bf16 by truncation (1 + 2^-8 + 2^-12 becomes 1), which biases
        # each of the kernels' roundings the same way; a GPU rounds to nearest.
        factor = 2 if CUDA else 4
        assert error(got) <= factor * error(want) + 1e-3, (error(got), error(want))


@pytest.mark.parametrize(("batch", "depth"), [(1, 300), (3, 300), (4, 300), (16, 300), (2, 2060)])
@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_linear_residual_matches_the_modules(batch: int, depth: int, dtype: torch.dtype) -> None:
    """``x + h W^T`` (a block's output projection and residual add): row kernels for one row, batched row
    kernels up to BATCHED_MAX_BATCH, tiles from TILE_MIN_BATCH; bf16 rounds the product before the add, as
    ``x + o_proj(h)`` does. 2,060 deep is more than the batched kernels take: the row kernels, a row each."""
    torch.manual_seed(0)
    rows = 200 if depth <= 300 else 24
    proj = torch.nn.Linear(depth, rows, bias=False).to(DEVICE, dtype)
    x = torch.randn(batch, rows, device=DEVICE, dtype=dtype)
    h = torch.randn(batch, depth, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        want = x + proj(h)
        got = triton_decode.linear_residual(x, h, proj.weight)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-4 if dtype == FP32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(got - x, want - x, atol=tol, rtol=tol)


@pytest.fixture
def splits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The split count of every tile launch from here on, in launch order."""
    found: list[int] = []
    split_buffers = triton_decode._split_buffers

    def counted(*args: object) -> tuple:
        buffers = split_buffers(*args)
        found.append(buffers[0])
        return buffers

    monkeypatch.setattr(triton_decode, "_split_buffers", counted)
    return found


@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_split_k_is_one_fixed_sum_and_leaves_its_counts_at_zero(
    dtype: torch.dtype, splits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deep projection at batch 16 (as the MLP's down projection) is split over several programs per tile:
    the result is the unsplit one up to the order of fp32 sums, the same bits on every launch (the partials
    are added in split order, whichever program finishes last), and the tiles' counts are zero again after."""
    torch.manual_seed(0)
    x = torch.randn(16, 200, device=DEVICE, dtype=dtype)
    h = torch.randn(16, 1100, device=DEVICE, dtype=dtype)
    weight = 0.05 * torch.randn(200, 1100, device=DEVICE, dtype=dtype)
    got = triton_decode.linear_residual(x, h, weight)
    assert splits[-1] > 1
    assert not triton_decode._locks[x.device].any()
    assert torch.equal(triton_decode.linear_residual(x, h, weight), got)
    monkeypatch.setattr(triton_decode, "LINEAR_SPLITS", 1)
    unsplit = triton_decode.linear_residual(x, h, weight)
    assert splits[-1] == 1
    tol = 1e-5 if dtype == FP32 else 2e-2  # bf16: the rounding of the product may land either side
    torch.testing.assert_close(got, unsplit, atol=tol, rtol=tol)
    torch.testing.assert_close(got.float(), x.float() + h.float() @ weight.float().T, atol=tol * 4, rtol=tol * 4)


@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_gate_up_split_k_matches_unsplit(
    dtype: torch.dtype, splits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gate/up split over the depth (GATE_UP_SPLITS): the norm's statistic and both products are gathered
    from every split before the SwiGLU product, so the result is the unsplit one up to the order of fp32
    sums, the same bits on every launch, and the tiles' counts are zero again after."""
    monkeypatch.setattr(triton_decode, "GATE_UP_SPLITS", 3)
    torch.manual_seed(0)
    d_model, d_ff = 900, 40  # splits 384, 384 and 132 deep: three 128-deep steps, and two, one masked
    x = 3 * torch.randn(16, d_model, device=DEVICE, dtype=dtype)
    gain = torch.randn(d_model, device=DEVICE, dtype=dtype)
    weights = tuple(0.05 * torch.randn(*shape, device=DEVICE, dtype=dtype) for shape in
                    [(d_ff, d_model), (d_ff, d_model), (d_model, d_ff)])  # fmt: skip
    got = swiglu_residual(x, gain, 1e-5, weights)
    assert splits[-2] == 3  # gate/up, then down (40 deep: unsplit)
    assert not triton_decode._locks[x.device].any()
    assert torch.equal(swiglu_residual(x, gain, 1e-5, weights), got)
    monkeypatch.setattr(triton_decode, "GATE_UP_SPLITS", 1)
    unsplit = swiglu_residual(x, gain, 1e-5, weights)
    assert splits[-2] == 1
    tol = 1e-5 if dtype == FP32 else 2e-2  # bf16: a rounding may land either side
    torch.testing.assert_close(got, unsplit, atol=tol, rtol=tol)


def test_the_layers_hand_the_fused_kernels_no_more_rows_than_a_tile_takes() -> None:
    """Past TILE_ROWS the kernels read the weights once per row (slower than the modules): the layers' cap
    on the fused MLP and output projection must stay within it."""
    from muomni.models import decode_ops

    assert triton_decode.TILE_MIN_BATCH <= decode_ops.FUSED_MAX_BATCH <= triton_decode.TILE_ROWS


def test_each_batch_goes_to_the_kernels_meant_for_it() -> None:
    """Row kernels for one row (and for widths the batched kernels do not take), batched row kernels for two
    to BATCHED_MAX_BATCH rows, tiles from TILE_MIN_BATCH to TILE_ROWS, row kernels again past it."""
    assert triton_decode.BATCHED_MAX_BATCH < triton_decode.TILE_MIN_BATCH
    assert [triton_decode._batched(b, 768, 2048) for b in (1, 2, 4, 5)] == [False, True, True, False]
    assert not triton_decode._batched(2, 768, triton_decode.BATCHED_MAX_COLUMNS + 1)
    assert [triton_decode._tiled(b) for b in (4, 5, 64, 65)] == [False, True, True, False]
