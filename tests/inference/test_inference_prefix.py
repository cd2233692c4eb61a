"""A kept prefix (KVPrefix): a prompt that starts with what the last generation left in the KV cache runs
only its new tokens, and decodes as the plain full forward of the whole prompt does (reference_greedy)."""

from __future__ import annotations

import io
import re

import pytest
from inference_helpers import reference_greedy, tiny_model

from muomni.data import Tokenizer
from muomni.inference.chat import chat, reply_ids
from muomni.inference.generate import generate_tokens
from muomni.inference.prefix import KVPrefix
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker

FIRST = [5, 9, 13, 20, 31, 44]


def _prefill_lengths(model: Thinker) -> list[int]:
    """The number of tokens of every forward of the backbone (a prefill's is its prompt's part that runs)."""
    lengths: list[int] = []
    model.model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    return lengths


def _generate(model: Thinker, prompt: list[int], prefix: KVPrefix | None, **options: object) -> tuple[list, int]:
    stats = GenerationStats()
    out = generate_tokens(model, [prompt], 8, temperature=0.0, prefix=prefix, stats=stats, **options)[0]
    return out, stats.cached_prompt_tokens


@pytest.mark.parametrize("compile", [False, True])
def test_a_continued_prompt_runs_only_its_new_tokens_and_decodes_as_the_whole(compile: bool) -> None:
    model, prefix = tiny_model(), KVPrefix()
    first, cached = _generate(model, FIRST, prefix, compile=compile)
    assert first == reference_greedy(model, FIRST, 8) and cached == 0
    lengths = _prefill_lengths(model)
    second = [*FIRST, *first, 40, 41, 42]
    out, cached = _generate(model, second, prefix, compile=compile)
    # The cache holds the first prompt and every generated token fed back: all but the last one.
    assert cached == len(FIRST) + len(first) - 1
    assert lengths[0] == len(second) - cached  # the prefill ran the rest only
    assert out == reference_greedy(model, second, 8)


def test_a_prompt_that_parts_from_the_cache_reuses_what_they_share() -> None:
    model, prefix = tiny_model(), KVPrefix()
    _generate(model, FIRST, prefix)
    other = [*FIRST[:3], 77, 78, 79]
    out, cached = _generate(model, other, prefix)
    assert cached == 3 and out == reference_greedy(model, other, 8)
    # A prompt that is all cached still runs its last token (the prefill samples from it).
    out, cached = _generate(model, other[:4], prefix)
    assert cached == 3 and out == reference_greedy(model, other[:4], 8)


@pytest.mark.parametrize("between", ["generation", "batch", "reset", "cache_off_and_on", "forget"])
def test_whatever_else_writes_the_cache_voids_the_prefix(between: str) -> None:
    model, prefix = tiny_model(), KVPrefix()
    first, _ = _generate(model, FIRST, prefix)
    if between == "generation":  # overwrites the cache's first slots with other keys and values
        generate_tokens(model, [[2, 3, 4, 6, 7, 8]], 8, temperature=0.0)
    elif between == "batch":
        generate_tokens(model, [[2, 3, 4, 6, 7, 8], [9, 9]], 8, temperature=0.0)
    elif between == "reset":
        model.reset_kv_cache()
    elif between == "cache_off_and_on":
        model.enable_kv_cache(False)
        model.enable_kv_cache(True)
    else:
        prefix.forget()
    second = [*FIRST, *first, 40]
    out, cached = _generate(model, second, prefix)
    assert cached == 0 and out == reference_greedy(model, second, 8)


def test_no_prefix_is_kept_for_a_batch_or_without_the_cache() -> None:
    model, prefix = tiny_model(), KVPrefix()
    generate_tokens(model, [FIRST, [7, 8]], 8, temperature=0.0, prefix=prefix)
    assert prefix.ids == [] and model.cache_owner is None
    model.enable_kv_cache(False)
    out, cached = _generate(model, FIRST, prefix)
    assert cached == 0 and prefix.ids == [] and out == reference_greedy(model, FIRST, 8)


def test_chat_runs_the_earlier_turns_once(tokenizer: Tokenizer) -> None:
    model, out = tiny_model(), io.StringIO()
    lines = iter(["hello there", "and again", "quit"])
    assert chat(model, tokenizer, 8, temperature=0.0, show_stats=True, read=lambda _: next(lines), out=out) == 0
    stats = [line for line in out.getvalue().splitlines() if line.startswith("[stats]")]
    assert len(stats) == 2 and "from the cache" not in stats[0]
    first_prompt, first_reply = (int(n) for n in re.findall(r"(?:prompt|generated) tokens (\d+)", stats[0]))
    cached = int(re.search(r"\((\d+) from the cache\)", stats[1]).group(1))
    # The first prompt and the reply's tokens fed back (all but its last): the history keeps the reply's ids.
    assert cached == first_prompt + first_reply - 1


@pytest.mark.parametrize(
    ("text", "cut"),
    [
        ("def parse(line):\n    return line.split()", None),  # the whole text: the sampled ids as they are
        ("def parse(line):\n    return line.split()", -3),  # a stop string began inside a token
    ],
)
def test_reply_ids_are_the_sampled_ones_as_far_as_the_reply_goes(tokenizer: Tokenizer, text: str, cut: int) -> None:
    sampled = tokenizer.encode(text)
    reply = tokenizer.decode(sampled)[:cut]
    ids = reply_ids(tokenizer, [*sampled, tokenizer.eos_id], reply)
    assert tokenizer.decode(ids) == reply
    if cut is None:
        assert ids == sampled
    else:
        kept = next(n for n in range(len(sampled), -1, -1) if reply.startswith(tokenizer.decode(sampled[:n])))
        assert ids[:kept] == sampled[:kept] and kept > 0


def test_a_generation_stopped_in_its_warm_up_leaves_no_prefix_to_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in chat stops a reply wherever it is. Stopped in a compiled warm-up, which writes junk to the first
    cache slots, the model still named the last prefix as its cache's owner, and the next turn reused the junk."""
    from muomni.inference import decode

    model, prefix = tiny_model(), KVPrefix()
    first, _ = _generate(model, FIRST, prefix)

    def junk_then_ctrl_c(self: decode.CachedDecoder, batch: int) -> float | None:
        for attn in model.attentions:  # what a real warm-up does to slots 0.. before the prompt overwrites them
            attn.kv_cache.k[:, :, :4].fill_(3.0)
            attn.kv_cache.v[:, :, :4].fill_(-3.0)
        raise KeyboardInterrupt

    second = [*FIRST, *first, 40, 41]
    with monkeypatch.context() as patched:
        patched.setattr(decode.CachedDecoder, "warm_up", junk_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            _generate(model, second, prefix)
    out, cached = _generate(model, second, prefix)
    assert cached == 0 and out == reference_greedy(model, second, 8)
