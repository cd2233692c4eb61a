"""The training step and loop, in process: accumulation, clipping, fp16 overflow, non-finite stop, determinism."""

from __future__ import annotations

import copy
import json
import math
import signal
import statistics
from pathlib import Path

import pytest
import torch
from training_helpers import (
    final_weights,
    fused_adamw,
    overrides,
    read_metrics,
    step_losses,
    tiny_config,
    tiny_settings,
)

from muomni.cli import main
from muomni.training import loss as loss_module
from muomni.training import trainer as trainer_module
from muomni.training.checkpoint import MODEL_FILE, STATE_FILE, checkpoints_dir, load_tensors
from muomni.training.in_flight import InFlight, LaunchedStep, copy_to_host
from muomni.training.loss import lm_loss
from muomni.training.precision import Precision
from muomni.training.startup import describe_run
from muomni.training.trainer import Trainer, total_grad_norm


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_accumulation_matches_one_big_batch(corpus: Path, tmp_path: Path, optimizer: str) -> None:
    # SGD without clipping is linear in the gradient, so a wrong loss normalisation cannot hide.
    clip = 0.0 if optimizer == "sgd" else 1.0
    common = {"dropout": 0.0, "optimizer": optimizer, "max_grad_norm": clip, "lr": 0.05 if optimizer == "sgd" else 3e-3}
    runs = []
    for batch, accum in ((8, 1), (2, 4)):
        cfg = tiny_config(corpus, tmp_path / "run", batch_size=batch, gradient_accumulation_steps=accum, **common)
        t = Trainer(cfg)
        losses = [t.train_step(t.next_batches())[0] for _ in range(3)]
        runs.append((losses, {k: v.detach().clone() for k, v in t.model.state_dict().items()}))
    (losses_a, weights_a), (losses_b, weights_b) = runs
    assert losses_a == pytest.approx(losses_b, rel=1e-5)
    for name, a in weights_a.items():
        # Relative error of each tensor as a whole: summation order differs, and Adam divides by sqrt(v),
        # so an element whose gradient is ~0 can differ by more than 1e-5 of itself.
        rel = ((weights_b[name] - a).norm() / a.norm()).item()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"
    start = Trainer(tiny_config(corpus, tmp_path / "run", **common)).model.state_dict()
    assert any(not torch.equal(start[k], weights_a[k]) for k in start)  # the steps did change the weights


@pytest.mark.parametrize("max_norm", [0.05, 0.0])
def test_fused_update_clips_as_the_eager_clip_does(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_norm: float
) -> None:
    # The GPU path (fused AdamW, clipped in its kernel, skipped on the device) against the CPU's
    # (clip_grad_norm_, then the foreach AdamW): fused AdamW runs on CPUs too.
    runs = []
    for fused in (False, True):
        if fused:
            monkeypatch.setattr(trainer_module, "build_optimizer", fused_adamw)
        t = Trainer(tiny_config(corpus, tmp_path / f"run{fused}", dropout=0.0, max_grad_norm=max_norm, lr=3e-3))
        assert trainer_module.skips_on_device(t.optimizer) is fused
        norms = [t.train_step(t.next_batches())[1] for _ in range(3)]
        runs.append((norms, {k: v.detach().clone() for k, v in t.model.state_dict().items()}))
    (norms_a, weights_a), (norms_b, weights_b) = runs
    assert norms_b == pytest.approx(norms_a, rel=1e-5)  # the logged norm is the pre-clip one on both paths
    if max_norm:
        assert min(norms_a) > max_norm  # every step did clip
    for name, a in weights_a.items():
        rel = ((weights_b[name] - a).norm() / a.norm()).item()
        assert rel < 1e-5, f"{name}: relative error {rel:.2e}"


@pytest.mark.parametrize("max_norm", [0.05, 0.0])
def test_clipping_bounds_the_norm_and_logs_the_pre_clip_norm(corpus: Path, tmp_path: Path, max_norm: float) -> None:
    t = Trainer(tiny_config(corpus, tmp_path / "run", dropout=0.0, max_grad_norm=max_norm))
    batches = t.next_batches()
    reference = copy.deepcopy(t.model)
    loss, n = lm_loss(reference, batches[0])
    (loss / n).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf")).item()
    seen = []
    original_step = t.optimizer.step
    t.optimizer.step = lambda *a, **k: (seen.append(total_grad_norm(t.params).item()), original_step(*a, **k))[1]
    result = t.train_step(batches)
    logged, applied = result.grad_norm, result.applied
    assert applied and len(seen) == 1
    assert logged == pytest.approx(expected, rel=1e-5)
    if max_norm:
        assert expected > max_norm and seen[0] <= max_norm + 1e-6
    else:
        assert seen[0] == pytest.approx(expected, rel=1e-5)  # 0 disables clipping


def test_fp16_overflow_skips_the_step_and_keeps_the_lr(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fp16 autocast is CUDA-only; on the CPU the GradScaler itself works, so drive its skip path here.
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda cfg, dev: Precision.create(None, "cpu", True))
    cfg = tiny_config(corpus, tmp_path / "run", max_steps=4, checkpoint_freq=100, val_freq=100, dropout=0.0)
    t = Trainer(cfg)
    scale0 = t.precision.scaler.get_scale()
    poison = t.model.lm_head.weight.register_hook(lambda g: g * math.inf if t.progress.step == 1 else g)
    before_skip: dict[str, torch.Tensor] = {}
    t.optimizer.step = _recording_step(t, before_skip)
    ckpt = t.fit()
    poison.remove()
    m = read_metrics(t.save_dir)
    steps = [r for r in m if "loss" in r]
    assert [r.get("skipped") for r in steps] == [None, "overflow", None, None]
    assert steps[2]["lr"] == steps[1]["lr"] != steps[0]["lr"]  # the skipped step did not advance the schedule
    assert t.progress.applied_steps == 3 and t.progress.overflow_skips == 1 and t.progress.nonfinite_skips == 0
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert state["scaler"]["scale"] == scale0 / 2  # backed off once, saved with the checkpoint
    resumed = Trainer(cfg.replace(max_steps=5))
    assert resumed.precision.scaler.get_scale() == scale0 / 2
    assert resumed.progress.overflow_skips == 1 and resumed.progress.applied_steps == 3


def _recording_step(t: Trainer, store: dict) -> object:
    original = t.optimizer.step

    def step(*args: object, **kwargs: object) -> object:
        store[t.progress.step] = True
        return original(*args, **kwargs)

    return step


@pytest.mark.parametrize(
    ("fused", "overlap", "stop_step"),
    [(False, True, 7), (True, False, 7), (True, True, 8)],
    ids=["host-skip", "device-skip", "device-skip-overlapped"],
)
def test_nonfinite_loss_is_skipped_then_stops_with_a_checkpoint(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    fused: bool,
    overlap: bool,
    stop_step: int,
) -> None:
    calls = {"train": 0}
    if fused:  # the GPU's path: the fused optimizer, launched before the loss is read, skips on the device
        monkeypatch.setattr(trainer_module, "build_optimizer", fused_adamw)

    def poisoned(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        loss, n = lm_loss(model, tokens)
        if torch.is_grad_enabled():  # training, not validation
            calls["train"] += 1
            if calls["train"] > 4:
                loss = loss * math.nan
        return loss, n

    monkeypatch.setattr(loss_module, "lm_loss", poisoned)  # the full-logits loss, chosen at setup
    save_dir = tmp_path / "run"
    settings = tiny_settings(corpus, save_dir, max_nonfinite_steps=3, chunked_ce=False, overlap_steps=overlap)
    rc = main(["train", *overrides(settings)])
    err = capsys.readouterr().err
    assert rc == 2
    # With overlap, step 8 was launched before step 7 was read: it lands (skipped too) before the stop.
    skipped = stop_step - 4
    assert f"training stopped at step {stop_step}: {skipped} steps in a row had a non-finite loss" in err
    assert [r.get("skipped") for r in read_metrics(save_dir) if "loss" in r] == [None] * 4 + ["nonfinite"] * skipped
    last_good = load_tensors(checkpoints_dir(save_dir) / "step_00000004" / MODEL_FILE)
    stopped = load_tensors(checkpoints_dir(save_dir) / f"step_{stop_step:08d}" / MODEL_FILE)
    assert all(torch.equal(last_good[k], stopped[k]) for k in last_good)


def _launches(t: Trainer) -> list[tuple[int, int]]:
    """Record (step number, steps in flight beside it) for every step ``t`` launches."""
    seen: list[tuple[int, int]] = []
    launch = t.launch_step

    def recording(batches: list[torch.Tensor], ahead: int = 0, stop: bool = False) -> LaunchedStep:
        launched = launch(batches, ahead, stop)
        seen.append((launched.number, ahead))
        return launched

    t.launch_step = recording
    return seen


def test_overlapped_steps_train_exactly_as_synchronous_ones(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Launching step n+1 before step n is read must change nothing but timing: the same losses, learning
    # rates, norms, validations, checkpoints and weights as the loop that reads each step before the next.
    # Dropout is on, so the RNG's order matters too.
    monkeypatch.setattr(trainer_module, "build_optimizer", fused_adamw)
    launches = {}
    for overlap in (False, True):
        t = Trainer(tiny_config(corpus, tmp_path / f"run{overlap}", overlap_steps=overlap))
        assert t.overlaps_steps is overlap
        assert any("steps overlapped" in line for line in describe_run(t)) is overlap  # the startup lines say so
        launches[overlap] = _launches(t)
        t.fit()
    # Validation and checkpoints are due after steps 4, 8 and 12: those steps land before the next launch.
    assert launches[False] == [(n, 0) for n in range(1, 13)]
    assert launches[True] == [(n, 0 if n in (1, 5, 9) else 1) for n in range(1, 13)]

    def curve(save_dir: Path) -> list[tuple]:
        keys = ("step", "loss", "lr", "grad_norm", "val_loss")
        return [tuple(m.get(k) for k in keys) for m in read_metrics(save_dir)]

    sync, overlapped = tmp_path / "runFalse", tmp_path / "runTrue"
    assert curve(overlapped) == curve(sync) and len(curve(sync)) == 12 + 3
    # The logged speed too: on a CPU the work of a step runs as it is launched, so an overlapped step that
    # lands with none launched after it (4, 8, 12) once showed almost no time, thousands of times the speed.
    speeds = {run: [m["tokens_per_s"] for m in read_metrics(run) if "tokens_per_s" in m] for run in (sync, overlapped)}
    assert max(speeds[overlapped]) <= 10 * statistics.median(speeds[sync]), speeds
    for step in ("step_00000004", "step_00000008", "step_00000012"):
        for name in (MODEL_FILE, STATE_FILE):
            a, b = checkpoints_dir(sync) / step / name, checkpoints_dir(overlapped) / step / name
            assert a.read_bytes() == b.read_bytes(), f"{step}/{name} differs"


@pytest.mark.parametrize("overlap", [False, True])
def test_in_flight_lands_each_step_once_the_next_is_launched(overlap: bool) -> None:
    # The order the loop, the bench's row worker and the profile share: launch n+1, then land n.
    events: list[str] = []
    in_flight = InFlight(lambda s: events.append(f"land {s.number}"), overlap=overlap)
    for n in (1, 2, 3):
        assert in_flight.ahead == int(overlap and n > 1)
        events.append(f"launch {n}")
        in_flight.push(LaunchedStep(n, 0.0, lambda: [0.0, 0.0, 0.0]))
    in_flight.drain()
    in_flight.drain()  # nothing left: lands nothing twice
    if overlap:
        assert events == ["launch 1", "launch 2", "land 1", "launch 3", "land 2", "land 3"]
    else:
        assert events == ["launch 1", "land 1", "launch 2", "land 2", "launch 3", "land 3"]


def test_overlap_needs_the_device_skip(corpus: Path, tmp_path: Path) -> None:
    # The CPU's foreach AdamW is stepped by the host after it reads the loss: nothing to overlap.
    t = Trainer(tiny_config(corpus, tmp_path / "run"))
    assert not t.skips_on_device and not t.overlaps_steps
    launches = _launches(t)
    t.fit()
    assert launches == [(n, 0) for n in range(1, 13)]


def test_ctrl_c_finishes_the_step_checkpoints_and_exits_130(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUOMNI_TEST_KILL_AT", "mid_step:3:SIGINT")
    save_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    assert main(["train", *overrides(tiny_settings(corpus, save_dir, checkpoint_freq=100))]) == 130
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert [p.name for p in checkpoints_dir(save_dir).iterdir()] == ["step_00000003"]
    assert step_losses(save_dir)[-1][0] == 3


def test_same_config_gives_the_same_loss_curve(corpus: Path, tmp_path: Path) -> None:
    curves, weights = [], []
    for name in ("a", "b"):
        Trainer(tiny_config(corpus, tmp_path / name)).fit()
        curves.append(step_losses(tmp_path / name))
        weights.append(final_weights(tmp_path / name))
    assert len(curves[0]) == 12 and curves[0] == curves[1]
    assert curves[0][-1][1] < curves[0][0][1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_copy_to_host_reads_the_values_at_the_call_not_after_later_work(device: str) -> None:
    # The trainer queues the optimizer step between the copy and the read: what the read returns must be
    # the stats as they were when the copy was queued, whatever the device does to the tensor after.
    values = torch.tensor([2.5, -1.0], device=device)
    if device == "cuda":
        torch.cuda._sleep(50_000_000)  # a read that did not wait for the copy would find it not done
    read = copy_to_host(values)
    values.mul_(10.0)  # queued after the copy, as the update is
    assert read() == [2.5, -1.0]
    assert values.tolist() == [25.0, -10.0]
