"""Each decode launch setting lives in one module, and setting it there is what the kernels' launches read.

Split-KV attention's settings are :mod:`muomni.models.split_kv`'s and the PDL choice is
:mod:`muomni.models.decode_launch`'s; :mod:`muomni.models.triton_decode` does not carry them, so a test or a
script that sets one on it (where it would change nothing) finds no such name.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton's")

from muomni.models import decode_launch, split_kv  # noqa: E402
from muomni.models import triton_decode as td  # noqa: E402

MOVED = {
    decode_launch: ("USE_PDL", "PDL_MAX_BATCH", "_pdl_in_triton", "_pdl_on", "pdl_max_batch"),
    split_kv: ("BLOCK", "WIDE_BLOCK", "WIDE_BLOCK_MIN_ROWS", "ATTENTION_WARPS", "MAX_SPLITS",
               "ATTENTION_STAGES", "WHOLE_MIN_ROWS", "SKIP_MIN_BATCH", "split_kv_attention",
               "_partial_attention", "_merge_splits"),
}  # fmt: skip


def test_moved_settings_are_on_their_module_only() -> None:
    for module, names in MOVED.items():
        for name in names:
            assert hasattr(module, name), f"{module.__name__} has no {name}"
            assert not hasattr(td, name), f"triton_decode carries {name}, which {module.__name__} owns"
    # The launch functions it calls are decode_launch's own, which read decode_launch's settings.
    assert td._launch is decode_launch._launch and td._dot_precision is decode_launch._dot_precision


def test_settings_patched_on_their_module_reach_the_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """PDL as if on a Hopper GPU: decode_launch's USE_PDL turns it off for triton_decode's tiles and for
    attention, whose blocks and warps follow split_kv's settings."""
    monkeypatch.setattr(decode_launch, "_pdl_on", lambda device: True)
    launches: list[dict] = []

    class Kernel:  # records a launch's keyword arguments instead of running it
        def __getitem__(self, grid: tuple) -> object:
            return lambda *args, **kwargs: launches.append(kwargs)

    monkeypatch.setattr(split_kv, "_partial_attention", Kernel())
    monkeypatch.setattr(split_kv, "_merge_splits", Kernel())
    q, kv, valid = torch.zeros(1, 4, 1, 16), torch.zeros(1, 2, 100, 16), torch.ones(1, 100, dtype=torch.bool)

    def launch() -> tuple[bool, bool, int, int]:
        launches.clear()
        tile = td._tile_launch(torch.device("cpu"), 1, {"BK": 32}, 64, 1)
        split_kv.split_kv_attention(q, kv, kv, valid)
        return tile["PDL"], launches[0]["PDL"], launches[0]["BLOCK_S"], launches[0]["num_warps"]

    assert launch() == (True, True, split_kv.BLOCK, split_kv.ATTENTION_WARPS)
    monkeypatch.setattr(decode_launch, "USE_PDL", False)
    monkeypatch.setattr(split_kv, "BLOCK", 16)
    monkeypatch.setattr(split_kv, "ATTENTION_WARPS", 4)
    assert launch() == (False, False, 16, 4)
