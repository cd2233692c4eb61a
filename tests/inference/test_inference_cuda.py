"""The GPU paths (bf16, CUDA graphs, device generators); skipped where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import tiny_model

from muomni.inference.generate import generate_tokens
from muomni.inference.loading import prepare_for_inference
from muomni.inference.stats import GenerationStats

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = [[7, 8, 9], list(range(20, 27)), list(range(40, 52))]


def _cuda_model(dtype: torch.dtype = torch.float32, **overrides: object) -> torch.nn.Module:
    return prepare_for_inference(tiny_model(**{"n_layers": 1, **overrides}), torch.device("cuda"), dtype)


def test_cuda_cached_equals_uncached_and_batch_equals_alone() -> None:
    model = _cuda_model()
    batch = generate_tokens(model, PROMPTS, 24, temperature=0.0)
    assert batch == [generate_tokens(model, [p], 24, temperature=0.0)[0] for p in PROMPTS]
    model.enable_kv_cache(False)
    assert generate_tokens(model, PROMPTS, 24, temperature=0.0) == batch


@pytest.mark.parametrize("chunk", [1, 2])
def test_cuda_graphs_decode_what_eager_decodes(chunk: int) -> None:
    model = _cuda_model()
    for prompts in (PROMPTS, PROMPTS[:1], PROMPTS):
        eager = generate_tokens(model, prompts, 30, temperature=0.0)
        stats = GenerationStats()
        assert (
            generate_tokens(model, prompts, 30, temperature=0.0, compile=True, decode_chunk=chunk, stats=stats) == eager
        )
    sampled = {"temperature": 0.8, "top_k": 30, "top_p": 0.9, "seed": 4, "decode_chunk": chunk}
    assert generate_tokens(model, PROMPTS, 30, compile=True, **sampled) == generate_tokens(
        model, PROMPTS, 30, **sampled
    )


def test_cuda_graphs_decode_a_tiled_batch_as_eager_does() -> None:
    # Six rows: the decode kernels' tensor-core tiles (from TILE_MIN_BATCH rows), on the GPU.
    from muomni.models import triton_decode

    prompts = [[i, i + 1, i + 2] for i in range(7, 7 + 5 * triton_decode.TILE_MIN_BATCH + 1, 5)]
    assert len(prompts) > triton_decode.TILE_MIN_BATCH
    model = _cuda_model()
    eager = generate_tokens(model, prompts, 30, temperature=0.0)
    assert generate_tokens(model, prompts, 30, temperature=0.0, compile=True) == eager


def test_cuda_graphs_after_a_kept_prefix_decode_the_whole_prompt() -> None:
    from muomni.inference.prefix import KVPrefix

    model, prefix = _cuda_model(), KVPrefix()
    first = generate_tokens(model, [PROMPTS[2]], 12, temperature=0.0, compile=True, prefix=prefix)[0]
    second = [*PROMPTS[2], *first, 60, 61]
    stats = GenerationStats()
    kept = generate_tokens(model, [second], 12, temperature=0.0, compile=True, prefix=prefix, stats=stats)
    assert stats.cached_prompt_tokens == len(PROMPTS[2]) + len(first) - 1
    assert kept == generate_tokens(model, [second], 12, temperature=0.0)  # eager, the whole prompt


def test_cuda_tuned_kernels_decode_what_eager_decodes() -> None:
    """Coordinate-descent tuning rewrites the one-token matmuls as fused reductions: same greedy tokens."""
    model = _cuda_model()
    eager = generate_tokens(model, PROMPTS, 30, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 30, temperature=0.0, compile=True, tune=True) == eager


def test_cuda_bf16_generation_runs_and_seeds_repeat() -> None:
    model = _cuda_model(torch.bfloat16)
    a = generate_tokens(model, PROMPTS, 20, temperature=1.0, seed=9, compile=True)
    assert a == generate_tokens(model, PROMPTS, 20, temperature=1.0, seed=9, compile=True)
    assert model.attentions[0].kv_cache.k.dtype == torch.bfloat16


def test_cuda_graphs_follow_a_grown_cache_and_weights_changed_in_place() -> None:
    """A captured graph reads fixed addresses: a reallocated cache must be captured anew, and weights
    loaded in place must be read as they are now (a stale graph would decode the old cache or weights)."""
    model = _cuda_model(ctx_len=512)
    long_prompt = [list(range(3, 290))]  # 287 tokens + 30 new: the cache grows from 256 slots to 512
    for prompts in (PROMPTS, long_prompt, PROMPTS):
        eager = generate_tokens(model, prompts, 30, temperature=0.0)
        assert generate_tokens(model, prompts, 30, temperature=0.0, compile=True, decode_chunk=4) == eager
    before = eager
    model.load_state_dict(_cuda_model(ctx_len=512, seed=1).state_dict())
    eager = generate_tokens(model, PROMPTS, 30, temperature=0.0)
    assert eager != before  # the new weights decode something else ...
    assert generate_tokens(model, PROMPTS, 30, temperature=0.0, compile=True, decode_chunk=4) == eager  # ... here too


def test_cuda_compiled_mixture_of_experts_decodes_what_eager_decodes() -> None:
    """A mixture of experts is compiled without CUDA graphs (its routing waits on the device)."""
    model = _cuda_model(use_moe=True, num_experts=4, num_experts_per_tok=2)
    eager = generate_tokens(model, PROMPTS, 20, temperature=0.0)
    assert generate_tokens(model, PROMPTS, 20, temperature=0.0, compile=True) == eager


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("batch", [1, 16])
def test_top_p_compiles_over_a_large_vocabulary(batch: int, kernel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # One running sum over each sorted row of 32,000 did not compile for 4 to 64 rows with torch 2.11
    # (Inductor split the scan and failed in its code generation); the sums now run in blocks. On CUDA
    # top-p runs a kernel of its own; without it (kernel=False) the sort runs, as on other devices.
    from muomni.inference.sampling import SamplingParams, draw_noise, sample
    from muomni.models import decode_ops

    if not kernel:
        monkeypatch.setattr(decode_ops, "TRITON_DEVICES", set())
    torch._dynamo.reset()
    gen = torch.Generator("cuda").manual_seed(0)
    logits = torch.randn(batch, 32000, device="cuda", generator=gen) * 3
    noise = draw_noise((batch, 32000), torch.device("cuda"), gen)
    params = SamplingParams(0.8, 0, 0.9)
    compiled = torch.compile(sample, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(logits, params, noise), sample(logits, params, noise))
