"""``muomni bench train``: the founding document's optimization table, measured on this machine.

Each row is a set of config keys applied to the same model (same initial weights, same data order) and
runs in its own process, so its peak memory is its own. Rows build on each other as the document's table
does (baseline, then mixed precision, then flash attention, ...), and ``+all`` is every speed setting
muomni has. With ``--vs-hf`` the equivalent Hugging Face ``LlamaForCausalLM`` rows run in the same session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from muomni.bench.hardware import describe
from muomni.bench.options import bench_out_folder, warn_set_here
from muomni.bench.report import train_table, write_results
from muomni.bench.selection import wanted_rows
from muomni.config import Config, load_config
from muomni.errors import ConfigError
from muomni.training.sources import resolve_device

ROW_TIMEOUT_S = 1200


@dataclass
class Row:
    """A benchmark row: its name, the config keys it sets, and the Hugging Face row it compares with."""

    name: str
    keys: dict[str, Any]
    hf: dict[str, Any] | None = None
    hf_name: str | None = None
    # Run under a memory budget of this fraction of the named row's measured peak (the auto_fit row).
    budget_of: tuple[str, float] | None = None


def rows_for(device: torch.device) -> list[Row]:
    """The rows that apply on ``device``: fp16 + GradScaler on CUDA, bf16 on CPUs (no fp16 autocast there)."""
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    half = "fp16" if cuda else "bf16"
    off = {"use_amp": False, "use_flash": False, "use_compile": False, "use_gradient_checkpointing": False}
    off["chunked_ce"] = False
    amp = {**off, "use_amp": True, "amp_dtype": half}
    flash = {**amp, "use_flash": True}
    best_dtype = "bf16" if bf16 or not cuda else "fp16"
    lowp = {**flash, "amp_dtype": best_dtype}
    chunked = {**lowp, "chunked_ce": True}
    rows = [
        Row("baseline", off, {"amp": None, "attn": "eager"}, "fp32 eager"),
        Row("+fp16" if cuda else "+bf16 autocast", amp, {"amp": half, "attn": "eager"}, f"{half} eager"),
        Row("+flash", flash, {"amp": half, "attn": "sdpa"}, f"{half} sdpa"),
        Row(
            "+grad_ckpt",
            {**flash, "use_gradient_checkpointing": True},
            {"amp": half, "attn": "sdpa", "ckpt": True},
            f"{half} sdpa + ckpt",
        ),
    ]
    if bf16:
        rows.append(Row("+bf16", lowp, {"amp": "bf16", "attn": "sdpa"}, "bf16 sdpa"))
    rows += [
        Row("+chunked_ce", chunked),
        Row("+offload_activations", {**chunked, "cpu_offload": "activations"}),
        Row("+offload_optimizer", {**chunked, "cpu_offload": "optimizer"}),
    ]
    if cuda:
        # A full-logits row again, in half its memory: auto_fit must find a split that fits, and learn the same.
        full_logits = "+bf16" if bf16 else "+flash"  # the row with the same keys, which needs the most memory
        rows.append(Row("+auto_fit", {**lowp, "auto_fit": True}, budget_of=(full_logits, 0.5)))
    # On GPUs the compiled step is replayed as CUDA graphs, which removes the launch cost of its hundreds of
    # kernels. On CPUs the written-out attention compiles to faster code than SDPA's kernel (2 cores, the
    # default model, torch 2.13: 14.7k tokens/s compiled bf16 with it, 11.9k with SDPA, 8.5k in fp32).
    # With bf16, the residual stream and the linear layers' weights in bf16 too (master weights fp32; measured
    # on an H200 only, so not on CPUs).
    fastest = {"compile_mode": "reduce-overhead"} if cuda else {"use_flash": False}
    if bf16:
        fastest.update(residual_dtype="bf16", weight_dtype="bf16")
    rows += [
        Row(
            "+all",
            {**chunked, "use_compile": True, **fastest},
            {"amp": best_dtype, "attn": "sdpa", "compile": True},
            f"{best_dtype} sdpa + compile",
        ),
    ]
    return rows


def _hf_keys(hf: dict[str, Any]) -> dict[str, Any]:
    """The config keys a Hugging Face row sets itself: its precision and compilation, and muomni's own
    savers off (its checkpointing is HF's, ``hf_checkpointing``)."""
    return {
        "use_amp": hf["amp"] is not None,
        "amp_dtype": hf["amp"] or "auto",
        "use_compile": bool(hf.get("compile")),
        "chunked_ce": False,
        "use_gradient_checkpointing": False,
        "weight_dtype": "fp32",  # bf16 weight copies are muomni's layers', not Hugging Face's
    }


def _spec(cfg: Config, row: Row, framework: str, warmup: int, steps: int) -> dict[str, Any]:
    keys = dict(row.keys)
    spec: dict[str, Any] = {"framework": framework, "warmup": warmup, "steps": steps}
    if framework == "hf":
        hf = row.hf or {}
        keys = {**keys, **_hf_keys(hf)}
        spec.update(hf_attn=hf["attn"], hf_checkpointing=bool(hf.get("ckpt")))
    spec["config"] = {**cfg.to_dict(), **keys}
    return spec


def run_spec(spec: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Run one row's worker process and return its result (an ``error`` entry if it failed)."""
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "muomni.bench.train_worker", str(spec_path), str(result_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ROW_TIMEOUT_S, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {ROW_TIMEOUT_S} s"}
    if not result_path.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(result_path.read_text())


def select_rows(rows: list[Row], names: str | None) -> list[Row]:
    wanted = wanted_rows(names, [r.name for r in rows])
    needed = {"baseline"} | {r.budget_of[0] for r in rows if r.name in wanted and r.budget_of}
    return [r for r in rows if r.name in wanted or r.name in needed]


def _warm_data_cache(cfg: Config) -> None:
    """Train the tokenizer and tokenize once here, so no row's time or peak memory includes it."""
    from muomni.data import TokenData, prepare_tokenizer

    tokenizer = prepare_tokenizer(cfg.train_text, cfg.vocab_size)
    TokenData.build(cfg.train_text, tokenizer, cfg.ctx_len, cfg.val_split, cfg.seed)


def _budget(results: list[dict[str, Any]], name: str, fraction: float) -> float | None:
    """``fraction`` of the peak memory the muomni row ``name`` measured, in GiB (None if it has none)."""
    peaks = [r.get("peak_memory_bytes") for r in results if r["name"] == name and r["framework"] == "muomni"]
    return fraction * peaks[0] / 2**30 if peaks and peaks[0] else None


def set_here(warmup: int, steps: int, selected: list[Row], vs_hf: bool = False) -> dict[str, str]:
    """The config keys bench train sets itself or does not use, each with what it does instead (see
    :func:`warn_set_here`): the run's length, schedule and folders, and the keys the selected rows set
    (with ``vs_hf``, Hugging Face's rows too)."""
    total = warmup + steps
    found = {
        "max_steps": f"is set by --steps here: a row runs {total} steps, {warmup} to warm up and {steps} timed",
        "warmup_steps": f"is set here to {max(1, total // 10)}, so that a row's few steps move the loss",
        "val_freq": "is not used here: each row validates once, after its steps",
        "checkpoint_freq": "is not used here: the rows write no checkpoints",
        "keep_checkpoints": "is not used here: the rows write no checkpoints",
        "save_dir": "is not used here: each row runs in a temporary folder, and the results go to --out",
        "resume": "is not used here: every row starts from the same fresh weights",
    }
    for key in sorted({key for row in selected for key in row.keys}):
        setting = [row.name for row in selected if key in row.keys]
        if len(setting) == len(selected):
            found[key] = f"is set here by every row ({', '.join(setting)}); your value is not used"
        else:
            found[key] = f"is set here by {', '.join(setting)}; the other rows run with yours"
    hf_rows = [row for row in selected if vs_hf and row.hf]
    for key in sorted({key for row in hf_rows for key in _hf_keys(row.hf)}):
        said = found.get(key, "is used by muomni's rows")
        found[key] = f"{said}; Hugging Face's rows set it themselves (their precision and compile are the row's)"
    return found


def bench_train(
    config: str, overrides: list[str], steps: int | None, out: str | None, vs_hf: bool, rows: str | None
) -> list[dict[str, Any]]:
    """Run the table and write results.json, results.md and chart.png to ``out``; return the rows."""
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.device)  # device=cuda without a GPU is refused, as train refuses it
    steps = steps if steps is not None else (20 if device.type == "cuda" else 3)
    warmup = 3 if device.type == "cuda" else 1
    # A short warmup, so that the few steps move the loss and the quality column compares learning, not init.
    total = warmup + steps
    cfg = cfg.replace(max_steps=total, warmup_steps=max(1, total // 10), val_freq=10**6, checkpoint_freq=10**6)
    if vs_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError("--vs-hf needs transformers: pip install 'muomni[hf]'")
    selected = select_rows(rows_for(device), rows)  # an unknown row fails now, not after the tokenizing
    warn_set_here(overrides, set_here(warmup, steps, selected, vs_hf))
    _warm_data_cache(cfg)
    results: list[dict[str, Any]] = []
    info, out_dir = describe(device), bench_out_folder("train", out)
    with tempfile.TemporaryDirectory() as tmp:
        for row in selected:
            frameworks = ["muomni"] + (["hf"] if vs_hf and row.hf else [])
            for fw in frameworks:
                label = row.name if fw == "muomni" else row.hf_name
                print(f"bench train: {fw} {label} ...", file=sys.stderr, flush=True)
                spec = _spec(cfg, row, fw, warmup, steps)
                if row.budget_of:
                    spec["memory_budget_gib"] = _budget(results, *row.budget_of)
                result = run_spec(spec, Path(tmp), f"{fw}-{len(results)}")
                results.append(
                    {
                        "name": label,
                        "framework": fw,
                        "hf_row": row.hf_name,
                        **result,
                        "config": spec["config"],
                        "memory_budget_gib": spec.get("memory_budget_gib"),
                    }
                )
                write_results(out_dir, "train", info, results, train_table(results), draw=False)
    table = train_table(results)
    print(table)
    write_results(out_dir, "train", info, results, table)
    return results
