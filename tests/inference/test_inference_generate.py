"""Generation against independent references: the plain full forward, each prompt alone, a fresh model."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import reference_greedy, tiny_model

import muomni.inference.generate as generate_module
from muomni.data import Tokenizer
from muomni.errors import InputError
from muomni.inference.generate import generate, generate_tokens
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker

PROMPTS = [[7], [11, 12, 13, 14, 15], list(range(20, 37))]  # lengths 1, 5 and 17

ATTENTION = {
    "mha": {"use_gqa": False},
    "gqa-1": {"use_gqa": True, "kv_groups": 1},
    "gqa-2": {"use_gqa": True, "kv_groups": 2},
}


@pytest.mark.parametrize("use_flash", [True, False])
@pytest.mark.parametrize("attention", ATTENTION)
def test_cached_greedy_equals_plain_forward(attention: str, use_flash: bool) -> None:
    model = tiny_model(use_flash=use_flash, **ATTENTION[attention])
    for prompt in PROMPTS:
        want = reference_greedy(model, prompt, 24)
        assert generate_tokens(model, [prompt], 24, temperature=0.0) == [want], f"prompt of {len(prompt)}"


def test_mixture_of_experts_cached_greedy_equals_plain_forward() -> None:
    model = tiny_model(use_moe=True, num_experts=4, num_experts_per_tok=2)
    for prompt in PROMPTS:
        assert generate_tokens(model, [prompt], 12, temperature=0.0) == [reference_greedy(model, prompt, 12)]


def test_public_api(tokenizer: Tokenizer) -> None:
    import muomni

    assert muomni.generate is generate
    assert muomni.generate(tiny_model(), tokenizer, ["def "], 4, temperature=0.0) == generate(
        tiny_model(), tokenizer, ["def "], 4, temperature=0.0
    )


@pytest.mark.parametrize("attention", ["mha", "gqa-1"])
def test_uncached_greedy_equals_plain_forward(attention: str) -> None:
    model = tiny_model(**ATTENTION[attention])
    model.enable_kv_cache(False)
    for prompt in PROMPTS:
        assert generate_tokens(model, [prompt], 16, temperature=0.0) == [reference_greedy(model, prompt, 16)]


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("use_flash", [True, False])
def test_batch_rows_equal_each_prompt_alone(cached: bool, use_flash: bool) -> None:
    """Left padding is invisible: each row of a batch decodes exactly as its prompt does alone."""
    model = tiny_model(use_flash=use_flash)
    model.enable_kv_cache(cached)
    batch = generate_tokens(model, PROMPTS, 20, temperature=0.0)
    alone = [generate_tokens(model, [prompt], 20, temperature=0.0)[0] for prompt in PROMPTS]
    assert batch == alone
    assert alone == [reference_greedy(model, prompt, 20) for prompt in PROMPTS]


def test_a_previous_generation_leaves_no_trace() -> None:
    fresh = generate_tokens(tiny_model(), [PROMPTS[1]], 20, temperature=0.0)
    model = tiny_model()
    generate_tokens(model, PROMPTS, 30, temperature=0.0)  # a bigger batch, longer: fills more of the cache
    assert generate_tokens(model, [PROMPTS[1]], 20, temperature=0.0) == fresh
    model.reset_kv_cache()  # outside inference mode: the cache must not be made of inference tensors
    assert generate_tokens(model, [PROMPTS[1]], 20, temperature=0.0) == fresh


def _count_forwards(model: Thinker) -> list[int]:
    calls = [0]
    model.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_rows_stop_at_eos_and_the_loop_ends_when_all_have() -> None:
    model = tiny_model()
    full = [reference_greedy(model, prompt, 30) for prompt in PROMPTS[:2]]
    eos = full[0][3]  # row 0 ends at its 4th token; row 1 at its first eos_id, if any
    want = [row[: row.index(eos) + 1] if eos in row else row for row in full]
    assert generate_tokens(model, PROMPTS[:2], 30, temperature=0.0, eos_id=eos, pad_id=0) == want
    calls = _count_forwards(model)
    assert generate_tokens(model, [PROMPTS[0]], 30, temperature=0.0, eos_id=eos) == [want[0]]
    assert calls[0] == 4  # the prefill and three decode steps: nothing after <eos>


def test_with_sparse_eos_checks_ended_rows_still_return_nothing_after_eos(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a GPU, look at the rows every 5 tokens only: decoding runs on a little, the output does not."""
    monkeypatch.setitem(generate_module.EOS_CHECK_EVERY, "cpu", 5)
    model = tiny_model()
    full = reference_greedy(model, PROMPTS[0], 30)
    calls = _count_forwards(model)
    assert generate_tokens(model, [PROMPTS[0]], 30, temperature=0.0, eos_id=full[3]) == [full[:4]]
    assert calls[0] == 5  # the prefill and four decode steps; the look at token 5 ends the loop


def test_text_generation_stops_at_eos(tokenizer: Tokenizer) -> None:
    """An lm_head that favours <eos> ends every completion at once: empty text, one token per row."""
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    head = model.lm_head
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.eos_id] = 10.0
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(head.weight)
        model.lm_head.bias.copy_(bias)
    stats = GenerationStats()
    assert generate(model, tokenizer, ["def ", "import os"], 20, temperature=0.7, seed=0, stats=stats) == ["", ""]
    assert (stats.rows, stats.generated_tokens) == (2, 2)


def test_text_api_decodes_the_token_api(tokenizer: Tokenizer) -> None:
    model = tiny_model()
    texts = generate(model, tokenizer, ["def parse(", "import"], 12, temperature=0.0)
    ids = generate_tokens(
        model, [tokenizer.encode("def parse("), tokenizer.encode("import")], 12, temperature=0.0,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
    )  # fmt: skip
    assert texts == [tokenizer.decode(row) for row in ids]
    assert generate(model, tokenizer, "def parse(", 12, temperature=0.0) == texts[:1]  # a str is one prompt


def test_stats_are_filled_in() -> None:
    stats = GenerationStats()
    generate_tokens(tiny_model(), PROMPTS, 10, temperature=0.0, stats=stats)
    assert (stats.rows, stats.prompt_tokens, stats.generated_tokens) == (3, 23, 30)
    assert 0 < stats.time_to_first_token_s <= stats.total_s
    assert stats.decode_tokens_per_s > 0 and stats.overall_tokens_per_s > 0
    assert stats.compile_s is None
    assert "time to first token" in stats.format() and "decode n/a" not in stats.format()


def test_stats_of_one_token_a_row_say_no_decode_rate() -> None:
    """One new token is the prefill's: no decode step ran, and "decode 0.0 tok/s" read as a slow one."""
    stats = GenerationStats()
    generate_tokens(tiny_model(), PROMPTS, 1, temperature=0.0, stats=stats)
    assert (stats.rows, stats.generated_tokens) == (3, 3)
    assert "decode n/a" in stats.format() and "decode 0.0" not in stats.format()


def test_model_dtype_is_used() -> None:
    model = tiny_model().to(torch.bfloat16)
    out = generate_tokens(model, PROMPTS, 8, temperature=0.0)
    assert [len(row) for row in out] == [8, 8, 8]
    assert model.attentions[0].kv_cache.k.dtype == torch.bfloat16


# --- bad inputs ---


def test_long_prompt_is_an_error_and_truncate_keeps_its_end() -> None:
    model = tiny_model()  # ctx_len 64
    prompt = list(range(3, 103))  # 100 tokens
    with pytest.raises(InputError, match=r"^prompt is 100 tokens but ctx_len is 64; shorten it or pass --truncate$"):
        generate_tokens(model, [prompt], 10, temperature=0.0)
    got = generate_tokens(model, [prompt], 10, temperature=0.0, truncate=True)
    assert got == generate_tokens(model, [prompt[-54:]], 10, temperature=0.0)  # room left for the 10 new tokens


def test_max_new_tokens_is_lowered_to_fit_the_context() -> None:
    model = tiny_model()
    prompt = list(range(3, 63))  # 60 of 64 slots
    with pytest.warns(UserWarning, match="leaves room for 4 new tokens"):
        out = generate_tokens(model, [prompt], 50, temperature=0.0)
    assert out == [reference_greedy(model, prompt, 4)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, not 0"),
        ({"temperature": -1.0}, "temperature must be 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_k": -1}, "top_k must be 0"),
        ({"decode_chunk": 0}, "decode_chunk must be at least 1"),
    ],
)
def test_bad_options(tokenizer: Tokenizer, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        generate(tiny_model(), tokenizer, ["def "], **{"max_new_tokens": 8, **kwargs})


def test_empty_prompt(tokenizer: Tokenizer) -> None:
    with pytest.raises(InputError, match="empty prompt"):
        generate(tiny_model(), tokenizer, ["def ", ""])
    with pytest.raises(InputError, match="empty prompt"):
        generate_tokens(tiny_model(), [[]])
    with pytest.raises(InputError, match="no prompts"):
        generate(tiny_model(), tokenizer, [])
    with pytest.raises(InputError, match=r"token id 300 is outside the model's vocabulary \(0..299\)"):
        generate_tokens(tiny_model(), [[5, 300]], 4)
