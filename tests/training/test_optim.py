"""Learning-rate schedules at known steps, which parameters get weight decay, and the on-device step."""

from __future__ import annotations

import math

import pytest
import torch

from muomni.config import load_config
from muomni.models.thinker import Thinker
from muomni.training.features import total_grad_norm
from muomni.training.optim import (
    Schedule,
    build_optimizer,
    lr_at,
    make_schedule,
    param_groups,
    planned_steps,
    skips_on_device,
    step_unless,
)

TINY = {"vocab_size": 300, "n_layers": 2, "d_model": 32, "n_heads": 2, "kv_groups": 1, "d_ff": 64, "ctx_len": 16}


def test_warmup_is_linear_and_reaches_peak() -> None:
    s = Schedule("cosine", lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert lr_at(0, s) == pytest.approx(0.1)
    assert lr_at(4, s) == pytest.approx(0.5)
    assert lr_at(9, s) == pytest.approx(1.0)


def test_cosine_values() -> None:
    s = Schedule("cosine", lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    # The decay runs over the 100 steps from the warmup's last (index 9, the peak) to the run's last (109).
    assert lr_at(10, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.01)))  # the peak once
    assert lr_at(10, s) < lr_at(9, s)
    assert lr_at(59, s) == pytest.approx(0.55)  # half way: (1 + cos(pi/2)) / 2 = 0.5 of the range
    assert lr_at(34, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(108, s) > 0.1
    assert lr_at(109, s) == pytest.approx(0.1)  # the last step trains at min_lr, as the startup line says
    assert lr_at(500, s) == pytest.approx(0.1)


def test_linear_and_constant_values() -> None:
    lin = Schedule("linear", lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=101)
    assert [lr_at(k, lin) for k in (0, 25, 50, 100, 200)] == pytest.approx([1.0, 0.75, 0.5, 0.0, 0.0])
    const = Schedule("constant", lr=0.5, min_lr=0.0, warmup_steps=4, total_steps=100)
    assert [lr_at(k, const) for k in (0, 3, 4, 99, 1000)] == pytest.approx([0.125, 0.5, 0.5, 0.5, 0.5])


def test_a_run_of_one_step_trains_at_the_peak_and_two_end_at_min_lr() -> None:
    one = Schedule("cosine", lr=1.0, min_lr=0.1, warmup_steps=0, total_steps=1)
    two = Schedule("linear", lr=1.0, min_lr=0.1, warmup_steps=0, total_steps=2)
    assert lr_at(0, one) == pytest.approx(1.0)
    assert [lr_at(0, two), lr_at(1, two)] == pytest.approx([1.0, 0.1])


def test_planned_steps_takes_the_smaller_limit() -> None:
    cfg = load_config({"max_steps": 1000, "max_epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2})
    assert planned_steps(cfg, n_train_windows=100) == 25  # 2 epochs x 100 windows / 8 windows per step
    assert planned_steps(cfg.replace(max_epochs=None), n_train_windows=100) == 1000


def test_a_warmup_as_long_as_the_run_warns_with_the_peak_it_reaches(recwarn: pytest.WarningsRecorder) -> None:
    cfg = load_config({"max_steps": 6, "warmup_steps": 100, "lr": 3e-3})
    with pytest.warns(
        UserWarning, match=r"warmup_steps 100 is not below the run's 6 steps: .* \(to 0.00018; lr is 0.003\)"
    ):
        s = make_schedule(cfg, 6)
    assert lr_at(5, s) == pytest.approx(1.8e-4)  # the peak the warning names
    make_schedule(cfg.replace(warmup_steps=5), 6)  # shorter than the run: no warning
    assert not [w for w in recwarn if "warmup_steps" in str(w.message)]


@pytest.mark.parametrize("tie", [False, True])
def test_decay_only_on_matrices(tie: bool) -> None:
    model = Thinker(load_config({**TINY, "tie_embeddings": tie}))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.embed_tokens.weight" in no_decay["names"]
    assert all("layernorm" in n or n in ("model.norm.weight", "model.embed_tokens.weight") for n in no_decay["names"])
    assert "model.layers.0.self_attn.q_proj.weight" in decay["names"]
    assert "model.layers.1.mlp.down_proj.weight" in decay["names"]
    # A tied lm_head is the embedding: it appears once, undecayed; an untied one is an ordinary matrix.
    assert ("lm_head.weight" in decay["names"]) is (not tie)
    n_params = len(list(model.parameters()))
    assert len(decay["params"]) + len(no_decay["params"]) == n_params


def test_optimizers() -> None:
    model = Thinker(load_config(TINY))
    adamw = build_optimizer(model, load_config(TINY), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
    sgd = build_optimizer(model, load_config({**TINY, "optimizer": "sgd", "momentum": 0.8}), torch.device("cpu"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8


def _fused_adamw_on(params: list[torch.Tensor]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=0.1, weight_decay=0.1, fused=True)  # fused AdamW runs on CPUs too


def test_step_unless_steps_as_a_plain_step_and_skips_without_a_trace() -> None:
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    plain_p, guarded_p = start.clone().requires_grad_(), start.clone().requires_grad_()
    plain, guarded = _fused_adamw_on([plain_p]), _fused_adamw_on([guarded_p])
    assert skips_on_device(guarded) and not skips_on_device(torch.optim.AdamW([start.clone().requires_grad_()]))
    for step in range(3):
        grad = torch.randn(5, 3)
        plain_p.grad, guarded_p.grad = grad.clone(), grad.clone()
        plain.step()
        step_unless(guarded, torch.tensor(False))
        assert torch.equal(plain_p, guarded_p), step
    before = guarded_p.detach().clone()
    state = {k: v.clone() for k, v in guarded.state[guarded_p].items()}
    guarded_p.grad = torch.full((5, 3), math.nan)
    step_unless(guarded, torch.tensor(True))
    assert torch.equal(guarded_p, before)  # not NaN, and no weight decay either
    assert all(torch.equal(guarded.state[guarded_p][k], v) for k, v in state.items())  # the step count too
    assert not hasattr(guarded, "found_inf")  # the flag does not stay behind for GradScaler to find


@pytest.mark.parametrize("max_norm", [0.5, 100.0])  # clipped, and a bound above the norm (no clipping)
def test_step_unless_clips_inside_the_update_as_clip_grad_norm_does(max_norm: float) -> None:
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 7)]
    starts = [torch.randn(s) for s in shapes]
    plain_ps = [t.clone().requires_grad_() for t in starts]
    fused_ps = [t.clone().requires_grad_() for t in starts]
    plain, fused = _fused_adamw_on(plain_ps), _fused_adamw_on(fused_ps)
    for step in range(3):
        grads = [torch.randn(s) * (step + 1) for s in shapes]
        for p, g in zip(plain_ps, grads, strict=True):
            p.grad = g.clone()
        for p, g in zip(fused_ps, grads, strict=True):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(plain_ps, max_norm)  # the reference: clip, then step
        plain.step()
        step_unless(fused, torch.tensor(False), (total_grad_norm(fused_ps), max_norm))
        for a, b in zip(plain_ps, fused_ps, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f"step {step}")
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-6, atol=1e-7)  # left clipped
        assert (norm.item() > max_norm) is (max_norm == 0.5)  # the first case did clip
    assert not hasattr(fused, "grad_scale")  # GradScaler must not find a stale divisor
