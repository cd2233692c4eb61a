"""``muomni plan``'s search on a GPU, with the measurement replaced by a model of memory and speed: which
candidates it compiles, and which it picks (the CPU's search runs for real in tests/bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from muomni.config import load_config
from muomni.training import plan

EAGER = {  # saver -> (peak GiB, tokens/s) at the largest micro-batch, eager; compiled: 0.7x memory, 2.5x speed
    ("none", 1): (9.7, 300.0),
    ("ckpt", 2): (6.3, 220.0),
    ("ckpt", 1): (2.9, 200.0),
}


def fake_measure(cfg: Any, keys: dict[str, Any], budget_gib: float, workdir: Path, n: int) -> dict[str, Any]:
    saver = ("ckpt", keys.get("gradient_checkpointing_every", 1)) if keys["use_gradient_checkpointing"] else ("none", 1)
    peak, speed = EAGER.get(saver, (2.7, 150.0))  # the activations offloaded
    share = keys["batch_size"] / cfg.effective_batch_size  # memory and speed fall with the micro-batch
    peak, speed = peak * (0.5 + 0.5 * share), speed * (0.6 + 0.4 * share)
    if keys.get("use_compile"):
        peak, speed = peak * 0.7, speed * 2.5
    return {"keys": keys, "fits": peak <= budget_gib, "peak_memory_bytes": peak * 2**30, "tokens_per_s": speed}


@pytest.fixture
def on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    measured: list[dict[str, Any]] = []

    def measure(*args: Any) -> dict[str, Any]:
        row = fake_measure(*args)
        measured.append(row)
        return row

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan, "measure", measure)
    return measured


def _compiled(rows: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """(micro-batch, checkpointed every N blocks or 0, compile mode) of each compiled candidate, in order."""
    return [
        (
            k["batch_size"],
            k.get("gradient_checkpointing_every", 1) if k["use_gradient_checkpointing"] else 0,
            k["compile_mode"],
        )
        for k in (r["keys"] for r in rows)
        if k.get("use_compile")
    ]


CFG = {"batch_size": 16, "gradient_accumulation_steps": 1, "device": "auto"}


def test_a_lighter_saver_that_fits_only_compiled_is_found(on_a_gpu: list[dict[str, Any]]) -> None:
    # 6 GiB: eagerly, 16 windows fit only with every block checkpointed (2.9 GiB); every 2nd block needs 6.3.
    # Compiled, every 2nd block needs 4.4 GiB and runs faster; no checkpointing compiled (6.8) still does not fit.
    tried = plan.search(load_config("debug", CFG), 6.0, Path("unused"))
    assert _compiled(tried) == [
        (16, 0, "default"),
        (16, 0, "reduce-overhead"),
        (16, 2, "default"),
        (16, 2, "reduce-overhead"),
    ]
    best = max((r for r in tried if r["fits"]), key=lambda r: r["tokens_per_s"])
    assert best["keys"]["use_compile"] and best["keys"]["gradient_checkpointing_every"] == 2


def test_when_the_fastest_saver_fits_eagerly_only_it_is_compiled(on_a_gpu: list[dict[str, Any]]) -> None:
    tried = plan.search(load_config("debug", CFG), 12.0, Path("unused"))
    assert _compiled(tried) == [(16, 0, "default"), (16, 0, "reduce-overhead")]


def test_the_best_eager_candidate_is_compiled_when_nothing_lighter_fits(on_a_gpu: list[dict[str, Any]]) -> None:
    # 3 GiB: every block checkpointed, 16 windows (2.9 GiB eager); compiled, every 2nd block needs 4.4.
    tried = plan.search(load_config("debug", CFG), 3.0, Path("unused"))
    assert _compiled(tried)[-2:] == [(16, 1, "default"), (16, 1, "reduce-overhead")]
    assert [c[1] for c in _compiled(tried)] == [0, 0, 2, 2, 1, 1]


def test_every_candidate_gives_what_its_row_shows(on_a_gpu: list[dict[str, Any]]) -> None:
    """The config's own offload and compile settings do not leak into candidates labelled without them."""
    settings = {**CFG, "cpu_offload": "activations", "use_compile": True}
    tried = plan.search(load_config("debug", settings), 6.0, Path("unused"))
    for row in tried:
        keys = row["keys"]
        measured = {**load_config("debug", settings).to_dict(), **keys}  # as plan.measure runs it
        cells = plan._cells(row)
        assert cells[2] == measured["cpu_offload"]
        assert (cells[3] != "False") == measured["use_compile"]
    assert {row["keys"]["cpu_offload"] for row in tried} == {"none", "activations"}
