"""One row of ``muomni bench train``, run in its own process so its peak memory is its own.

``python -m muomni.bench.train_worker SPEC.json RESULT.json``. The spec names the framework (muomni or
hf), the resolved config and the step counts. Both frameworks start from the same initial weights (the
Thinker made from ``seed``; Hugging Face Llama loads its state dict unchanged) and read the same windows in
the same order, so speed, memory and validation loss compare like with like.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from muomni.bench.hardware import peak_memory_bytes, reset_peak_memory, resident_memory_bytes, synchronize
from muomni.bench.peaks import device_peak
from muomni.config import Config, load_config


def flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) + attention (PaLM appendix B convention)."""
    d, f, h_kv = cfg.d_model, cfg.d_ff, cfg.n_kv_heads * cfg.head_dim
    mlp = (3 if cfg.use_swiglu else 2) * d * f * (cfg.num_experts_per_tok if cfg.use_moe else 1)
    per_layer = 2 * d * d + 2 * d * h_kv + mlp
    matmul_params = cfg.n_layers * per_layer + cfg.vocab_size * d  # + the output head
    return 6 * matmul_params + 12 * cfg.n_layers * d * cfg.ctx_len


def _time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[list[float], float]:
    """Run ``warmup`` untimed steps (compilation happens there), then ``steps`` timed ones; seconds each.

    On a GPU the timed steps run back to back, as a training loop runs them (with whatever host syncs the
    loop itself makes), and an event recorded after each marks where it ends on the device: a step's time
    is the device time between two marks, idle gaps included. A sync after every step would add a gap the
    loop does not have, the GPU idling while the host prepares the next step. Elsewhere each step is timed
    on the host, device synced.
    """
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warm_s = time.perf_counter() - started
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        marks[0].record()
        for mark in marks[1:]:
            step()
            mark.record()
        torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) / 1e3 for begin, end in itertools.pairwise(marks)], warm_s
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, warm_s


def run_muomni(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    from muomni.training.in_flight import InFlight, LaunchedStep
    from muomni.training.runlog import RunLog
    from muomni.training.trainer import Trainer

    floor = resident_memory_bytes()  # torch and muomni loaded, no model yet: what a CPU row pays before its model
    trainer = Trainer(cfg)
    device = trainer.device
    Path(cfg.save_dir).mkdir(parents=True, exist_ok=True)
    log = RunLog(Path(cfg.save_dir), 0, cfg.max_steps, cfg.print_freq)  # auto_fit says what it changed here

    def land(launched: LaunchedStep) -> None:
        # The loop's bookkeeping (fit() does it after logging): the schedule follows the applied steps.
        trainer.progress.step += 1
        trainer.progress.applied_steps += int(launched.result().applied)

    in_flight = InFlight(land, overlap=trainer.overlaps_steps)

    def step() -> None:
        # The loop's step (TrainingRun._run_steps without its periodic actions), with auto_fit's out-of-memory
        # recovery when it is on: with overlap, the next step is launched before this one is read.
        in_flight.push(trainer.fitted_step(trainer.next_batches(), log, ahead=in_flight.ahead))

    reset_peak_memory(device)
    times, warm_s = _time_steps(step, device, spec["warmup"], spec["steps"])
    in_flight.drain()
    peak = peak_memory_bytes(device)
    log.close()
    result = {"step_times": times, "warmup_s": warm_s, "peak_memory_bytes": peak, "val_loss": trainer.evaluate()}
    if device.type == "cpu" and floor is not None:
        result["process_floor_bytes"] = floor
    # The split the step ran with (auto_fit may have changed it; the effective batch stays the same).
    return {**result, "batch_size": trainer.cfg.batch_size, "accumulation": trainer.cfg.gradient_accumulation_steps}


def _hf_model(cfg: Config, spec: dict[str, Any], device: torch.device):  # noqa: ANN202
    from muomni.bench.hf_twin import llama_twin
    from muomni.models.thinker import Thinker
    from muomni.training.trainer import seed_everything

    seed_everything(cfg.seed)
    model = llama_twin(Thinker(cfg), spec["hf_attn"])  # the same initial weights as the muomni rows
    model.to(device).train()
    if spec.get("hf_checkpointing"):
        kind = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24; the old name warns there
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kind)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kind)
    return model


def run_hf(cfg: Config, spec: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face equivalent of a row: LlamaForCausalLM, fused AdamW, clipping, the same data."""
    from muomni.data import TokenData, WindowStream, prepare_tokenizer
    from muomni.training.optim import build_optimizer, make_schedule, set_lr
    from muomni.training.precision import resolve_precision
    from muomni.training.trainer import resolve_device

    device = resolve_device(cfg.device)
    tokenizer = prepare_tokenizer(cfg.train_text, cfg.vocab_size)
    data = TokenData.build(cfg.train_text, tokenizer, cfg.ctx_len, cfg.val_split, cfg.seed)
    model = _hf_model(cfg, spec, device)
    forward = torch.compile(model) if cfg.use_compile else model
    optimizer = build_optimizer(model, cfg, device)
    schedule = make_schedule(cfg, spec["warmup"] + spec["steps"])
    precision = resolve_precision(cfg, device)
    stream = WindowStream(data.n_train_windows, cfg.seed)
    applied = [0]

    def loss_of(tokens: torch.Tensor) -> torch.Tensor:
        with precision.ctx:
            logits = forward(input_ids=tokens[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())

    def step() -> None:
        set_lr(optimizer, schedule(applied[0]))
        accumulation = cfg.gradient_accumulation_steps  # the row's whole batch, as muomni's rows take it
        for _ in range(accumulation):
            tokens = data.train_batch(stream.take(cfg.batch_size)).to(device)
            precision.scaler.scale(loss_of(tokens) / accumulation).backward()
        precision.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        applied[0] += 1

    reset_peak_memory(device)
    times, warm_s = _time_steps(step, device, spec["warmup"], spec["steps"])
    peak = peak_memory_bytes(device)
    model.eval()
    with torch.inference_mode():
        windows = data.val_windows(cfg.val_batches * cfg.batch_size)
        losses = [loss_of(w.to(device)) * len(w) for w in windows.split(cfg.batch_size)]
        val = (torch.stack(losses).sum() / len(windows)).item() if len(windows) else None
    return {"step_times": times, "warmup_s": warm_s, "peak_memory_bytes": peak, "val_loss": val}


def _enforce_budget(budget_gib: float | None) -> None:
    """Make the CUDA allocator fail past ``budget_gib``, as a smaller GPU would (``muomni plan``)."""
    if budget_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * 2**30 / total))


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config(spec["config"], warn_ignored=False)
    _enforce_budget(spec.get("memory_budget_gib"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.replace(save_dir=tmp, resume="never")
        result = (run_hf if spec["framework"] == "hf" else run_muomni)(cfg, spec)
    tokens_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * cfg.ctx_len
    median = statistics.median(result["step_times"])
    result["tokens_per_s"] = tokens_per_step / median
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    peak = device_peak(device)
    result["mfu"] = result["tokens_per_s"] * flops_per_token(cfg) / (peak.bf16_tflops * 1e12) if peak else None
    return result


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run_row(spec)
    except torch.OutOfMemoryError:
        result = {"error": "out of memory"}
    except Exception as e:  # a row that fails is reported in the table, the others still run
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
