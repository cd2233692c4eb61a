"""Compiled decoding: the same tokens as eager, and a bounded number of compilations."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from inference_helpers import tiny_model

from muomni.inference import decode
from muomni.inference.generate import compiled_cache_len, generate_tokens
from muomni.inference.stats import GenerationStats

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is first imported: run its kernels on the CPU

PROMPTS = [[7, 8, 9], list(range(20, 27)), list(range(40, 52))]  # lengths 3, 7 and 12


@pytest.fixture
def counting_backend(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Compile with a backend that runs the captured graph as is and counts how many graphs it was given."""
    compiled: list[int] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        compiled.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(decode, "COMPILE_BACKEND", backend)
    return compiled


@pytest.mark.parametrize("chunk", [1, 4])
def test_compiled_decoding_compiles_once_per_step_size(counting_backend: list[int], chunk: int) -> None:
    """Three prompt lengths, 20 tokens each, twice: one graph per decode function (chunk and tail step)."""
    model = tiny_model()
    for _ in range(2):
        for prompt in PROMPTS:
            stats = GenerationStats()
            out = generate_tokens(model, [prompt], 20, temperature=0.0, compile=True, decode_chunk=chunk, stats=stats)
            assert out == generate_tokens(model, [prompt], 20, temperature=0.0)
    assert len(counting_backend) == len({chunk, 1})
    assert all(nodes > 10 for nodes in counting_backend)  # the whole step (model + sampling) is one graph


def test_compiled_sampling_draws_what_eager_draws(counting_backend: list[int]) -> None:
    model = tiny_model()
    options = {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "seed": 11, "decode_chunk": 3}
    eager = generate_tokens(model, PROMPTS, 14, **options)
    assert generate_tokens(model, PROMPTS, 14, compile=True, **options) == eager
    pair = generate_tokens(model, PROMPTS[:2], 14, **options)  # a new batch size (and so other noise per row)
    assert generate_tokens(model, PROMPTS[:2], 14, compile=True, **options) == pair
    assert len(counting_backend) == 4  # two step sizes, two batch sizes


def test_each_setting_has_its_own_compile_cache(counting_backend: list[int]) -> None:
    """Settings beyond Dynamo's per-function recompile limit still compile (none falls back to eager)."""
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    model = tiny_model(n_layers=1)
    with torch._dynamo.config.patch(**{limit: 2}):
        for top_k in (1, 2, 3, 4):
            generate_tokens(model, PROMPTS[:1], 4, temperature=1.0, top_k=top_k, seed=0, compile=True)
    assert len(counting_backend) == 4


def test_compile_time_is_reported_once(counting_backend: list[int]) -> None:
    model = tiny_model()
    first, second = GenerationStats(), GenerationStats()
    generate_tokens(model, PROMPTS[:1], 8, temperature=0.0, compile=True, stats=first)
    generate_tokens(model, PROMPTS[:1], 8, temperature=0.0, compile=True, stats=second)
    assert first.compile_s is not None and first.compile_s > 0
    assert second.compile_s is None
    assert "compile" in first.format() and "compile" not in second.format()


def test_compile_without_cache_warns_and_runs_eagerly(counting_backend: list[int]) -> None:
    model = tiny_model()
    model.enable_kv_cache(False)
    with pytest.warns(UserWarning, match="without the KV cache decoding runs eagerly"):
        out = generate_tokens(model, PROMPTS[:1], 8, temperature=0.0, compile=True)
    assert out == generate_tokens(model, PROMPTS[:1], 8, temperature=0.0)
    assert counting_backend == []


def test_compiled_cache_sizes_are_few() -> None:
    assert {compiled_cache_len(4096, n) for n in range(1, 4097)} == {256, 512, 1024, 2048, 4096}
    assert compiled_cache_len(64, 10) == 64


def test_inductor_compiled_decoding_equals_eager() -> None:
    """The real compiler (C++ on the CPU): greedy tokens as eager, and no recompile for a new prompt length."""
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    model = tiny_model(n_layers=1)
    for prompt in PROMPTS[:2]:
        want = generate_tokens(model, [prompt], 12, temperature=0.0)
        assert generate_tokens(model, [prompt], 12, temperature=0.0, compile=True) == want
    assert graphs["unique_graphs"] - before == 1


def test_inductor_compiled_padded_batch_equals_eager() -> None:
    """Left-padded prompts of three lengths in one compiled batch: the decode step's masked attention."""
    model = tiny_model(n_layers=1)
    want = generate_tokens(model, PROMPTS, 10, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 10, temperature=0.0, compile=True) == want


def test_compiled_mixture_of_experts_decodes_what_eager_decodes(counting_backend: list[int]) -> None:
    """Routing to experts breaks the step into several graphs (never one CUDA graph): still eager's tokens."""
    model = tiny_model(n_layers=1, use_moe=True, num_experts=4, num_experts_per_tok=2)
    want = generate_tokens(model, PROMPTS, 10, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 10, temperature=0.0, compile=True, decode_chunk=2) == want
    assert len(counting_backend) > 2  # graph breaks: more graphs than the two step sizes


@pytest.mark.parametrize(
    ("tile_min_batch", "split_min_depth", "head_fused_max_batch"), [(5, None, 3), (2, None, 1), (2, 1, 1)]
)
def test_compiled_decoding_through_the_triton_kernels_equals_eager(
    tile_min_batch: int, split_min_depth: int | None, head_fused_max_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled step as it runs on CUDA (the fused attention-input kernel writing the cache inside the
    graph, split-KV attention, the fused output projection, MLP half and head, the blocked argmax), without a
    GPU through Triton's interpreter: greedy tokens as eager. The batch of 3 runs the batched row kernels, and
    the tensor-core tiles of larger batches when those start at 2 rows; the tiles split their depth (as deep
    models' do, with the arrival counts kept across the CUDA graph's replays on a GPU) when the shallow test
    model's tiles are split too. The head runs its fused kernel when that takes 3 rows, else the modules."""
    pytest.importorskip("triton", reason="the kernels are Triton's")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before its interpreter could be switched on")
    from muomni.models import decode_ops, triton_decode

    monkeypatch.setattr(triton_decode, "TILE_MIN_BATCH", tile_min_batch)
    monkeypatch.setattr(decode_ops, "HEAD_FUSED_MAX_BATCH", head_fused_max_batch)
    if split_min_depth is not None:  # steps of 32 (16 for fp32 weights), the fewest a tensor-core product takes
        monkeypatch.setattr(triton_decode, "SPLIT_MIN_DEPTH", split_min_depth)
        monkeypatch.setattr(triton_decode, "SPLIT_DEPTH", 32)
    calls: list[str] = []
    for name in ("norm_qkv_rope", "swiglu_residual", "linear_residual", "norm_linear"):
        kernel = getattr(triton_decode, name)
        monkeypatch.setattr(triton_decode, name, lambda *a, name=name, kernel=kernel: calls.append(name) or kernel(*a))
    monkeypatch.setattr(decode_ops, "TRITON_DEVICES", {"cuda", "cpu"})
    torch._dynamo.reset()
    model = tiny_model(n_layers=1).to("cuda" if torch.cuda.is_available() else "cpu")
    want = generate_tokens(model, PROMPTS, 8, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 8, temperature=0.0, compile=True) == want
    head = {"norm_linear"} if head_fused_max_batch >= len(PROMPTS) else set()
    assert set(calls) == {"norm_qkv_rope", "swiglu_residual", "linear_residual", *head}  # all that should ran
    # The output projection's own call, besides the MLP's down projection inside swiglu_residual.
    assert calls.count("linear_residual") == 2 * calls.count("swiglu_residual")


def test_fused_ops_are_registered_as_inductor_fallbacks() -> None:
    """The decode step's custom ops are known to Inductor before it lowers a graph, so it never takes its
    implicit-fallback path (whose log line printed the arguments' whole chain of ops, for minutes)."""
    from torch._inductor import lowering

    from muomni.models.decode_ops import FUSED_OPS, register_inductor_fallbacks

    register_inductor_fallbacks()
    for name in FUSED_OPS:
        assert getattr(torch.ops.muomni, name).default in lowering.lowerings, name
