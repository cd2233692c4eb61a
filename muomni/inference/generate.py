"""``muomni.generate``: batched, cached, optionally compiled text generation.

One generation: the prompts are left-padded into one batch [B, T] and run in ONE forward (the prefill),
which fills the KV cache slots 0..T-1 and samples each row's first token; then each decode step feeds the
last token at slot ``T + i``. RoPE is relative, so a left-padded row computes what it would alone (the
padding slots are masked out of attention). Generated tokens stay on the device in a preallocated buffer;
the host looks at them only to check whether every row has reached ``<eos>`` (every few tokens on a GPU)
and, when streaming or watching for stop strings, after every decode call.

Context: a prompt and its completion must fit in ``ctx_len`` tokens. A prompt of ``ctx_len`` tokens or more
is an error unless ``truncate=True``, which keeps its end (leaving room for ``max_new_tokens``, up to half
the context). When the longest prompt leaves fewer than ``max_new_tokens`` slots, ``max_new_tokens`` is
lowered to what fits, with a warning.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch

from muomni.data import Tokenizer
from muomni.errors import InputError
from muomni.inference.decode import CachedDecoder, DecodeSetup, UncachedDecoder, prefill
from muomni.inference.prefix import KVPrefix
from muomni.inference.sampling import SamplingParams, check_seed
from muomni.inference.stats import GenerationStats, synced_time
from muomni.inference.streaming import StreamCallback, TextStream
from muomni.models.thinker import Thinker

# Tokens between looks at whether every row has ended: a look is a host sync, which costs a GPU a round
# trip and an empty queue; on the CPU it costs nothing.
EOS_CHECK_EVERY = {"cpu": 1, "default": 16}
# Decode steps per compiled call on CUDA when decode_chunk is not given (one CUDA graph per chunk). On an
# H200, batch 1 of the tiny (20M) model, untuned: 5,870 tok/s at 1, 6,150 at 2, 6,250 at 4, 5,980 at 8, 5,840
# at 16 (capturing more steps costs no compile time, but buys nothing past 4 and checks for <eos> less often).
CUDA_DECODE_CHUNK = 4
# The smallest KV cache of compiled decoding (see compiled_cache_len).
MIN_COMPILED_CACHE = 256

# new tokens of each row [B][n] -> {row: tokens to keep} for rows that must end now (stop strings)
Observer = Callable[[list[list[int]]], dict[int, int]]


def generate(
    model: Thinker,
    tokenizer: Tokenizer,
    prompts: list[str] | str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    stream: StreamCallback | None = None,
    compile: bool = False,
    truncate: bool = False,
    stats: GenerationStats | None = None,
    *,
    decode_chunk: int | None = None,
    stop: str | Sequence[str] = (),
    tune: bool = False,
) -> list[str]:
    """Complete each prompt; all prompts run as one batch.

    Args:
        model: a Thinker (from :func:`muomni.load`); its KV cache setting decides cached decoding.
        tokenizer: the model's tokenizer.
        prompts: one prompt or a list; an empty prompt is an error.
        max_new_tokens: the most tokens to add to each prompt (lowered, with a warning, to fit ``ctx_len``).
        temperature: 0 for greedy decoding, else the softmax temperature.
        top_k: sample among the ``top_k`` most likely tokens (0: all).
        top_p: sample among the most likely tokens that hold ``top_p`` of the probability (1: all).
        seed: seeds a generator on the model's device, so the same seed gives the same sample.
        stream: ``stream(row, text_piece)`` is called as text arrives (this syncs after each decode call).
        compile: compile the decode step (CUDA graphs on GPU); see :class:`GenerationStats` ``compile_s``.
        truncate: keep the end of a prompt that does not fit in the context instead of failing.
        stats: a :class:`GenerationStats` to fill in with token counts and timings.
        decode_chunk: decode steps per call of the decode function; None: 4 when compiled on CUDA, else 1.
        stop: strings that end a completion (not included in it), e.g. ``["\\nUser:"]``; one string alone
            is one stop string (not its characters).
        tune: compile (as ``compile``) and, on CUDA, tune the compiled kernels: faster decoding after a
            first compile that takes minutes rather than one (Inductor keeps the result on disk).

    Returns:
        The completions, without their prompts, in the order of ``prompts``.

    Raises:
        InputError: a prompt that is empty, too long or not str, a max_new_tokens that is not a positive int,
            or a sampling option out of range.
    """
    texts = _prompt_list(prompts)
    stop = [stop] if isinstance(stop, str) else list(stop)  # a bare "+ 2" once stopped at "+", " " and "2"
    if any(not text for text in texts):
        raise InputError("empty prompt: give at least one character of text to complete")
    if not all(is_unicode(text) for text in texts):
        raise InputError("prompt is not valid UTF-8 text; pass it as UTF-8 (check its terminal's or file's encoding)")
    text_stream = TextStream(tokenizer, len(texts), stream, stop) if stream is not None or stop else None
    tokens = generate_tokens(
        model,
        [tokenizer.encode(text) for text in texts],
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        compile=compile,
        truncate=truncate,
        stats=stats,
        decode_chunk=decode_chunk,
        observer=text_stream,
        tune=tune,
    )
    if text_stream is not None:
        return text_stream.close()
    return [tokenizer.decode(ids) for ids in tokens]


def generate_tokens(
    model: Thinker,
    prompt_ids: list[list[int]],
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
    compile: bool = False,
    truncate: bool = False,
    stats: GenerationStats | None = None,
    decode_chunk: int | None = None,
    observer: Observer | None = None,
    tune: bool = False,
    prefix: KVPrefix | None = None,
) -> list[list[int]]:
    """Token-level :func:`generate`: complete each list of ids; all rows run as one batch.

    Args:
        eos_id: the token that ends a row (it is included in the row's output); None: rows never end early.
        pad_id: the token used for left padding and for the steps after a row has ended.
        observer: called with each row's new tokens after every decode call; returns ``{row: tokens to
            keep}`` for rows that must end (how :func:`generate` implements stop strings and streaming).
        prefix: for a batch of one with the KV cache on: the part of the prompt that the last generation
            given this object left in the cache is not run again (see :class:`KVPrefix`).
        The other arguments are those of :func:`generate`.

    Returns:
        The generated ids of each row, up to and including its ``eos_id``.
    """
    params = SamplingParams(temperature, top_k, top_p)
    check_seed(seed)
    device = model.lm_head.weight.device
    compile = compile or tune
    chunk = _chunk(decode_chunk, compile, device)  # every option is checked before the prompts are fitted
    prompts, max_new = fit_to_context(prompt_ids, model.config.ctx_len, max_new_tokens, truncate)
    _check_ids(prompts, model.config.vocab_size)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    setup = DecodeSetup(model, params, pad_id, -1 if eos_id is None else eos_id, generator)
    with torch.inference_mode():
        return run_generation(setup, prompts, max_new, compile, chunk, stats, observer, tune, prefix)


def _prompt_list(prompts: list[str] | str) -> list[str]:
    """``prompts`` as a list of str. Bytes are refused, not read as one prompt per byte (ints)."""
    one = isinstance(prompts, (str, bytes, bytearray)) or not isinstance(prompts, Iterable)
    texts = [prompts] if one else list(prompts)
    for text in texts:
        if not isinstance(text, str):
            hint = ": decode them to str first" if isinstance(text, (bytes, bytearray)) else ""
            raise InputError(f"prompts must be str, not {type(text).__name__}{hint}")
    return texts


def is_unicode(text: str) -> bool:
    """Whether ``text`` holds no lone surrogates, which is how Python passes on bytes that are not UTF-8 (in
    ``sys.argv`` and, in the C locale, standard input); the tokenizer would fail on them with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_max_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise InputError(f"max_new_tokens must be an int, not {type(max_new_tokens).__name__} {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, not {max_new_tokens}")


def check_decode_chunk(decode_chunk: int | None) -> None:
    if decode_chunk is not None and decode_chunk < 1:
        raise InputError(f"decode_chunk must be at least 1, not {decode_chunk}")


def check_options(max_new_tokens: int, seed: int | None, sampling: dict[str, object]) -> None:
    """Reject a bad option of :func:`generate` before any work (the generation checks each again)."""
    check_max_new_tokens(max_new_tokens)
    check_seed(seed)
    check_decode_chunk(sampling.get("decode_chunk"))  # type: ignore[arg-type]
    options = {name: sampling[name] for name in ("temperature", "top_k", "top_p") if name in sampling}
    SamplingParams(**options)  # type: ignore[arg-type]


def _chunk(decode_chunk: int | None, compile: bool, device: torch.device) -> int:
    check_decode_chunk(decode_chunk)
    if decode_chunk is None:
        return CUDA_DECODE_CHUNK if compile and device.type == "cuda" else 1
    return decode_chunk


def usable_chunk(chunk: int, max_new: int) -> int:
    """``chunk``, capped at the decode steps this generation makes: ``max_new - 1``, as the prefill samples the
    first token. ``max_new`` already fits the context, so the cap keeps the chunk within the context too.

    A larger chunk never runs (:func:`_decode_loop` takes single steps when fewer than a chunk are left), but
    compiled decoding would still build it, and the unrolled steps' compile time grows with their number: a
    chunk of 1000 for 10 new tokens compiled for more than 10 minutes on a CPU. The cap is silent, unlike
    the warned cap of ``max_new_tokens``, which shortens the output: the chunk is a speed setting, and a
    greedy generation decodes the same tokens whatever its chunk.
    """
    return max(1, min(chunk, max_new - 1))


def fit_to_context(
    prompts: list[list[int]], ctx_len: int, max_new_tokens: int, truncate: bool
) -> tuple[list[list[int]], int]:
    """Check the prompts against the context (see the module docstring); return them and ``max_new_tokens``."""
    check_max_new_tokens(max_new_tokens)
    if not prompts:
        raise InputError("no prompts given")
    fitted = []
    for ids in prompts:
        if not ids:
            raise InputError("empty prompt: it encodes to no tokens")
        if len(ids) > ctx_len - 1:
            if not truncate:
                raise InputError(f"prompt is {len(ids)} tokens but ctx_len is {ctx_len}; shorten it or pass --truncate")
            ids = ids[-max(ctx_len - min(max_new_tokens, ctx_len // 2), 1) :]
        fitted.append(list(ids))
    longest = max(len(ids) for ids in fitted)
    if longest + max_new_tokens > ctx_len:
        room = ctx_len - longest
        if room < 1:
            raise InputError(f"ctx_len {ctx_len} leaves no room to generate after a prompt of {longest} tokens")
        warnings.warn(
            f"a {longest}-token prompt leaves room for {room} new tokens in ctx_len {ctx_len}; "
            f"generating at most {room} instead of {max_new_tokens}",
            stacklevel=3,
        )
        max_new_tokens = room
    return fitted, max_new_tokens


def _check_ids(prompts: list[list[int]], vocab_size: int) -> None:
    """An id outside the embedding would fail deep in the model (on a GPU, as a device-side assert)."""
    for ids in prompts:
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1})")


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one batch: ``tokens`` [B, T] padded on the left with ``pad_id``, ``valid`` [B, T] real tokens."""
    length = max(len(ids) for ids in prompts)
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, ids in enumerate(prompts):
        tokens[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        valid[row, length - len(ids) :] = True
    return tokens.to(device), valid.to(device)


def run_generation(
    setup: DecodeSetup,
    prompts: list[list[int]],
    max_new: int,
    compile: bool,
    chunk: int,
    stats: GenerationStats | None,
    observer: Observer | None,
    tune: bool = False,
    prefix: KVPrefix | None = None,
) -> list[list[int]]:
    """Generate for already-validated ``prompts`` (what :func:`generate_tokens` runs inside inference mode).

    Public for the benchmarks, which run it under ``torch.no_grad`` too, to measure what inference mode buys.
    """
    model, device = setup.model, setup.device
    if compile and not model.kv_cache_enabled:
        warnings.warn("compile applies to cached decoding; without the KV cache decoding runs eagerly", stacklevel=4)
        compile = False
    tokens, valid = left_pad(prompts, setup.pad_id, device)
    batch, length = tokens.shape
    keeps = prefix is not None and batch == 1 and model.kv_cache_enabled
    if compile:
        slots = compiled_cache_len(model.config.ctx_len, length + max_new)
    else:  # a kept prefix needs a cache that does not grow (a new one holds nothing) as the prompts do
        slots = model.config.ctx_len if keeps else length + max_new
    # Normal tensors, not inference tensors: the user may reset the cache outside inference mode, and the
    # compiled step's guards expect the same kind of tensor every time.
    with torch.inference_mode(False):
        model.setup_caches(batch, slots)
    reused = prefix.reusable(model, prompts[0]) if keeps else 0
    # Until this generation is over, its cache holds what nobody tracks: cleared before anything writes to it,
    # so that one stopped midway (Ctrl-C in chat, in a compile's warm-up even) leaves no prefix to reuse.
    model.cache_owner = None
    chunk = usable_chunk(chunk, max_new)
    decoder = CachedDecoder(setup, chunk, compile, tune) if model.kv_cache_enabled else UncachedDecoder(setup)
    compile_s = decoder.warm_up(batch)
    if compile_s is not None:  # a warm-up that compiled wrote to the first cache slots
        reused = 0
    clock = (lambda: synced_time(device)) if stats is not None else (lambda: 0.0)
    start = clock()
    first = prefill(setup, tokens, valid, start=reused)
    first_at = clock()
    decoder.start(tokens, first, max_new)
    out, limits = _decode_loop(decoder, setup, first, max_new, observer)
    sampled = out.tolist()  # one copy to the host
    if keeps:  # the cache now holds the prompt and every token fed back: all but the last one sampled
        prefix.ids = prompts[0] + sampled[0][:-1]
        model.cache_owner = prefix
    rows = _trim(sampled, setup.eos_id, limits)
    if stats is not None:
        stats.rows, stats.prompt_tokens = batch, sum(len(ids) for ids in prompts)
        stats.cached_prompt_tokens = reused
        stats.generated_tokens = sum(len(ids) for ids in rows)
        stats.time_to_first_token_s, stats.total_s = first_at - start, clock() - start
        stats.compile_s = compile_s
    return rows


def compiled_cache_len(ctx_len: int, needed: int) -> int:
    """Cache slots for compiled decoding: a power of two (at least 256), at most ``ctx_len``.

    The compiled step's shapes follow the cache, and ``setup_caches`` keeps a cache that is large enough,
    so prompt lengths do not cause recompiles: the cache only grows, through at most a few sizes. A cache
    of the whole context would do too, but each step attends over every slot, which costs a model with
    a long context (an imported one with 32k positions) more than the step itself.
    """
    return min(ctx_len, max(MIN_COMPILED_CACHE, 1 << (needed - 1).bit_length()))


def _decode_loop(
    decoder: CachedDecoder | UncachedDecoder,
    setup: DecodeSetup,
    first: torch.Tensor,
    max_new: int,
    observer: Observer | None,
) -> tuple[torch.Tensor, dict[int, int]]:
    """Decode until every row is done or ``max_new`` tokens; return them [B, N] and the rows stop strings cut."""
    out = torch.full((first.shape[0], max_new), setup.pad_id, dtype=torch.long, device=first.device)  # [B, N]
    out[:, 0] = first
    done = first == setup.eos_id  # [B]
    limits: dict[int, int] = {}
    every = EOS_CHECK_EVERY.get(first.device.type, EOS_CHECK_EVERY["default"])
    check_every = 1 if observer is not None else every  # an observer reads every token anyway
    produced, last_check = 1, 0
    if observer is not None:
        done = _observe(observer, out[:, :1], done, limits)
    while produced < max_new:
        if produced - last_check >= check_every:
            last_check = produced
            if bool(done.all()):  # the host waits for the device here
                break
        n = decoder.chunk if max_new - produced >= decoder.chunk else 1
        new, done = decoder.step(n, done)
        out[:, produced : produced + n] = new
        produced += n
        if observer is not None:
            done = _observe(observer, new, done, limits)
    return out[:, :produced], limits


def _observe(observer: Observer, new: torch.Tensor, done: torch.Tensor, limits: dict[int, int]) -> torch.Tensor:
    ended = observer(new.tolist())
    if ended:
        limits.update(ended)
        done[torch.tensor(list(ended), device=done.device)] = True
    return done


def _trim(rows: list[list[int]], eos_id: int, limits: dict[int, int]) -> list[list[int]]:
    """Each row up to and including its first ``eos_id``, and no longer than a stop string allowed."""
    trimmed = []
    for row, ids in enumerate(rows):
        if eos_id in ids:
            ids = ids[: ids.index(eos_id) + 1]
        trimmed.append(ids[: limits.get(row, len(ids))])
    return trimmed
