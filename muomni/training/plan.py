"""``muomni plan``: measure candidate settings on this device and write the fastest that fits a memory budget.

Every candidate keeps the effective batch (``batch_size x gradient_accumulation_steps``), so the plan
changes how a step is computed, never what is learned. Candidates are measured, not estimated: each runs
a few training steps in its own process (on CUDA with the budget enforced through
``torch.cuda.set_per_process_memory_fraction``, so a candidate that would not fit fails as it would in the
real run). On a CPU the budget is the peak resident memory of the candidate's process.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from muomni.bench.options import check_out_file
from muomni.bench.report import GIB
from muomni.bench.train import _warm_data_cache, run_spec
from muomni.config import KEYS, Config, load_config
from muomni.errors import ConfigError, UserError

PLAN_STEPS = 3


class NothingFits(UserError):
    """No candidate setting trains within the memory budget."""


def micro_batches(cfg: Config) -> list[int]:
    """Micro-batch sizes that divide the effective batch, largest first: 32, 16, 8, ... 1."""
    total = cfg.effective_batch_size
    return [m for m in range(total, 0, -1) if total % m == 0 and (m & (m - 1) == 0 or m == total)]


def candidate(cfg: Config, micro: int, **keys: Any) -> dict[str, Any]:
    """A candidate's keys: every setting its row of the table shows is given, so that none is the config's
    own (a config with ``cpu_offload`` or ``use_compile`` on ran every candidate with it, labelled off)."""
    split = {"batch_size": micro, "gradient_accumulation_steps": cfg.effective_batch_size // micro}
    return {**split, "cpu_offload": "none", "use_compile": False, **keys}


def measure(cfg: Config, keys: dict[str, Any], budget_gib: float, workdir: Path, n: int) -> dict[str, Any]:
    spec = {
        "framework": "muomni",
        "warmup": 1,
        "steps": PLAN_STEPS,
        "memory_budget_gib": budget_gib,
        # auto_fit off: a candidate that does not fit must fail, not quietly run as another candidate.
        # warmup 1: the schedule does not matter to a measurement, and the preset's would outlast it and warn.
        "config": {**cfg.to_dict(), **keys, "max_steps": PLAN_STEPS + 1, "warmup_steps": 1, "auto_fit": False},
    }
    result = run_spec(spec, workdir, f"plan-{n}")
    peak = result.get("peak_memory_bytes")
    fits = not result.get("error") and peak is not None and peak <= budget_gib * GIB
    row = {"keys": keys, "fits": fits, **result}
    print(progress_line(n, row), flush=True)
    return row


# Memory savers from the fastest to the most frugal.
SAVERS: list[dict[str, Any]] = [
    {"use_gradient_checkpointing": False},
    {"use_gradient_checkpointing": True, "gradient_checkpointing_every": 2},  # half the blocks
    {"use_gradient_checkpointing": True, "gradient_checkpointing_every": 1},
    {"use_gradient_checkpointing": True, "gradient_checkpointing_every": 1, "cpu_offload": "activations"},
]
COMPILE_MODES = ("default", "reduce-overhead")  # plain compile, then with CUDA graphs


def search(cfg: Config, budget_gib: float, workdir: Path) -> list[dict[str, Any]]:
    """Try, for each memory saver in turn, micro-batches from the largest down until one fits; on a GPU,
    then compile (:func:`compiled_candidates`)."""
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    # The most frugal setting first: if even it does not fit, nothing will, and the search ends at once.
    frugal = measure(cfg, candidate(cfg, 1, chunked_ce=True, **SAVERS[-1]), budget_gib, workdir, 0)
    if not frugal["fits"]:
        return [frugal]
    tried: list[dict[str, Any]] = [frugal]
    for saver in SAVERS:
        for micro in micro_batches(cfg):
            row = measure(cfg, candidate(cfg, micro, chunked_ce=True, **saver), budget_gib, workdir, len(tried))
            tried.append(row)
            if row["fits"]:
                break
        if any(r["fits"] for r in tried) and not cuda:
            break  # on a CPU the first fit is enough: checkpointing only costs time there
    fitting = [r for r in tried if r["fits"]]
    if fitting and cuda:
        best = max(fitting, key=lambda r: r["tokens_per_s"])
        for keys in compiled_candidates(cfg, best["keys"]):
            rows = [
                measure(cfg, {**keys, "use_compile": True, "compile_mode": m}, budget_gib, workdir, len(tried) + i)
                for i, m in enumerate(COMPILE_MODES)
            ]
            tried += rows
            if any(r["fits"] for r in rows):
                break
    return tried


def compiled_candidates(cfg: Config, best: dict[str, Any]) -> list[dict[str, Any]]:
    """What to compile, in order, given the fastest eager candidate that fits: the savers lighter than its
    one at the largest micro-batch, then its own keys. A compiled step keeps fewer activations than an eager
    one (the small preset without checkpointing: 7.03 GiB compiled, 9.71 eager), so a lighter saver that did
    not fit eagerly may fit compiled, and run faster than the best eager candidate compiled."""
    level = next(i for i, s in enumerate(SAVERS) if candidate(cfg, best["batch_size"], chunked_ce=True, **s) == best)
    largest = micro_batches(cfg)[0]
    lighter = [candidate(cfg, largest, chunked_ce=True, **s) for s in SAVERS[:level]]
    return [*lighter, best]


COLUMNS = ("micro-batch x accumulation", "checkpointing", "offload", "compile", "tokens/s", "peak memory", "fits")


def plan_table(tried: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in tried]
    return "\n".join(lines)


def progress_line(n: int, row: dict[str, Any]) -> str:
    """One measured candidate, printed as it lands: a search takes minutes and its table comes at the end."""
    return f"muomni: plan: candidate {n + 1}: " + ", ".join(
        f"{c} {v}" for c, v in zip(COLUMNS, _cells(row), strict=True)
    )


def _cells(r: dict[str, Any]) -> list[str]:
    k, peak = r["keys"], r.get("peak_memory_bytes")
    return [
        f"{k['batch_size']} x {k['gradient_accumulation_steps']}",
        _checkpointing(k),
        k.get("cpu_offload", "none"),
        str(k.get("compile_mode", "default") if k.get("use_compile") else False),
        f"{r.get('tokens_per_s', 0):,.0f}",
        "-" if peak is None else f"{peak / GIB:.2f} GiB",
        "yes" if r["fits"] else r.get("error") or "no",
    ]


def _checkpointing(keys: dict[str, Any]) -> str:
    if not keys.get("use_gradient_checkpointing"):
        return "none"
    every = keys.get("gradient_checkpointing_every", 1)
    return "every block" if every == 1 else f"every {every} blocks"


def plan(cfg: Config, budget_gib: float, out: Path) -> dict[str, Any]:
    """Measure, print the table, write the fastest fitting config to ``out`` and return it."""
    _warm_data_cache(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tried = search(cfg, budget_gib, Path(tmp))
    print(plan_table(tried))
    fitting = [r for r in tried if r["fits"]]
    if not fitting:
        raise NothingFits(nothing_fits(tried, budget_gib))
    best = max(fitting, key=lambda r: r["tokens_per_s"])
    planned = {**cfg.to_dict(), **best["keys"]}
    out.parent.mkdir(parents=True, exist_ok=True)  # as the other commands make their --out folders
    out.write_text(json.dumps(planned, indent=2) + "\n", encoding="utf-8")
    print(f"planned: {best['keys']} at {best['tokens_per_s']:,.0f} tokens/s -> {out}")
    return planned


def nothing_fits(tried: list[dict[str, Any]], budget_gib: float) -> str:
    """Why nothing fits, and what would help. On a CPU the budget is a process's whole resident memory, of
    which torch itself takes about 0.4 GiB before any model: below that, a smaller model cannot help."""
    needs = [r["peak_memory_bytes"] for r in tried if r.get("peak_memory_bytes")]
    floors = [r["process_floor_bytes"] for r in tried if r.get("process_floor_bytes")]
    head = f"nothing fits in {budget_gib:g} GiB"
    if floors and min(floors) >= budget_gib * GIB:
        return (
            f"{head}: a process on this CPU takes {min(floors) / GIB:.2f} GiB with torch loaded, before any model; "
            "give --memory above that"
        )
    if not needs:
        return f"{head}: every candidate failed"
    return f"{head}: the smallest candidate needed {min(needs) / GIB:.2f} GiB; lower ctx_len or the model size"


def check_budget(memory: float) -> None:
    """``--memory`` is a finite positive number of GiB. NaN passes a ``<= 0`` check (every comparison with
    it is false) and failed only after the measurement; infinity is no budget at all."""
    if not (math.isfinite(memory) and memory > 0):
        raise ConfigError(f"--memory {memory} must be a positive number of GiB")


def check_replaceable(out: Path) -> None:
    """An existing ``--out`` file is written over only when it is a plan: the user's corpus, notes or
    hand-written config (the one being planned, say) once went without a word."""
    if out.is_file() and not _is_plan(out):
        raise ConfigError(f"--out {out} exists and is not a plan muomni wrote; give a new file name or remove it")


def _is_plan(path: Path) -> bool:
    """Whether ``path`` reads as a plan: a JSON object that holds every config key and loads as a config.

    A plan carries no marker: users pass it back as ``--config``, and the loader refuses unknown keys. So the
    rule is the form :func:`plan` writes, the whole resolved config, where a hand-written config names a few
    keys. What it cannot tell from a plan is another whole config muomni wrote (a run's ``config.json``).
    """
    if path.stat().st_size > 1 << 20:  # a plan is a few KB; a corpus is not read whole to find that out
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # not text, not JSON, or nested past the parser's depth
        return False
    if not isinstance(data, dict) or set(data) != set(KEYS):
        return False
    try:
        load_config(data, warn_ignored=False)
    except ConfigError:
        return False
    return True


def run_plan(args: argparse.Namespace) -> int:
    # The options first: the search measures for a minute or more before it writes --out.
    check_budget(args.memory)
    out = Path(args.out)
    check_out_file(out)
    check_replaceable(out)
    cfg = load_config(args.config, args.overrides)
    plan(cfg, args.memory, out)
    return 0
