"""The split-KV Triton decode attention against math attention.

On a GPU, or in Triton's interpreter on the CPU (see conftest.py): masking, head grouping, padding and
the merge of splits are checked by every test run that has Triton installed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton's")

from muomni.models.decode_ops import split_kv_attention  # noqa: E402
from muomni.models.layers import math_attention  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize(
    ("batch", "heads", "kv_heads", "slots", "head_dim"),
    [
        (1, 4, 2, 64, 8),  # the test models' shape
        (3, 4, 1, 100, 8),  # slots not a multiple of the block; one key/value head for all (MQA)
        (2, 12, 3, 1024, 64),  # the small preset at full context
        (1, 14, 2, 4096, 64),  # a group of 7 (padded to 8); more blocks than splits
        (2, 6, 6, 257, 48),  # no grouping; a head width that is not a power of two
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_attention_matches_math(
    batch: int, heads: int, kv_heads: int, slots: int, head_dim: int, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    q = torch.randn(batch, heads, 1, head_dim, device=DEVICE, dtype=dtype)
    k = torch.randn(batch, kv_heads, slots, head_dim, device=DEVICE, dtype=dtype)
    v = torch.randn(batch, kv_heads, slots, head_dim, device=DEVICE, dtype=dtype)
    valid = torch.rand(batch, slots, device=DEVICE) > 0.3
    valid[0, slots // 2 :] = False  # a row whose later half of the cache is not written yet
    valid[:, 0] = True  # every query sees at least its own slot
    want = math_attention(q.float(), k.float(), v.float(), valid[:, None, None, :], 0.0)
    got = split_kv_attention(q, k, v, valid)
    assert got.dtype == dtype and got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_attention_with_wide_blocks_matches_math(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The longer blocks of many rows (``WIDE_BLOCK``), here for few: a block partly past the cache's end,
    a group of 3 padded to 4 and then to the 16 rows of the product."""
    from muomni.models import split_kv

    monkeypatch.setattr(split_kv, "WIDE_BLOCK_MIN_ROWS", 1)
    torch.manual_seed(4)
    q = torch.randn(2, 6, 1, 32, device=DEVICE, dtype=dtype)
    k, v = (torch.randn(2, 2, 300, 32, device=DEVICE, dtype=dtype) for _ in "kv")
    valid = torch.rand(2, 300, device=DEVICE) > 0.3
    valid[:, 0] = True
    want = math_attention(q.float(), k.float(), v.float(), valid[:, None, None, :], 0.0)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(split_kv_attention(q, k, v, valid).float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "slots", "head_dim"), [(3, 4, 1, 100, 8), (2, 12, 3, 1024, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_attention_in_one_program_per_row_matches_math(
    batch: int,
    heads: int,
    kv_heads: int,
    slots: int,
    head_dim: int,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From ``WHOLE_MIN_ROWS`` rows, one program walks a row's whole cache and stores the output itself (no
    merge): here for few rows, with blocks partly past the cache's end and a group padded to 16 rows."""
    from muomni.models import split_kv

    monkeypatch.setattr(split_kv, "WHOLE_MIN_ROWS", 1)
    monkeypatch.setattr(split_kv, "_merge_splits", None)  # a merge launched by mistake fails
    torch.manual_seed(5)
    q = torch.randn(batch, heads, 1, head_dim, device=DEVICE, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, slots, head_dim, device=DEVICE, dtype=dtype) for _ in "kv")
    valid = torch.rand(batch, slots, device=DEVICE) > 0.3
    valid[0, slots // 2 :] = False
    valid[:, 0] = True
    want = math_attention(q.float(), k.float(), v.float(), valid[:, None, None, :], 0.0)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(split_kv_attention(q, k, v, valid).float(), want, atol=tol, rtol=tol)


def test_split_kv_attention_ignores_what_is_masked() -> None:
    """Slots marked invalid may hold anything (stale keys, NaN): the output must not change."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, n, 16, device=DEVICE) for n in (1, 300, 300))
    k, v = k[:, :2], v[:, :2]
    valid = torch.zeros(1, 300, dtype=torch.bool, device=DEVICE)
    valid[0, :77] = True
    clean = split_kv_attention(q, k, v, valid)
    k[0, :, 77:], v[0, :, 77:] = float("nan"), 1e4
    assert torch.equal(split_kv_attention(q, k, v, valid), clean)


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("batch", [1, 16])
def test_split_kv_attention_reads_nothing_past_the_last_slot(
    batch: int, whole: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``last``, the slots after it are not attended: the result is what masking them gives. From
    ``SKIP_MIN_BATCH`` rows on they are not even read (junk there, NaN and not masked, changes nothing);
    below it they are read and masked by ``valid``, as a decode step's mask does."""
    from muomni.models import split_kv

    assert split_kv.SKIP_MIN_BATCH == 16  # the batch-16 case below is the one that skips
    if whole:
        monkeypatch.setattr(split_kv, "WHOLE_MIN_ROWS", 1)
    torch.manual_seed(2)
    q, k, v = (torch.randn(batch, 4, n, 16, device=DEVICE) for n in (1, 700, 700))
    k, v = k[:, :2], v[:, :2]
    valid = torch.rand(batch, 700, device=DEVICE) > 0.2
    valid[:, 0] = True
    last = torch.tensor([300], device=DEVICE)
    masked = valid.clone()
    masked[:, 301:] = False
    want = split_kv_attention(q, k, v, masked)
    if batch >= split_kv.SKIP_MIN_BATCH:
        k[:, :, 301:], v[:, :, 301:] = float("nan"), float("nan")
        got = split_kv_attention(q, k, v, valid, last)
    else:
        got = split_kv_attention(q, k, v, masked, last)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
