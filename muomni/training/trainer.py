"""The training loop: ``muomni train`` and ``muomni.Trainer(cfg).fit()``.

Every feature is decided once in :class:`Trainer`'s constructor (nanoGPT style): the autocast context and
the loss scaler (:mod:`~muomni.training.precision`), compilation, gradient checkpointing, the optimizer and
its decay groups, clipping or plain norm measurement, and the loss function. :meth:`Trainer.train_step`
then reads the same whatever is switched on.

One optimizer step is ``gradient_accumulation_steps`` micro-batches of ``batch_size`` windows; each
micro-batch's summed token loss is divided by the target tokens of the whole step, so the gradient is
the mean over the step whatever the split. There is one host synchronisation per step: the loss and the
pre-clip gradient norm are read together to decide whether the step is applied (a non-finite one is
skipped, counted and logged) and to log them.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from muomni.config import Config, load_config
from muomni.data import TokenData, Tokenizer, WindowStream, check_vocab, prepare_tokenizer
from muomni.errors import ConfigError, UserError
from muomni.models.thinker import Thinker, checkpoint_blocks
from muomni.training.autofit import OutOfMemory, RngSnapshot, give_up_message, next_remedy, resplit
from muomni.training.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    load_tensors,
    prune_checkpoints,
    resolve_checkpoint,
)
from muomni.training.faults import StopSignals, fault_point
from muomni.training.loss import LossFn, select_loss
from muomni.training.offload import activation_offload
from muomni.training.optim import build_optimizer, make_schedule, planned_steps, set_lr
from muomni.training.precision import resolve_precision
from muomni.training.runlog import RunLog, truncate_metrics
from muomni.training.snapshot import (
    MODEL_KEYS,
    ORDER_KEYS,
    Progress,
    TrainingState,
    check_compatible,
    find_resume,
    load_model_state,
    load_snapshot,
    model_keys,
    read_config,
    remove_stale,
    save_snapshot,
    stale_checkpoints,
)
from muomni.training.startup import describe_run, unigram_entropy

EXIT_INTERRUPTED = 130


class TrainingDiverged(UserError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ConfigError for ``cuda`` without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': cuda was asked for but no CUDA GPU is available; use device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def total_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the gradients, as ``clip_grad_norm_`` computes it, without clipping."""
    norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float32) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


def adopt_fitted_split(old: Config, cfg: Config) -> Config:
    """On resume, keep the checkpoint's micro-batch split (and memory savers) when the effective batch is
    the same: auto_fit may have changed them, and the same windows in the same order are what matter."""
    if old.effective_batch_size != cfg.effective_batch_size or old.batch_size == cfg.batch_size:
        return cfg
    keys = ("batch_size", "gradient_accumulation_steps", "use_gradient_checkpointing", "cpu_offload")
    return cfg.replace(**{k: getattr(old, k) for k in keys})


def _refuse_unavailable(cfg: Config) -> None:
    if cfg.distributed != "none":
        raise ConfigError(f"config key 'distributed': {cfg.distributed} is not yet available in this version")


class Trainer:
    """Trains a Thinker as a config says, resuming from the run folder's newest checkpoint by default.

    Args:
        cfg: the validated config (:func:`~muomni.load_config`).

    Raises:
        UserError: a bad device, corpus, checkpoint or an incompatible resume (before any training).
    """

    def __init__(self, cfg: Config) -> None:
        started = time.perf_counter()
        _refuse_unavailable(cfg)
        self.device = resolve_device(cfg.device)
        self.auto_fit = cfg.auto_fit if cfg.auto_fit is not None else self.device.type == "cuda"
        self.resume_from = find_resume(cfg)
        self.cfg, self.tokenizer, init_state = self._sources(cfg)
        cfg = self.cfg
        check_vocab(self.tokenizer, cfg.vocab_size)
        self.data = TokenData.build(cfg.train_text, self.tokenizer, cfg.ctx_len, cfg.val_split, cfg.seed)
        seed_everything(cfg.seed)
        model = Thinker(cfg)
        if init_state is not None:
            load_model_state(model, init_state, str(cfg.init_from))
        self.model = model.to(self.device)
        if cfg.use_gradient_checkpointing:
            checkpoint_blocks(self.model)
        self.precision = resolve_precision(cfg, self.device)
        if cfg.cpu_offload == "optimizer" and self.precision.scaler.is_enabled():
            raise ConfigError(
                "config key 'cpu_offload': optimizer offload needs bf16 or fp32, not fp16 loss scaling; "
                "set amp_dtype=bf16 or use_amp=false"
            )
        self.offload = activation_offload(cfg.cpu_offload == "activations", self.device)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_norm = (
            partial(nn.utils.clip_grad_norm_, max_norm=cfg.max_grad_norm) if cfg.max_grad_norm else total_grad_norm
        )
        self.loss_model, self.loss_fn = select_loss(self.model, cfg.chunked_ce, compiled=False)
        self.total_steps = planned_steps(cfg, self.data.n_train_windows)
        self.stream = WindowStream(self.data.n_train_windows, cfg.seed)
        self.progress = Progress()
        self.state = TrainingState(
            self.model,
            self.optimizer,
            self.precision.scaler,
            self.stream,
            make_schedule(cfg, self.total_steps),
            self.progress,
        )
        if self.resume_from is not None:
            load_snapshot(self.resume_from, self.state)
        self.forward_model, self.loss_fn = self._compiled()
        self.tokens_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * cfg.ctx_len
        self.val_set = self.data.val_windows(cfg.val_batches * cfg.batch_size)  # [N, ctx_len + 1], fixed
        self.unigram_entropy = unigram_entropy(self.data.train_tokens, cfg.vocab_size)
        self.stop_signal: int | None = None
        self.save_dir = Path(cfg.save_dir)
        self.setup_seconds = time.perf_counter() - started

    # --- setup ---
    def _sources(self, cfg: Config) -> tuple[Config, Tokenizer, dict[str, torch.Tensor] | None]:
        """The config, tokenizer and initial weights, from a resumed checkpoint, ``init_from`` or scratch."""
        if self.resume_from is not None:
            old = read_config(self.resume_from)
            if cfg.init_from is not None:  # the model keys came from init_from when the run started
                cfg = cfg.replace(**model_keys(old))
            cfg = adopt_fitted_split(old, cfg)
            check_compatible(old, cfg, self.resume_from, MODEL_KEYS + list(ORDER_KEYS))
            return cfg, Tokenizer.load(self.resume_from / TOKENIZER_FILE), None
        if cfg.init_from is None:
            return cfg, prepare_tokenizer(cfg.train_text, cfg.vocab_size), None
        if cfg.init_from.startswith("hf:"):
            try:
                from muomni.hf import load_for_training
            except ModuleNotFoundError:
                raise UserError("init_from hf: is not yet available in this version")
            init = load_for_training(cfg.init_from, cfg)
            return cfg.replace(**init.overrides), init.tokenizer, init.state
        ckpt = resolve_checkpoint(cfg.init_from)
        keys = {k: v for k, v in model_keys(read_config(ckpt)).items() if k != "ctx_len"}
        return cfg.replace(**keys), Tokenizer.load(ckpt / TOKENIZER_FILE), load_tensors(ckpt / MODEL_FILE)

    def _compiled(self) -> tuple[nn.Module, LossFn]:
        """The compiled loss module and loss, tried once on a batch of the training shape; eager if that fails.

        With chunked cross-entropy the backbone is compiled, and so is each chunk's softmax-and-gradient.
        """
        if not self.cfg.use_compile:
            return self.loss_model, self.loss_fn
        compiled = torch.compile(self.loss_model, mode=self.cfg.compile_mode)
        _, loss_fn = select_loss(self.model, self.cfg.chunked_ce, compiled=True)
        probe = torch.zeros(self.cfg.batch_size, self.cfg.ctx_len + 1, dtype=torch.long, device=self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # the probe must not move the RNG (dropout)
                with self.precision.ctx:
                    loss, _ = loss_fn(compiled, probe)
                loss.backward()
        except Exception as e:  # compilation fails in many ways (no compiler, unsupported op, ...)
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: {why}); training continues without it", stacklevel=2
            )
            return self.loss_model, self.loss_fn
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        return compiled, loss_fn

    # --- one optimizer step ---
    def next_batches(self) -> list[torch.Tensor]:
        """The micro-batches of the next step: ``gradient_accumulation_steps`` x [batch_size, ctx_len + 1]."""
        batches = []
        for _ in range(self.cfg.gradient_accumulation_steps):
            tokens = self.data.train_batch(self.stream.take(self.cfg.batch_size))
            if self.device.type == "cuda":
                tokens = tokens.pin_memory()
            batches.append(tokens.to(self.device, non_blocking=True))
        return batches

    def train_step(self, batches: list[torch.Tensor]) -> tuple[float, float, float, bool]:
        """Forward, backward, clip and (unless non-finite) step. Returns (loss, pre-clip norm, lr, applied)."""
        lr = self.state.schedule(self.progress.applied_steps)
        set_lr(self.optimizer, lr)
        scaler = self.precision.scaler
        loss_sum = torch.zeros((), device=self.device)
        for tokens in batches:
            with self.precision.ctx, self.offload():
                sum_loss, _ = self.loss_fn(self.forward_model, tokens)
            loss = sum_loss / self.tokens_per_step  # mean over the targets of the whole step
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        fault_point("mid_step", self.progress.step + 1)
        scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        norm = self.grad_norm(self.params)
        loss_value, norm_value = torch.stack([loss_sum, norm.float()]).tolist()  # the step's one host sync
        applied = math.isfinite(loss_value) and math.isfinite(norm_value)
        if applied:
            scaler.step(self.optimizer)
        scaler.update()  # with fp16, an overflow (inf gradients after unscale_) lowers the scale
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm_value, lr, applied

    def fitted_step(self, batches: list[torch.Tensor], log: RunLog) -> tuple[float, float, float, bool]:
        """:meth:`train_step`; with ``auto_fit``, retried after an out-of-memory error with the next remedy."""
        rng = RngSnapshot(self.device)
        while True:
            try:
                return self.train_step(batches)
            except torch.OutOfMemoryError:
                if not self.auto_fit:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                rng.restore()
                batches = self._apply_remedy(batches, log)

    def _apply_remedy(self, batches: list[torch.Tensor], log: RunLog) -> list[torch.Tensor]:
        remedy = next_remedy(self.cfg)
        if remedy is None:
            raise OutOfMemory(give_up_message(self.cfg, self.device))
        self.cfg = self.cfg.replace(**remedy)
        if "use_gradient_checkpointing" in remedy:
            checkpoint_blocks(self.model)
        if "cpu_offload" in remedy:
            self.offload = activation_offload(True, self.device)
        log.info(
            f"step {self.progress.step + 1}: out of memory; retrying with {remedy} "
            f"(effective batch {self.cfg.effective_batch_size} unchanged)"
        )
        return resplit(batches, self.cfg.batch_size)

    # --- the loop ---
    def fit(self) -> Path | None:
        """Train to ``max_steps`` / ``max_epochs``, a stop signal, or too many non-finite steps.

        Returns:
            The last checkpoint written (None when nothing was trained and none was due).

        Raises:
            TrainingDiverged: after ``max_nonfinite_steps`` skipped steps in a row (a checkpoint of the
                last good weights is written first).
        """
        with StopSignals() as stop:
            log = self._start()
            try:
                while not self._done():
                    started = time.perf_counter()
                    loss, norm, lr, applied = self.fitted_step(self.next_batches(), log)
                    self._after_step(log, loss, norm, lr, applied, time.perf_counter() - started)
                    fault_point("step_end", self.progress.step)
                    if stop.requested:
                        break
                    self._periodic(log)
                self.stop_signal = stop.received
                return self._finish(log)
            finally:
                log.close()

    def _done(self) -> bool:
        max_epochs = self.cfg.max_epochs
        return self.progress.step >= self.total_steps or (max_epochs is not None and self.stream.epoch >= max_epochs)

    def _start(self) -> RunLog:
        """Write the run folder's config and tokenizer, open the log, print the startup lines."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.save_dir / CONFIG_FILE)
        self.tokenizer.save(self.save_dir / TOKENIZER_FILE)
        step = self.progress.step
        truncate_metrics(self.save_dir / "metrics.jsonl", step)  # a resumed run rewrites what followed
        self._stale = stale_checkpoints(self.save_dir, step)
        self._last_ckpt: Path | None = self.resume_from
        # A resumed run that trains no further step neither re-evaluates nor rewrites its checkpoint.
        self._last_ckpt_step = self._last_eval_step = step if self.resume_from is not None else -1
        log = RunLog(self.save_dir, step, self.total_steps, self.cfg.print_freq)
        for line in describe_run(self):
            log.info(line)
        return log

    def _after_step(self, log: RunLog, loss: float, norm: float, lr: float, applied: bool, seconds: float) -> None:
        p = self.progress
        p.step += 1
        p.tokens += self.tokens_per_step
        record = {
            "step": p.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": self.tokens_per_step / max(seconds, 1e-9),
            "effective_batch": self.cfg.effective_batch_size,
            "epoch": self.stream.epoch,
        }
        if self.device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if applied:
            p.applied_steps += 1
            p.nonfinite_in_row = 0
        else:
            self._skipped(log, record, loss, norm)
        log.step(record)
        if p.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
            self._checkpoint(log)
            raise TrainingDiverged(
                f"training stopped at step {p.step}: {p.nonfinite_in_row} steps in a row had a non-finite loss or "
                f"gradient norm; {self._last_ckpt} holds the last good weights; lower lr, keep max_grad_norm on, "
                "or use bf16/fp32 (amp_dtype=bf16 or use_amp=false)"
            )

    def _skipped(self, log: RunLog, record: dict, loss: float, norm: float) -> None:
        """Count a skipped step. With fp16, finite loss + infinite gradients is the scaler's overflow."""
        p = self.progress
        overflow = self.precision.scaler.is_enabled() and math.isfinite(loss)
        if overflow:
            p.overflow_skips += 1
        else:
            p.nonfinite_skips += 1
        p.nonfinite_in_row += 1
        record["skipped"] = "overflow" if overflow else "nonfinite"
        log.info(
            f"step {p.step} skipped ({record['skipped']}: loss {loss}, grad norm {norm}); "
            f"{p.nonfinite_in_row} in a row, {p.overflow_skips} overflow and {p.nonfinite_skips} non-finite in all"
        )

    def _periodic(self, log: RunLog) -> None:
        step = self.progress.step
        if step % self.cfg.val_freq == 0:
            self._evaluate(log)
        if step % self.cfg.checkpoint_freq == 0:
            self._checkpoint(log)
        if self.cfg.empty_cache_steps and self.device.type == "cuda" and step % self.cfg.empty_cache_steps == 0:
            torch.cuda.empty_cache()  # returns cached blocks to the driver, for other processes or fragmentation

    def _finish(self, log: RunLog) -> Path | None:
        step = self.progress.step
        if self.stop_signal is not None:
            self._checkpoint(log)
            log.info(f"stopped by {signal.Signals(self.stop_signal).name} after step {step}; saved {self._last_ckpt}")
            return self._last_ckpt
        if self._last_eval_step != step:
            self._evaluate(log)
        if self._last_ckpt_step != step:
            self._checkpoint(log)
        val = self.progress.val_loss
        val_text = "n/a (no validation data)" if val is None else f"{val:.4f}"
        log.info(f"done at step {step}: val loss {val_text} vs unigram entropy {self.unigram_entropy:.4f} nats")
        return self._last_ckpt

    @torch.inference_mode()
    def evaluate(self) -> float | None:
        """Mean token loss over the fixed validation windows (None without validation data)."""
        if len(self.val_set) == 0:
            return None
        self.model.eval()
        total, n = torch.zeros((), device=self.device), 0
        for chunk in self.val_set.split(self.cfg.batch_size):  # [<=batch_size, ctx_len + 1]
            with self.precision.ctx:
                sum_loss, count = self.loss_fn(self.loss_model, chunk.to(self.device))
            total += sum_loss
            n += count
        self.model.train()
        return total.item() / n

    def _evaluate(self, log: RunLog) -> None:
        val = self.evaluate()
        self._last_eval_step = self.progress.step
        if val is None:
            return
        self.progress.val_loss = val
        ppl = math.exp(min(val, 700.0))
        log.record({"step": self.progress.step, "val_loss": val, "val_ppl": ppl})
        log.info(f"step {self.progress.step}: val loss {val:.4f}, perplexity {ppl:.2f}")

    def _checkpoint(self, log: RunLog) -> None:
        step = self.progress.step
        folder = save_snapshot(self.save_dir, self.cfg, self.tokenizer, self.state)
        remove_stale(self._stale, folder)  # before pruning, which keeps the highest step numbers
        prune_checkpoints(self.save_dir, self.cfg.keep_checkpoints)
        self._last_ckpt, self._last_ckpt_step = folder, step
        log.info(f"step {step}: checkpoint {folder}")
        fault_point("after_ckpt", step)


def run_train(args: argparse.Namespace) -> int:
    """``muomni train``: load the config (errors before any work), train, return the exit code."""
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    trainer.fit()
    return EXIT_INTERRUPTED if trainer.stop_signal == signal.SIGINT else 0


__all__ = ["Trainer", "TrainingDiverged", "resolve_device", "run_train", "total_grad_norm"]
