"""``muomni bench infer``: what the KV cache, batching, compiled decoding and inference_mode buy.

Rows decode with no early stop, so every row produces exactly its tokens; they decode greedily, except the
two that sample as ``muomni generate`` does by default (temperature 0.8) and with top-p 0.9, which show
what choosing a token costs beside the argmax. Each row runs once to
warm up (and compile) and is then timed ``repeats`` times with the device synchronized; the median is
reported. Batch-1 rows also give the fraction of the memory-bandwidth bound: each decode step must read
every weight once, so ``weight bytes / step time`` over the GPU's bandwidth is how close the step is to
the fastest it could be. Each row's speed is also given against the row it is compared with (the KV cache
against none, compiled decoding against eager, a batch against batch 1, ...; see :func:`reference_row`).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch

from muomni.bench.hardware import describe, peak_memory_bytes, reset_peak_memory, synchronize
from muomni.bench.options import bench_out_folder
from muomni.bench.peaks import device_peak
from muomni.bench.report import GIB, write_results
from muomni.bench.selection import wanted_rows
from muomni.config import Config, load_config
from muomni.config_files import overrides_dict
from muomni.errors import ConfigError
from muomni.inference.decode import DecodeSetup
from muomni.inference.generate import fit_to_context, run_generation
from muomni.inference.sampling import SamplingParams
from muomni.inference.stats import GenerationStats
from muomni.models.thinker import Thinker
from muomni.training.sources import resolve_device

PROMPT_TOKENS = 16
GREEDY = SamplingParams(0.0, 0, 1.0)
# What the sampled rows draw with: generate's default temperature, then with top-p as well.
SAMPLED = SamplingParams(0.8, 0, 1.0)
TOP_P = SamplingParams(0.8, 0, 0.9)


def requested(args: argparse.Namespace) -> tuple[Config | None, torch.device]:
    """The config (None with ``--ckpt``: the checkpoint's own) and the device asked for, checked before a
    model is built. ``device=cuda`` without a GPU is refused, as train refuses it (it ran on the CPU).

    With ``--ckpt`` the checkpoint fixes the model, so ``--config`` and every key but ``device`` (where to
    measure it, as ``generate --device``) are refused: they were ignored without a word. ``--config`` counts
    as given when the command line gave it (the parser's ``_Once`` marks it), its default ``tiny`` included.
    """
    if args.ckpt is None:
        cfg = load_config(args.config, args.overrides)
        return cfg, resolve_device(cfg.device)
    if getattr(args, "_config_given", False):
        raise ConfigError("--config is not used with --ckpt: the checkpoint fixes the model; leave --config out")
    keys = overrides_dict(args.overrides)
    if other := sorted(set(keys) - {"device"}):
        raise ConfigError(
            f"config keys are not used with --ckpt ({', '.join(other)}): the checkpoint fixes the model; only "
            "device= may be given"
        )
    # Read as the config key is, so that a bad value is named as train names it.
    return None, resolve_device(load_config(None, {"device": keys.get("device", "auto")}).device)


def _model(ckpt: str | None, cfg: Config | None, device: torch.device) -> Thinker:
    """The checkpoint's model on ``device``, or a model of ``cfg`` with random weights."""
    if ckpt:
        from muomni.inference.loading import load

        return load(ckpt, device)[0]
    assert cfg is not None
    torch.manual_seed(cfg.seed)
    model = Thinker(cfg).to(device).eval()  # random weights: speed does not depend on what was learned
    return model.to(torch.bfloat16) if device.type == "cuda" else model


def decode(
    model: Thinker,
    batch: int,
    new: int,
    cache: bool,
    compile: bool,
    grad_mode: type,
    tune: bool = False,
    sampling: SamplingParams = GREEDY,
) -> GenerationStats:
    """One generation of ``new`` tokens for ``batch`` random prompts, under ``grad_mode``."""
    model.enable_kv_cache(cache)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (batch, PROMPT_TOKENS), generator=gen).tolist()
    prompts, max_new = fit_to_context(prompts, model.config.ctx_len, new, False)
    device = model.lm_head.weight.device
    generator = None if sampling.greedy else torch.Generator(device).manual_seed(0)
    setup = DecodeSetup(model, sampling, 0, -1, generator)
    stats = GenerationStats()
    chunk = 8 if compile and device.type == "cuda" else 1
    with grad_mode():
        run_generation(setup, prompts, max_new, compile, chunk, stats, None, tune)
    return stats


def step_weight_bytes(model: Thinker) -> int:
    """The weight bytes one batch-1 decode step reads: every weight once, except the embedding table, of which
    it reads the token's row (unless the table is also the output head, which reads all of it)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied table is counted once
    embed = model.model.embed_tokens.weight
    if embed is not model.lm_head.weight:
        total -= (embed.shape[0] - 1) * embed.shape[1] * embed.element_size()
    return total


def _row(
    model: Thinker,
    name: str,
    batch: int,
    new: int,
    cache: bool = True,
    compile: bool = False,
    grad_mode: type[AbstractContextManager] = torch.inference_mode,
    repeats: int = 3,
    tune: bool = False,
    sampling: SamplingParams = GREEDY,
) -> dict[str, Any]:
    device = model.lm_head.weight.device
    print(f"bench infer: {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # The first generation compiles, captures graphs and warms caches.
    warm = decode(model, batch, new, cache, compile, grad_mode, tune, sampling)
    warm_s = time.perf_counter() - started
    reset_peak_memory(device)
    runs = [decode(model, batch, new, cache, compile, grad_mode, tune, sampling) for _ in range(repeats)]
    synchronize(device)
    median = sorted(runs, key=lambda s: s.decode_tokens_per_s)[len(runs) // 2]
    decoded_steps = max(median.generated_tokens // batch - 1, 1)
    step_s = median.decode_s / decoded_steps
    weight_bytes = step_weight_bytes(model)
    peak = device_peak(device)
    return {
        "name": name,
        "batch": batch,
        "new_tokens": median.generated_tokens // batch,
        "kv_cache": cache,
        "compiled": compile,
        "tuned": tune,
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p},
        "grad_mode": grad_mode.__name__,
        "tokens_per_s_total": median.decode_tokens_per_s,
        "tokens_per_s_per_seq": median.decode_tokens_per_s / batch,
        "time_to_first_token_s": median.time_to_first_token_s,
        "ms_per_step": 1e3 * step_s,
        "peak_memory_bytes": peak_memory_bytes(device),
        "warmup_s": warm_s,
        "compile_s": warm.compile_s,
        "bandwidth_fraction": (weight_bytes / step_s / (peak.bandwidth_gbs * 1e9)) if peak and batch == 1 else None,
        "all_runs_tokens_per_s": [s.decode_tokens_per_s for s in runs],
    }


def row_specs(cuda: bool) -> list[tuple[str, dict[str, Any]]]:
    """Every row that applies on this kind of device, in table order: (name, settings of :func:`_row`)."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("no KV cache", {"batch": 1, "cache": False, "repeats": 1}),
        ("KV cache", {"batch": 1}),
        ("KV cache + no_grad", {"batch": 1, "grad_mode": torch.no_grad}),
        ("KV cache + compile", {"batch": 1, "compile": True}),
    ]
    if cuda:  # kernel tuning is a CUDA (Triton) setting
        specs.append(("KV cache + compile + tune", {"batch": 1, "compile": True, "tune": True}))
    specs += [
        ("KV cache + compile + sampling", {"batch": 1, "compile": True, "sampling": SAMPLED}),
        ("KV cache + compile + top-p", {"batch": 1, "compile": True, "sampling": TOP_P}),
    ]
    # Batches decode compiled; on a CPU also eagerly, as generate does there without --compile (compiling
    # needs a C++ compiler on a CPU). On a GPU an eager step is all launch overhead.
    for compiled in (False, True) if not cuda else (True,):
        specs += [
            (f"batch {b}" + (" + compile" if compiled else ""), {"batch": b, "compile": compiled}) for b in (4, 16, 64)
        ]
    return specs


def infer_rows(model: Thinker, new: int, names: str | None = None) -> Iterator[dict[str, Any]]:
    """The rows (``names``: a comma-separated selection, default all), each measured as it comes."""
    specs = row_specs(model.lm_head.weight.device.type == "cuda")
    wanted = wanted_rows(names, [n for n, _ in specs])  # checked now, before any row runs
    return (_row(model, name, new=new, **kw) for name, kw in specs if name in wanted)


def hf_rows(model: Thinker, new: int) -> Iterator[dict[str, Any]]:
    """Hugging Face ``generate`` on the same weights: dynamic cache and static cache, greedy, batch 1."""
    from muomni.bench.hf_twin import llama_twin

    device = model.lm_head.weight.device
    hf = llama_twin(model).eval()
    prompt = torch.randint(3, model.config.vocab_size, (1, PROMPT_TOKENS), device=device)
    new = min(new, model.config.ctx_len - PROMPT_TOKENS)
    for cache in ("dynamic", "static"):
        kwargs = {"do_sample": False, "pad_token_id": 0}
        if cache == "static":
            kwargs["cache_implementation"] = "static"
        # As muomni's rows count them: the decode steps' tokens over their time, the prompt's pass and the
        # first token (a generation of one token, timed apart) left out.
        seconds = _hf_seconds(hf, prompt, new, kwargs, device)
        first = _hf_seconds(hf, prompt, 1, kwargs, device) if new > 1 else 0.0
        decode_s, decoded = (seconds - first, new - 1) if new > 1 and seconds > first else (seconds, new)
        yield {
            "name": f"HF generate, {cache} cache",
            "batch": 1,
            "new_tokens": new,
            "tokens_per_s_total": decoded / decode_s,
            "tokens_per_s_per_seq": decoded / decode_s,
            "time_to_first_token_s": first or None,
            "ms_per_step": 1e3 * decode_s / decoded,
            "framework": "hf",
        }


def _hf_seconds(hf: Any, prompt: torch.Tensor, new: int, kwargs: dict[str, Any], device: torch.device) -> float:
    """The median seconds of ``generate`` making ``new`` tokens; the first of three calls warms up (and, for
    the static cache, compiles)."""
    times = []
    for _ in range(3):
        synchronize(device)
        t0 = time.perf_counter()
        hf.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def reference_row(name: str) -> str | None:
    """The row ``name`` is compared with, as the claims go: the KV cache against none, ``no_grad`` against
    ``inference_mode`` (the plain cached row), compiled decoding against eager, tuning and sampling against
    the greedy compiled row, a batch against batch 1 decoded the same way, and Hugging Face's rows against
    muomni's compiled batch 1."""
    if name.startswith("batch "):
        return "KV cache + compile" if name.endswith("+ compile") else "KV cache"
    return {
        "KV cache": "no KV cache",
        "KV cache + no_grad": "KV cache",
        "KV cache + compile": "KV cache",
        "KV cache + compile + tune": "KV cache + compile",
        "KV cache + compile + sampling": "KV cache + compile",
        "KV cache + compile + top-p": "KV cache + compile",
        "HF generate, dynamic cache": "KV cache + compile",
        "HF generate, static cache": "KV cache + compile",
    }.get(name)


def speed_versus(rows: list[dict[str, Any]]) -> dict[str, tuple[float, str]]:
    """Each row's total tokens/s over its reference row's (see :func:`reference_row`), where both ran."""
    speeds = {r["name"]: r["tokens_per_s_total"] for r in rows}
    found = {}
    for name, speed in speeds.items():
        reference = reference_row(name)
        if reference in speeds:
            found[name] = (speed / speeds[reference], reference)
    return found


def infer_table(rows: list[dict[str, Any]]) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    head = (
        "| row | batch | tokens/s total | speed vs | tokens/s per sequence | TTFT ms | ms/step | peak memory "
        "| bandwidth bound | compile s |"
    )
    lines = [head, "|---" * 10 + "|"]
    versus = speed_versus(rows)
    for r in rows:
        ttft = r.get("time_to_first_token_s")
        mem = r.get("peak_memory_bytes")
        frac = r.get("bandwidth_fraction")
        gib = f"{mem / GIB:.2f} GiB" if mem else "-"
        ratio, reference = versus.get(r["name"], (None, None))
        vs = "-" if ratio is None else f"{ratio:.2f}x {reference}"
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['tokens_per_s_total']:,.0f} | {vs} | {r['tokens_per_s_per_seq']:,.0f} "
            f"| {fmt(ttft and 1e3 * ttft, '.1f')} | {r['ms_per_step']:.3f} | {gib} "
            f"| {fmt(frac and 100 * frac, '.1f')}{'%' if frac else ''} | {fmt(r.get('compile_s'), '.0f')} |"
        )
    return "\n".join(lines)


def _pdl_max_batch(device: torch.device) -> int | None:
    """Up to how many rows compiled decoding's kernels launch with PDL here (None: no Triton kernels)."""
    try:
        from muomni.models.decode_launch import pdl_max_batch
    except ImportError:  # no Triton: compiled decoding runs Inductor's kernels only
        return None
    return pdl_max_batch(device)


def bench_infer(args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg, device = requested(args)  # a bad key or device is refused before the model is built
    model = _model(args.ckpt, cfg, device)
    device = model.lm_head.weight.device
    # 512 new tokens where the context has room for them after the prompt (tiny's 512 leaves 496).
    asked = args.steps if args.steps is not None else (512 if device.type == "cuda" else 32)
    new = min(asked, model.config.ctx_len - PROMPT_TOKENS)
    info = {**describe(device), "params": model.num_params(), "dtype": str(model.lm_head.weight.dtype)}
    info["decode_pdl_max_batch"] = _pdl_max_batch(device)
    out = bench_out_folder("infer", args.out)
    measured: Iterator[dict[str, Any]] = infer_rows(model, new, args.rows)
    if args.vs_hf:
        measured = itertools.chain(measured, hf_rows(model, new))
    rows: list[dict[str, Any]] = []
    for row in measured:
        row = {"framework": "muomni", **row}
        row.setdefault("tokens_per_s", row["tokens_per_s_total"])
        row.setdefault("peak_memory_bytes", None)  # Hugging Face's rows share the process with both models
        rows.append(row)
        write_results(out, "infer", info, rows, infer_table(rows), draw=False)
    versus = speed_versus(rows)
    for row in rows:
        if row["name"] in versus:
            ratio, reference = versus[row["name"]]
            row["speed_vs"] = {"row": reference, "ratio": ratio}
    table = infer_table(rows)
    print(table)
    write_results(out, "infer", info, rows, table)
    return rows
