"""The decode loop's building blocks: prefill, the (optionally compiled) decode step, and the two decoders.

A decoder turns the last token into the next ``n`` tokens of every row. :class:`CachedDecoder` feeds one
token per step through the static KV cache; :class:`UncachedDecoder` reruns the whole sequence so far
(the honest cost of decoding without a cache). Which one runs, compiled or not, is decided once at setup,
so the loop in :mod:`muomni.inference.generate` reads the same whatever is switched on.

Compiled decoding follows gpt-fast: only the decode step is compiled, with static shapes (the cache has a
power-of-two number of slots and only grows, the position is a one-element tensor), so it compiles once
per batch size and sampling setting, never per token or prompt length. On CUDA the compiled step is
replayed ``decode_chunk`` times inside one CUDA graph captured by hand (:class:`GraphedDecodeFunction`),
so the host launches one graph per ``decode_chunk`` tokens and checks for end of sequence only between
graphs; elsewhere the ``decode_chunk`` steps are unrolled into one compiled function.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from muomni.inference.sampling import SamplingParams, blank_noise, draw_noise, sample
from muomni.inference.stats import synced_time
from muomni.models.decode_ops import register_inductor_fallbacks
from muomni.models.thinker import Thinker

# (token [B, 1], input_pos [1], done [B], noise [n, B, V or 1] or None) -> (tokens [B, n], done [B])
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class DecodeSetup:
    """What every step needs and never changes during one generation."""

    model: Thinker
    params: SamplingParams
    pad_id: int
    eos_id: int  # -1: no end-of-sequence token, rows run to max_new_tokens
    generator: torch.Generator | None

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def noise(self, steps: int, batch: int) -> torch.Tensor | None:
        """Sampling noise for ``steps`` decode steps (see :func:`draw_noise`); None when greedy."""
        if self.params.greedy:
            return None
        return draw_noise((steps, batch, self.model.config.vocab_size), self.device, self.generator)


def last_logits(model: Thinker, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Logits [B, V] of the last position of ``tokens`` [B, T]; the head runs on that position alone."""
    hidden = model.model(tokens, input_pos)  # [B, T, D]
    return model.lm_head(hidden[:, -1])


def prefill(setup: DecodeSetup, tokens: torch.Tensor, valid: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Run the left-padded prompts ``tokens`` [B, T] in one forward and sample each row's first token [B].

    ``valid`` [B, T] marks real tokens; with the cache on, their keys/values fill slots 0..T-1. ``start``:
    the cache holds the keys/values of the first ``start`` tokens already (a kept prefix, see
    :class:`~muomni.inference.prefix.KVPrefix`), so only the rest runs, attending to those slots.
    """
    batch, length = tokens.shape
    setup.model.set_key_padding(valid)
    logits = last_logits(setup.model, tokens[:, start:], torch.arange(start, length, device=tokens.device))
    noise = setup.noise(1, batch)
    return sample(logits, setup.params, None if noise is None else noise[0])


def _finish(
    params: SamplingParams,
    pad_id: int,
    eos_id: int,
    logits: torch.Tensor,
    done: torch.Tensor,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample [B] from ``logits`` [B, V]; finished rows get padding; a row that samples <eos> is done."""
    token = torch.where(done, pad_id, sample(logits, params, noise))
    return token, done | (token == eos_id)


def make_decode_steps(setup: DecodeSetup, steps: int) -> StepFn:
    """A function that decodes ``steps`` tokens through the KV cache, unrolled (one graph when compiled)."""
    # Plain values in the closure: the compiled graph guards on them, not on the setup object.
    model, params, pad_id, eos_id = setup.model, setup.params, setup.pad_id, setup.eos_id

    def decode_steps(
        token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for i in range(steps):
            # Not ``input_pos + 0``: Inductor computed that sum anew for each custom op that reads it (two a
            # layer, 24 kernels of about 1 us in a small-preset step on an H200).
            logits = model(token, input_pos + i if i else input_pos)[:, -1]  # [B, V]
            next_token, done = _finish(params, pad_id, eos_id, logits, done, None if noise is None else noise[i])
            out.append(next_token)
            token = next_token[:, None]  # [B, 1]
        return torch.stack(out, dim=1), done  # [B, steps]

    return decode_steps


class DecodeFunction:
    """A decode function of ``steps`` tokens per call (compiled or not) and the setups it is ready for."""

    def __init__(self, fn: StepFn, steps: int) -> None:
        self.fn, self.steps = fn, steps
        self.warm: dict[int, tuple] = {}  # batch size -> what it was prepared for (see _warm_key)

    def prepare(
        self, token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> None:
        """Run once on these (junk) inputs, so that compiling happens now rather than in the timed loop."""
        self.fn(token, input_pos, done, noise)

    def __call__(
        self, token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(token, input_pos, done, noise)


class GraphedDecodeFunction(DecodeFunction):
    """``steps`` calls of a compiled one-token step, captured by hand as one CUDA graph per batch size.

    A replay launches the whole chunk with one host call, so the host's work per token (Python, Dynamo's
    guards, kernel launches) is gone. Inductor's own CUDA graphs (``mode="reduce-overhead"``) would need
    the ``steps`` tokens unrolled into one compiled function, and Inductor's time grows with the graph:
    8 unrolled steps of the small preset took 142 s to compile, and with ``tune`` did not finish in
    5 minutes. Here the one step is compiled (and tuned) once and the chunk captured from it: 26 s for
    the small preset, 59 s tuned (H200, docs/BENCHMARKS.md). The graph reads the weights, KV cache and
    padding table at the addresses they had when it was captured: the warm-up key holds those addresses,
    so a reallocated cache or a moved model is captured anew, while weights updated in place (training,
    ``load_state_dict``) are read as they are.
    """

    def __init__(self, step: DecodeFunction, steps: int) -> None:
        super().__init__(step.fn, steps)
        self.graphs: dict[int, _CapturedSteps] = {}  # by batch size

    def prepare(
        self, token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> None:
        self.graphs.pop(token.shape[0], None)  # free the stale graph's memory before capturing anew
        self.graphs[token.shape[0]] = _CapturedSteps(self.fn, self.steps, token, input_pos, done, noise)

    def __call__(
        self, token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graphs[token.shape[0]].replay(token, input_pos, done, noise)


class _CapturedSteps:
    """One CUDA graph of ``steps`` decode steps, with the static buffers it reads its inputs from."""

    def __init__(
        self,
        step: StepFn,
        steps: int,
        token: torch.Tensor,
        input_pos: torch.Tensor,
        done: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> None:
        self.step, self.steps = step, steps
        # Plain tensors, not inference tensors: a replay under no_grad must still be able to refill them.
        with torch.inference_mode(False):
            self.token, self.input_pos, self.done = token.clone(), input_pos.clone(), done.clone()
            self.noise = None if noise is None else noise.clone()  # [steps, B, V]
        # The step compiles (and tunes, timing kernels) on its first call, which a capture must not contain;
        # a side stream keeps the warm-up's allocations out of the graph's pool (as PyTorch's docs advise).
        with torch.cuda.device(token.device):  # the model's GPU, which need not be the current one
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._run()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = self._run()

    def _run(self) -> tuple[torch.Tensor, torch.Tensor]:
        token, done, out = self.token, self.done, []
        for i in range(self.steps):
            noise = None if self.noise is None else self.noise[i : i + 1]  # [1, B, V]
            token, done = self.step(token, self.input_pos + i, done, noise)  # token [B, 1]
            out.append(token)
        return torch.cat(out, dim=1), done  # [B, steps], [B]

    def replay(
        self, token: torch.Tensor, input_pos: torch.Tensor, done: torch.Tensor, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs live in the graph's memory and are overwritten by the next replay: copy what is kept."""
        self.token.copy_(token)
        self.input_pos.copy_(input_pos)
        self.done.copy_(done)
        if self.noise is not None and noise is not None:
            self.noise.copy_(noise)
        with torch.cuda.device(self.token.device):
            self.graph.replay()
        return self.outputs


# The torch.compile backend; None is TorchInductor. Tests put a backend here that counts compilations.
COMPILE_BACKEND: str | Callable | None = None


def compile_options(model: Thinker, tune: bool = False) -> dict:
    """How the decode step is compiled: the whole step as one static-shape graph.

    ``tune`` turns on Inductor's coordinate-descent tuning of every Triton kernel (CUDA only). Under it
    Inductor also writes a matrix-vector product (one decoded token per row) as a product and a sum that
    fuses with the RMSNorm before it. On an H200 it made batch-1 decoding 1.61x faster for the tiny preset
    and 1.55x for the small one before the step's products became muomni's own kernels; with them it buys
    nothing there (docs/BENCHMARKS.md), and it makes the first compile longer, hence opt-in.
    """
    options: dict = {
        # Routing tokens to experts has data-dependent shapes, so a mixture of experts cannot be one graph.
        "fullgraph": not model.config.use_moe,
        "dynamic": False,  # static shapes: a new batch size compiles anew rather than into a slower dynamic graph
    }
    if COMPILE_BACKEND is not None:
        return {**options, "backend": COMPILE_BACKEND}
    if tune and model.lm_head.weight.device.type == "cuda":
        return {**options, "options": {"coordinate_descent_tuning": True}}
    return options


def compiled_decode_steps(setup: DecodeSetup, steps: int, tune: bool = False) -> DecodeFunction:
    """The compiled decode function for this model and setting, made once and kept on the model.

    On CUDA it is one compiled step replayed ``steps`` times in a CUDA graph (:class:`GraphedDecodeFunction`),
    except for a mixture of experts: its routing waits on the device for how many tokens each expert gets,
    which a CUDA graph cannot hold. There, and off CUDA, the ``steps`` tokens are unrolled into one
    compiled function.
    """
    if setup.device.type == "cuda" and not setup.model.config.use_moe and COMPILE_BACKEND is None:
        return _kept(setup, ("graphed", steps, tune), lambda: GraphedDecodeFunction(_compiled(setup, 1, tune), steps))
    return _compiled(setup, steps, tune)


def _compiled(setup: DecodeSetup, steps: int, tune: bool) -> DecodeFunction:
    """``steps`` decode steps unrolled into one compiled function."""

    def make() -> DecodeFunction:
        register_inductor_fallbacks()
        fn = _own_code(make_decode_steps(setup, steps))
        return DecodeFunction(torch.compile(fn, **compile_options(setup.model, tune)), steps)

    return _kept(setup, ("unrolled", steps, tune), make)


def _kept(setup: DecodeSetup, kind: tuple, make: Callable[[], DecodeFunction]) -> DecodeFunction:
    """The decode function of this ``kind`` and sampling setting kept on the model, made on first use."""
    kept: dict[tuple, DecodeFunction] = setup.model.__dict__.setdefault("_muomni_compiled_decode", {})
    key = (setup.params, setup.pad_id, setup.eos_id, *kind)
    if key not in kept:
        kept[key] = make()
    return kept[key]


def _own_code(fn: StepFn) -> StepFn:
    """``fn`` with a code object of its own.

    Dynamo keeps compiled graphs per code object, and every closure made by :func:`make_decode_steps`
    shares one: settings and models would pile up in one cache and, past ``recompile_limit`` (8), fall
    back to eager without a word. A copy of the code object gives each compiled function its own cache.
    """
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _warm_key(model: Thinker, batch: int) -> tuple:
    """What a decode function is prepared for: the batch, and the shapes and addresses of what it reads.

    Shapes decide what is compiled; addresses decide what a CUDA graph reads (see
    :class:`GraphedDecodeFunction`). Reading ~100 addresses costs microseconds, once per generation.
    """
    cache = model.attentions[0].kv_cache
    shapes = tuple(model.model.key_valid.shape), None if cache is None else tuple(cache.k.shape)
    addresses = tuple(t.data_ptr() for t in itertools.chain(model.parameters(), model.buffers()))
    return batch, shapes, addresses


class CachedDecoder:
    """Decode through the static KV cache, ``chunk`` tokens per call (plus single steps for the tail).

    Args:
        setup: the model and sampling setting.
        chunk: tokens per call of the decode function; more means fewer launches and EOS checks.
        compile: compile the decode function (and warm it up before the prompts run).
        tune: with ``compile``, tune the compiled kernels (see :func:`compile_options`).
    """

    def __init__(self, setup: DecodeSetup, chunk: int = 1, compile: bool = False, tune: bool = False) -> None:
        self.setup, self.chunk, self.compiled = setup, chunk, compile
        sizes = {chunk, 1}
        if compile:
            self.fns = {n: compiled_decode_steps(setup, n, tune) for n in sizes}
        else:
            self.fns = {n: DecodeFunction(make_decode_steps(setup, n), n) for n in sizes}
        self.token = self.pos = torch.empty(0)

    def warm_up(self, batch: int) -> float | None:
        """Compile (and capture) for this batch size; return the seconds it took, None if nothing was new.

        Call before :func:`prefill`: the warm-up writes junk to the first cache slots, which the prompt
        then overwrites. Its noise is constant, so the user's generator is not advanced.
        """
        if not self.compiled:
            return None
        device = self.setup.device
        key = _warm_key(self.setup.model, batch)
        todo = [c for c in self.fns.values() if c.warm.get(batch) != key]
        if not todo:
            return None
        start = synced_time(device)
        for c in todo:
            token = torch.zeros(batch, 1, dtype=torch.long, device=device)
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            noise = None if self.setup.params.greedy else blank_noise((c.steps, batch, self.vocab), device)
            c.prepare(token, torch.zeros(1, dtype=torch.long, device=device), done, noise)
            c.warm[batch] = key
        return synced_time(device) - start

    @property
    def vocab(self) -> int:
        return self.setup.model.config.vocab_size

    def start(self, prompt: torch.Tensor, first: torch.Tensor, max_new_tokens: int) -> None:
        """Begin after the prefill of ``prompt`` [B, T], whose sampled tokens are ``first`` [B]."""
        # Inputs live in buffers of fixed layout, refilled in place: a compiled graph guards on strides.
        self.token = first[:, None].contiguous()  # [B, 1]
        self.pos = torch.tensor([prompt.shape[1]], dtype=torch.long, device=prompt.device)  # [1]: its slot

    def step(self, n: int, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` tokens [B, n] (``n`` is ``chunk`` or 1) and the updated ``done`` [B]."""
        tokens, done = self.fns[n](self.token, self.pos, done, self.setup.noise(n, done.shape[0]))
        # A CUDA graph's outputs live in its memory pool and are overwritten by the next replay: copy them.
        tokens, done = tokens.clone(), done.clone()
        self.token.copy_(tokens[:, -1:])
        self.pos += n
        return tokens, done


class UncachedDecoder:
    """Decode without a KV cache: each step runs the whole sequence so far (``input_pos = arange(L)``)."""

    chunk = 1

    def __init__(self, setup: DecodeSetup) -> None:
        self.setup = setup
        self.seq = torch.empty(0)
        self.length = 0

    def warm_up(self, batch: int) -> float | None:
        return None

    def start(self, prompt: torch.Tensor, first: torch.Tensor, max_new_tokens: int) -> None:
        batch, length = prompt.shape
        self.seq = prompt.new_full((batch, length + max_new_tokens), self.setup.pad_id)  # [B, T + N]
        self.seq[:, :length] = prompt
        self.seq[:, length] = first
        self.length = length + 1

    def step(self, n: int, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, length = self.setup, self.length
        logits = last_logits(s.model, self.seq[:, :length], torch.arange(length, device=self.seq.device))
        noise = s.noise(1, done.shape[0])
        token, done = _finish(s.params, s.pad_id, s.eos_id, logits, done, None if noise is None else noise[0])
        self.seq[:, length] = token
        self.length += 1
        return token[:, None], done
