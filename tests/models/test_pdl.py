"""Programmatic dependent launch: the decode kernels give the same bits with it as without it.

With PDL a kernel starts while the one before it still runs and must wait before it reads what that one
wrote; a read placed before its wait is a race, which shows as different numbers. Here a few layers of
decode steps (attention input, split-KV attention, output projection, MLP, head), at batch 1 (row kernels),
4 (batched row kernels) and 16 (tiles, split-K), run replayed from a CUDA graph with PDL and launched one
by one without it, and their logits and caches must agree exactly. That part needs a Hopper GPU; the rest
runs anywhere: no launch off such a GPU asks for PDL (Triton's interpreter, which runs the kernel tests
there, has none), and the tile kernels' arithmetic on the PDL path is that of the loop it replaces.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton's")

from muomni.models import decode_launch, split_kv  # noqa: E402
from muomni.models import triton_decode as td  # noqa: E402

HOPPER = torch.cuda.is_available() and decode_launch._pdl_on(torch.device("cuda"))
D, HEADS, KV_HEADS, HEAD_DIM, D_FF, VOCAB, SLOTS, LAYERS = 768, 12, 4, 64, 2048, 2000, 128, 3


def test_launches_off_a_hopper_gpu_do_not_ask_for_pdl(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decode_launch._launch(torch.device("cpu"), 1) == {"PDL": False}
    monkeypatch.setattr(decode_launch, "USE_PDL", False)
    assert decode_launch._launch(torch.device("cuda"), 1) == {"PDL": False}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiles_with_their_first_step_out_of_the_loop_compute_what_the_loop_computes(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tile kernels' PDL path (EARLY: the first step's weights before the wait, the rest in the loop)
    against the loop alone, without PDL so that it runs anywhere: the same bits. Split-K depths of several
    steps a split, a split with no step at all (200 deep in 6 splits of 48), masked tails."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(decode_launch, "USE_PDL", False)
    monkeypatch.setattr(td, "SPLIT_MIN_DEPTH", 64)
    monkeypatch.setattr(td, "SPLIT_DEPTH", 32)  # 16 (fp32) or 32 (bf16) deep a step
    monkeypatch.setattr(td, "TILE_DEPTH", 32)
    batch, dim, heads, kv_heads, head_dim, hidden, slots = 5, 200, 4, 2, 16, 120, 8
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

    x, h = rand(batch, dim), rand(batch, hidden)
    qkv = (rand(heads * head_dim, dim, scale=0.1), rand(kv_heads * head_dim, dim, scale=0.1),
           rand(kv_heads * head_dim, dim, scale=0.1))  # fmt: skip
    biases = tuple(rand(w.shape[0], scale=0.1) for w in qkv)
    mlp = (rand(hidden, dim, scale=0.1), rand(hidden, dim, scale=0.1), rand(dim, hidden, scale=0.1))
    gain, w_out = 1 + rand(dim, scale=0.3), rand(dim, heads * head_dim, scale=0.1)
    angles = torch.rand(slots, head_dim, generator=g).to(device)
    pos = torch.tensor([3], device=device)
    caches = [rand(batch, kv_heads, slots, head_dim) for _ in range(2)]

    def run(early: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(td, "EARLY_WITHOUT_PDL", early)
        k_cache, v_cache = (c.clone() for c in caches)
        q = td.norm_qkv_rope(x, gain, 1e-5, qkv, biases, angles.cos(), angles.sin(), pos, k_cache, v_cache)
        projected = td.linear_residual(x, q.reshape(batch, -1), w_out)
        mlp_half, down = td.swiglu_residual(x, gain, 1e-5, mlp), td.linear_residual(x, h, mlp[2])
        return [q, k_cache, v_cache, projected, mlp_half, down]

    for got, want in zip(run(True), run(False), strict=True):
        assert torch.isfinite(want.float()).all()
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiles_of_one_step_compiled_without_their_loop_compute_what_the_loop_computes(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONE_STEP (programs of one depth step at most, no loop compiled) against the loop: the same bits, for
    every tile kernel unsplit and split (each split one step), masked tails; and every launch took it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(decode_launch, "USE_PDL", False)
    monkeypatch.setattr(td, "SPLIT_MIN_DEPTH", 64)
    monkeypatch.setattr(td, "SPLIT_DEPTH", 32)  # 16 (fp32) or 32 (bf16) deep a step
    batch, heads, kv_heads, head_dim, hidden, slots = 6, 2, 1, 16, 120, 8
    chosen: list[bool] = []  # each tile launch's ONE_STEP
    tile_launch = td._tile_launch

    def recording(*args: object) -> dict:
        launch = tile_launch(*args)
        chosen.append(launch["ONE_STEP"])
        return launch

    monkeypatch.setattr(td, "_tile_launch", recording)

    def run(one_step: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(td, "ONE_STEP_TILES", one_step)
        g = torch.Generator().manual_seed(0)

        def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(*shape, generator=g)).to(device, dtype)

        outputs = []
        for dim in (40, 96):  # unsplit (shallower than SPLIT_MIN_DEPTH), and split in 16- or 32-deep steps
            x, h = rand(batch, dim), rand(batch, hidden)
            qkv = tuple(rand(n * head_dim, dim, scale=0.1) for n in (heads, kv_heads, kv_heads))
            mlp = (rand(hidden, dim, scale=0.1), rand(hidden, dim, scale=0.1), rand(dim, hidden, scale=0.1))
            gain, angles = 1 + rand(dim, scale=0.3), torch.rand(slots, head_dim, generator=g).to(device)
            k_cache, v_cache = rand(batch, kv_heads, slots, head_dim), rand(batch, kv_heads, slots, head_dim)
            pos = torch.tensor([3], device=device)
            q = td.norm_qkv_rope(x, gain, 1e-5, qkv, None, angles.cos(), angles.sin(), pos, k_cache, v_cache)
            outputs += [q, k_cache, v_cache, td.linear_residual(x, h, mlp[2])]
            if dtype == torch.bfloat16 or dim < 64:  # fp32's gate/up at 96 deep: 3 splits of two 16-deep steps
                outputs.append(td.swiglu_residual(x, gain, 1e-5, mlp))
        return outputs

    loop = run(False)
    assert chosen and not any(chosen)
    chosen.clear()
    one_step = run(True)
    assert len(chosen) == (8 if dtype == torch.bfloat16 else 6) and all(chosen)
    for got, want in zip(one_step, loop, strict=True):
        assert torch.isfinite(want.float()).all()
        assert torch.equal(got, want)


def _weights(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)

    def w(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return (scale * torch.randn(*shape, generator=g)).to("cuda", dtype)

    angles = torch.arange(SLOTS)[:, None] / 10000 ** (torch.arange(HEAD_DIM // 2) / (HEAD_DIM // 2))
    angles = torch.cat([angles, angles], dim=1)
    layers = [
        {
            "n1": 1 + w(D, scale=0.3),
            "qkv": (w(HEADS * HEAD_DIM, D), w(KV_HEADS * HEAD_DIM, D), w(KV_HEADS * HEAD_DIM, D)),
            "o": w(D, HEADS * HEAD_DIM),
            "n2": 1 + w(D, scale=0.3),
            "mlp": (w(D_FF, D), w(D_FF, D), w(D, D_FF)),
        }
        for _ in range(LAYERS)
    ]
    return {"layers": layers, "norm": 1 + w(D, scale=0.3), "head": w(VOCAB, D), "cos": angles.cos().cuda(),
            "sin": angles.sin().cuda()}  # fmt: skip


def _step(p: dict, x: torch.Tensor, pos: torch.Tensor, caches: list) -> torch.Tensor:
    """One decode step over the layers, as the compiled step orders the kernels; returns the logits."""
    batch = x.shape[0]
    valid = (torch.arange(SLOTS, device="cuda") <= pos).expand(batch, SLOTS)
    for layer, (k_cache, v_cache) in zip(p["layers"], caches, strict=True):
        q = td.norm_qkv_rope(x, layer["n1"], 1e-5, layer["qkv"], None, p["cos"], p["sin"], pos, k_cache, v_cache)
        attended = split_kv.split_kv_attention(q, k_cache, v_cache, valid, pos)
        x = td.linear_residual(x, attended.reshape(batch, -1), layer["o"])
        x = td.swiglu_residual(x, layer["n2"], 1e-5, layer["mlp"])
    return td.norm_linear(x, p["norm"], 1e-5, p["head"])


def _run(p: dict, x: torch.Tensor, steps: int, pdl: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """``steps`` decode steps from position 40 on fresh caches; graph-replayed with PDL, eager without."""
    monkeypatch.setattr(decode_launch, "USE_PDL", pdl)
    g = torch.Generator().manual_seed(1)
    shape = (x.shape[0], KV_HEADS, SLOTS, HEAD_DIM)
    caches = [tuple(torch.randn(*shape, generator=g).to("cuda", x.dtype) for _ in range(2)) for _ in p["layers"]]
    pos = torch.tensor([40], device="cuda")
    logits = []
    if not pdl:
        for _ in range(steps):
            logits.append(_step(p, x, pos, caches))
            pos += 1
        return torch.stack(logits), caches
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compile and make the split-K counts before capture
        _step(p, x, pos.clone(), [tuple(c.clone() for c in pair) for pair in caches])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _step(p, x, pos, caches)
        pos += 1
    for _ in range(steps):
        graph.replay()
        logits.append(out.clone())
    return torch.stack(logits), caches


@pytest.mark.skipif(not HOPPER, reason="needs an NVIDIA GPU with programmatic dependent launch (Hopper on)")
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_kernels_launched_with_pdl_compute_what_they_compute_without(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _weights(torch.bfloat16)
    x = torch.randn(batch, D, generator=torch.Generator().manual_seed(2)).to("cuda", torch.bfloat16)
    with torch.no_grad():
        want, want_caches = _run(p, x, 6, False, monkeypatch)
        got, got_caches = _run(p, x, 6, True, monkeypatch)
    assert torch.isfinite(want.float()).all()
    assert torch.equal(got, want)
    for (k_got, v_got), (k_want, v_want) in zip(got_caches, want_caches, strict=True):
        assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)
