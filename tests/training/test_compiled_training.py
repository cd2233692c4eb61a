"""Compiled training: the whole loss is one graph, and compiled steps learn what eager steps learn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from training_helpers import tiny_config

from muomni.training.trainer import Trainer


def weights_after_steps(corpus: Path, save_dir: Path, steps: int, **changes: Any) -> dict[str, torch.Tensor]:
    return trained_weights(Trainer(tiny_config(corpus, save_dir, dropout=0.0, **changes)), steps)


def trained_weights(t: Trainer, steps: int) -> dict[str, torch.Tensor]:
    for _ in range(steps):
        assert t.train_step(t.next_batches())[3]
        t.progress.applied_steps += 1
    return {k: v.detach().float().cpu().clone() for k, v in t.model.state_dict().items()}


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    moved = 0
    for name, x in a.items():
        rel = ((b[name] - x).norm() / x.norm()).item()
        assert rel < tol, f"{name}: relative error {rel:.2e}"
        moved += int(not torch.equal(x, b[name]))
    assert moved  # compiled and eager were not both left untouched


def test_chunked_loss_compiles_to_one_graph(corpus: Path, tmp_path: Path) -> None:
    # A graph break would put Python between the chunks again (and a CUDA graph per piece).
    t = Trainer(tiny_config(corpus, tmp_path / "run", chunked_ce=True))
    tokens = t.next_batches()[0]
    explained = torch._dynamo.explain(t.loss_module.eager_loss)(tokens)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_chunked_steps_match_eager(corpus: Path, tmp_path: Path) -> None:
    common = {"chunked_ce": True, "gradient_accumulation_steps": 2}
    eager = weights_after_steps(corpus, tmp_path / "a", 3, **common)
    compiled = weights_after_steps(corpus, tmp_path / "b", 3, use_compile=True, **common)
    assert_close_weights(eager, compiled, 1e-4)


@pytest.mark.parametrize("every", [1, 2], ids=["every_block", "every_2nd_block"])
def test_compiled_checkpointed_steps_match_eager(corpus: Path, tmp_path: Path, every: int) -> None:
    # Eager runs take the reentrant kind (less host work), compiled runs the kind torch.compile traces; with
    # every 2nd block, the graph holds checkpointed and plain blocks.
    weights, kinds = {}, {}
    ckpt = {"use_gradient_checkpointing": True, "gradient_checkpointing_every": every}
    for name, compiled in (("eager", False), ("compiled", True)):
        t = Trainer(tiny_config(corpus, tmp_path / name, dropout=0.0, use_compile=compiled, **ckpt))
        assert t.compiled == compiled
        wrapped = [block.forward for block in t.model.model.layers if "forward" in vars(block)]
        assert len(wrapped) == len(range(0, t.cfg.n_layers, every))
        kinds[name] = {forward.args[1] for forward in wrapped}  # partial(fn, block, reentrant)
        weights[name] = trained_weights(t, 2)
    assert kinds == {"eager": {True}, "compiled": {False}}
    assert_close_weights(weights["eager"], weights["compiled"], 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("chunked", [True, False])
def test_cuda_graph_steps_with_accumulation_match_eager(corpus: Path, tmp_path: Path, chunked: bool) -> None:
    # Accumulation is where CUDA graphs bite: the first micro-batch's gradients live in the graphs' memory,
    # which the second micro-batch's replay reuses.
    common = {"device": "cuda", "use_amp": False, "chunked_ce": chunked, "gradient_accumulation_steps": 2}
    eager = weights_after_steps(corpus, tmp_path / "a", 4, **common)
    graphs = weights_after_steps(corpus, tmp_path / "b", 4, use_compile=True, compile_mode="reduce-overhead", **common)
    assert_close_weights(eager, graphs, 1e-4)


def test_a_miscompiled_loss_falls_back_to_chunks_outside_the_graph_then_eager(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for a compiler bug: the "compiled" loss doubles the loss (and so the gradients).
    broken = {"in_graph": True, "outside": False}

    def fake_compile(fn, **options):  # noqa: ANN001, ANN003, ANN202, ARG001
        module = getattr(fn, "__self__", None)  # the loss module's eager_loss; the chunk function stays as it is
        if module is None or not broken["in_graph" if module.chunks_in_graph else "outside"]:
            return fn
        return lambda tokens: (lambda loss, n: (2 * loss, n))(*fn(tokens))

    monkeypatch.setattr(torch, "compile", fake_compile)
    with pytest.warns(UserWarning, match="compiled loss is not used .*loss on a probe batch"):
        t = Trainer(tiny_config(corpus, tmp_path / "a", dropout=0.0, chunked_ce=True, use_compile=True))
    assert t.compiled and not t.loss_module.chunks_in_graph
    assert all(p.grad is None for p in t.model.parameters())  # the probes left nothing behind

    broken["outside"] = True
    with pytest.warns(UserWarning) as warned:
        t = Trainer(tiny_config(corpus, tmp_path / "b", dropout=0.0, chunked_ce=True, use_compile=True))
    messages = [str(w.message) for w in warned]
    assert any("compiled loss is not used" in m for m in messages), messages
    assert any("compiled backbone is not used" in m and "with no compile" in m for m in messages), messages
    assert not t.compiled and not t.loss_module.compiled


def test_checkpointed_blocks_take_the_eager_kind_when_compiling_falls_back(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_compile(fn, **options):  # noqa: ANN001, ANN003, ANN202, ARG001
        def fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("no compiler here (injected)")

        return fails

    monkeypatch.setattr(torch, "compile", failing_compile)
    cfg = tiny_config(corpus, tmp_path / "a", dropout=0.0, use_compile=True, use_gradient_checkpointing=True)
    with pytest.warns(UserWarning, match="is not used"):
        t = Trainer(cfg)
    assert not t.compiled
    # A checkpointed block's forward is partial(_checkpointed_forward, block, reentrant): eager runs reenter.
    assert [block.forward.args[1] for block in t.model.model.layers] == [True] * cfg.n_layers
