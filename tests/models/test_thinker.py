"""The Thinker against independent references: math attention, plain gradients, the uncached forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from muomni.config import load_config
from muomni.models import Thinker, checkpoint_blocks, layers
from muomni.models.decode_ops import one_query_attention
from muomni.models.layers import MoE, RMSNorm, apply_rope, math_attention, rope_tables, sdpa_attention


def tiny(**overrides) -> Thinker:
    base = {"vocab_size": 300, "n_layers": 2, "d_model": 64, "n_heads": 4, "kv_groups": 2, "d_ff": 96, "ctx_len": 48}
    base.update(overrides)
    torch.manual_seed(0)
    return Thinker(load_config(None, base))


def tokens(batch: int = 2, length: int = 24, vocab: int = 300) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def test_output_shape_and_dtype() -> None:
    model = tiny()
    logits = model(tokens(3, 17))
    assert logits.shape == (3, 17, 300) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_bf16_residual_stream_only_under_autocast() -> None:
    # residual_dtype=bf16: under bf16 autocast the blocks read and add into a bf16 stream (fp32 otherwise);
    # without autocast (fp32 inference, export) the model is the same; the logits stay as close to the fp32
    # stream's as bf16's rounding allows.
    fp32_stream, bf16_stream = tiny(), tiny(residual_dtype="bf16")
    seen: dict[str, list[torch.dtype]] = {"fp32": [], "bf16": []}
    for name, model in (("fp32", fp32_stream), ("bf16", bf16_stream)):
        model.model.layers[1].register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].dtype))
    x = tokens()
    assert torch.equal(bf16_stream(x), fp32_stream(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, got = fp32_stream(x).float(), bf16_stream(x).float()
    assert seen == {"fp32": [torch.float32] * 2, "bf16": [torch.float32, torch.bfloat16]}
    error = ((got - reference).norm() / reference.norm()).item()
    assert 0 < error < 2e-2, error


@pytest.mark.parametrize("kv_groups", [1, 2, 4])
def test_sdpa_matches_math_attention(kv_groups: int) -> None:
    flash = tiny(kv_groups=kv_groups, use_flash=True)
    plain = tiny(kv_groups=kv_groups, use_flash=False)
    plain.load_state_dict(flash.state_dict())
    x = tokens()
    assert torch.allclose(flash(x), plain(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel_takes_groups", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_causal_sdpa_with_grouped_heads_matches_math_and_its_gradients(
    groups: int, kernel_takes_groups: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training's attention, with k/v copied per query head or handed to the kernel as they are (SDPA's
    ``enable_gqa``, which the CPU's math path also runs): math attention's output and gradients, each
    key/value head's gradient summed over its group."""
    monkeypatch.setattr(layers, "_kernel_takes_groups", lambda q: kernel_takes_groups)
    torch.manual_seed(4)
    q = torch.randn(2, 6, 7, 8, requires_grad=True)
    k = torch.randn(2, 6 // groups, 7, 8, requires_grad=True)
    v = torch.randn(2, 6 // groups, 7, 8, requires_grad=True)
    weight = torch.randn(2, 6, 7, 8)  # a loss that weighs every output differently
    got = sdpa_attention(q, k, v, None, 0.0)
    grads = torch.autograd.grad((got * weight).sum(), (q, k, v))
    want = math_attention(q, k, v, None, 0.0)
    expected = torch.autograd.grad((want * weight).sum(), (q, k, v))
    assert torch.allclose(got, want, atol=1e-5)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5)


def test_only_the_kernels_that_take_grouped_heads_get_them() -> None:
    """fp32, heads wider than flash takes and the CPU go to kernels without grouped heads, where SDPA would
    fall back to its math path."""
    assert not layers._kernel_takes_groups(torch.zeros(1, 64, dtype=torch.bfloat16))
    if torch.cuda.is_available():
        assert not layers._kernel_takes_groups(torch.zeros(1, 64, device="cuda"))
        assert not layers._kernel_takes_groups(torch.zeros(1, 512, device="cuda", dtype=torch.bfloat16))
        ampere = torch.cuda.get_device_capability()[0] >= 8 and torch.version.hip is None
        assert layers._kernel_takes_groups(torch.zeros(1, 64, device="cuda", dtype=torch.bfloat16)) == ampere


def test_gqa_stores_fewer_kv_heads() -> None:
    for groups, expected in [(1, 16), (2, 32), (4, 64)]:
        model = tiny(kv_groups=groups)
        assert model.model.layers[0].self_attn.k_proj.weight.shape == (expected, 64)
    mha = tiny(use_gqa=False, kv_groups=1)
    assert mha.model.layers[0].self_attn.k_proj.weight.shape == (64, 64)


def test_masked_sdpa_folds_groups_like_math() -> None:
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    mask = torch.rand(2, 1, 5, 9) > 0.3
    mask[..., 0] = True  # keep every row's softmax finite
    assert torch.allclose(sdpa_attention(q, k, v, mask, 0.0), math_attention(q, k, v, mask, 0.0), atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_one_query_attention_matches_math(groups: int) -> None:
    """The decode step's written-out attention: one query per row over a masked cache, GQA folded."""
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 4, 1, 8), torch.randn(3, 4 // groups, 11, 8), torch.randn(3, 4 // groups, 11, 8)
    mask = torch.rand(3, 1, 1, 11) > 0.4
    mask[..., 0] = True
    want = math_attention(q, k, v, mask, 0.0)
    assert torch.allclose(one_query_attention(q, k, v, mask), want, atol=1e-6)
    low = one_query_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), want, atol=3e-2)


def test_math_attention_is_causal() -> None:
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    out = math_attention(q, k, v, None, 0.0)
    v2 = v.clone()
    v2[:, :, -1] += 100.0  # the last value may only change the last query's output
    out2 = math_attention(q, k, v2, None, 0.0)
    assert torch.equal(out[:, :, :-1], out2[:, :, :-1]) and not torch.equal(out[:, :, -1], out2[:, :, -1])


def _attention_scaled_in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention written out with every score cast to fp32 before the scale and the mask."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1).to(q.dtype) @ v


@pytest.mark.parametrize("head_dim", [64, 48])
def test_math_attention_in_bf16_matches_scaling_the_scores_in_fp32(head_dim: int) -> None:
    # In half precision the scores are scaled and masked in bf16 and only the softmax runs in fp32. With a
    # power-of-two scale (head_dim 64) that is exact: the same bits as the fp32 scores, forward and backward
    # (a softmax in bf16 would change dq and dk). Otherwise each scaled score is rounded once to bf16.
    torch.manual_seed(6)
    q = (3 * torch.randn(2, 4, 40, head_dim)).bfloat16().requires_grad_()  # wide scores: a peaked softmax
    k, v = (torch.randn(2, 2, 40, head_dim).bfloat16().requires_grad_() for _ in range(2))
    grad = torch.randn(2, 4, 40, head_dim).bfloat16()

    def outputs_and_grads(attention) -> list[torch.Tensor]:  # noqa: ANN001
        out = attention(q, k, v)
        return [out, *torch.autograd.grad(out, (q, k, v), grad)]

    got = outputs_and_grads(lambda q, k, v: math_attention(q, k, v, None, 0.0))
    want = outputs_and_grads(_attention_scaled_in_fp32)
    assert all(g.dtype == torch.bfloat16 for g in got)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        if head_dim == 64:
            assert torch.equal(g, w), name
        else:  # one bf16 rounding of each score: within 2% of the largest value (0.6%-0.7% measured)
            torch.testing.assert_close(g, w, rtol=0, atol=2e-2 * w.abs().max().item(), msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_gradients_equal_plain(reentrant: bool) -> None:
    plain, ckpt = tiny(), checkpoint_blocks(tiny(), reentrant=reentrant)
    _assert_checkpointed_gradients_equal_plain(plain, ckpt)


@pytest.mark.parametrize(("every", "checkpointed"), [(2, [0, 2]), (3, [0, 3]), (5, [0])])
def test_checkpointing_every_nth_block_gives_plain_gradients(every: int, checkpointed: list[int]) -> None:
    plain, ckpt = tiny(n_layers=4), checkpoint_blocks(tiny(n_layers=4), every=every)
    # A checkpointed block's forward is replaced on the instance; the others keep their class's.
    assert [i for i, block in enumerate(ckpt.model.layers) if "forward" in vars(block)] == checkpointed
    _assert_checkpointed_gradients_equal_plain(plain, ckpt)


def test_checkpointing_every_0th_block_is_refused() -> None:
    with pytest.raises(ValueError, match="every must be at least 1"):
        checkpoint_blocks(tiny(), every=0)


def test_checkpointing_more_blocks_keeps_less_for_the_backward_pass() -> None:
    def saved_bytes(model: Thinker) -> int:
        """What autograd keeps for the backward pass of a forward and loss (the reentrant kind keeps a
        checkpointed block's input, and nothing it computes from it)."""
        kept = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            x = tokens(4, 48)
            F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        return sum(kept)

    plain = saved_bytes(tiny(n_layers=4))
    one, half, every = (saved_bytes(checkpoint_blocks(tiny(n_layers=4), True, every=n)) for n in (4, 2, 1))
    assert plain > one > half > every


def _assert_checkpointed_gradients_equal_plain(plain: Thinker, ckpt: Thinker) -> None:
    x = tokens()
    for model in (plain, ckpt):
        F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    assert list(dict(ckpt.named_parameters())) == list(dict(plain.named_parameters()))
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=0), name


def test_cached_decoding_matches_full_forward() -> None:
    model = tiny().eval()
    x = tokens(2, 20)
    model.enable_kv_cache(True)
    model.setup_caches(2, 32)
    with torch.inference_mode():
        full = model(x)
        steps = [model(x[:, :11], torch.arange(11))]
        steps += [model(x[:, i : i + 1], torch.tensor([i])) for i in range(11, 20)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_left_padding_is_invisible() -> None:
    """A left-padded row gives the logits of the same prompt alone (RoPE is relative, pads are masked)."""
    model = tiny().eval()
    prompt = tokens(1, 9)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), prompt], dim=1)  # [1, 13]
    valid = torch.tensor([[False] * 4 + [True] * 9])
    for cached in (True, False):
        model.enable_kv_cache(cached)
        model.setup_caches(1, 16)
        model.reset_kv_cache()
        model.set_key_padding(valid)
        with torch.inference_mode():
            out = model(padded, torch.arange(13))[:, 4:]
            model.reset_kv_cache()
            alone = model(prompt)
        assert torch.allclose(out, alone, atol=1e-5), cached


def test_reset_kv_cache_clears_padding_and_values() -> None:
    model = tiny().eval()
    model.enable_kv_cache(True)
    model.setup_caches(1, 16)
    model.set_key_padding(torch.tensor([[False, True]]))
    with torch.inference_mode():
        model(tokens(1, 2), torch.arange(2))
    model.reset_kv_cache()
    assert model.model.key_valid.all()
    assert all(a.kv_cache.k.abs().sum() == 0 for a in model.attentions)


def test_tied_embeddings_share_one_tensor() -> None:
    model = tiny(tie_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.num_params() == tiny(tie_embeddings=False).num_params() - 300 * 64


def test_residual_projections_start_smaller() -> None:
    model = tiny(n_layers=8)
    std = model.model.layers[0].self_attn.o_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.15)
    assert model.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)


def test_rmsnorm_matches_formula() -> None:
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(8.0))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * torch.arange(8.0)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_rope_depends_only_on_relative_position() -> None:
    cos, sin = rope_tables(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        return (apply_rope(q, cos[i], sin[i]) * apply_rope(k, cos[j], sin[j])).sum().item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_moe_equals_weighted_expert_sum() -> None:
    torch.manual_seed(5)
    moe = MoE(16, 24, num_experts=4, top_k=2)
    x = torch.randn(7, 16)
    probs = moe.gate(x).softmax(-1)
    top, idx = probs.topk(2, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    expected = torch.stack([sum(top[n, s] * moe.experts[int(idx[n, s])](x[n]) for s in range(2)) for n in range(7)])
    assert torch.allclose(moe(x), expected, atol=1e-6)


def test_moe_model_trains() -> None:
    model = tiny(use_moe=True, num_experts=4, num_experts_per_tok=2)
    x = tokens()
    F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "gate." in n)


def test_gelu_mlp_has_no_gate() -> None:
    model = tiny(use_swiglu=False)
    assert model.model.layers[0].mlp.gate_proj is None
    assert model(tokens()).shape == (2, 24, 300)


def test_state_dict_uses_llama_names() -> None:
    names = set(tiny().state_dict())
    for expected in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert expected in names
    assert not any("rope" in n or "key_valid" in n for n in names)
