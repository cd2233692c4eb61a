"""The training loop: ``muomni train`` and ``muomni.Trainer(cfg).fit()``.

Every feature is decided once in :class:`Trainer`'s constructor (nanoGPT style): the autocast context and
the loss scaler (:mod:`~muomni.training.precision`), compilation, gradient checkpointing, the optimizer and
its decay groups, clipping or plain norm measurement, the loss module and its DDP / FSDP wrapper
(:mod:`muomni.distributed`). :meth:`Trainer.train_step` then reads the same whatever is switched on.

One optimizer step is ``gradient_accumulation_steps`` micro-batches of ``batch_size`` windows on each of
the ``world_size`` processes; each micro-batch's summed token loss is divided by the rank's target tokens
of the whole step, so the gradient is the mean over the step whatever the split (DDP and FSDP average the
ranks' gradients). There is one host synchronisation per step: the loss and the pre-clip gradient norm
(averaged over ranks, so every rank decides alike) are read together to decide whether the step is applied
(a non-finite one is skipped, counted and logged) and to log them.

Where the optimizer itself skips a non-finite step on the device (the fused AdamW on a GPU, without fp16's
loss scaler, not under FSDP), that read need not hold the device back: with ``overlap_steps`` the host
launches step n+1 before it reads step n's loss, so the GPU need not wait for the host between steps (see
:meth:`TrainingRun._run_steps <muomni.training.loop.TrainingRun._run_steps>`).

Under torchrun only rank 0 prints, logs and writes the run folder and checkpoints. An out-of-memory error
is not retried by ``auto_fit`` there: a retry on one rank would leave the others in another collective.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from muomni import distributed
from muomni.config import Config
from muomni.data import TokenData, WindowStream, check_vocab
from muomni.errors import UserError
from muomni.models.thinker import Thinker, checkpoint_blocks
from muomni.training.autofit import (
    OutOfMemory,
    RngSnapshot,
    check_cpu_memory,
    give_up_message,
    next_remedy,
    resplit,
)
from muomni.training.faults import StopSignals, fault_point
from muomni.training.features import grad_norm_fn, refuse_unavailable, total_grad_norm, try_compile, warn_inert_on_cpu
from muomni.training.in_flight import LaunchedStep, StepResult, copy_to_host
from muomni.training.loop import TrainingDiverged, TrainingRun
from muomni.training.loss import LossModule, run_loss
from muomni.training.master_weights import CopyGradientMean, MasterWeightAdamW, copied_weights
from muomni.training.offload import activation_offload
from muomni.training.optim import build_optimizer, make_schedule, planned_steps, set_lr, skips_on_device, step_unless
from muomni.training.precision import resolve_precision
from muomni.training.resume import find_resume, warn_replaced
from muomni.training.run_folder import check_run_folder, writing_run_folder
from muomni.training.runlog import RunLog
from muomni.training.snapshot import (
    Progress,
    TrainingState,
    load_model_state,
    load_snapshot,
    split_of,
)
from muomni.training.sources import (
    initial_sources,
    resolve_device,
    resume_sources,
    seed_everything,
)
from muomni.training.startup import unigram_entropy


class Trainer:
    """Trains a Thinker as a config says, resuming from the run folder's newest checkpoint by default.

    Under torchrun (``distributed=ddp|fsdp``) every process builds one; see the module docstring.

    Args:
        cfg: the validated config (:func:`~muomni.load_config`).

    Raises:
        UserError: a bad device, corpus, checkpoint or an incompatible resume (before any training).
    """

    def __init__(self, cfg: Config) -> None:
        if not isinstance(cfg, Config):  # a dict or a preset's name failed far inside, on an attribute
            raise TypeError(f"Trainer takes a Config, not {type(cfg).__name__}: Trainer(muomni.load_config(...))")
        started = time.perf_counter()
        check_run_folder(cfg.save_dir)
        self.device = resolve_device(cfg.device)
        self.env = distributed.setup(cfg.distributed, self.device.type, cfg.use_compile)
        if self.env.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.env.local_rank)
        auto_fit = cfg.auto_fit if cfg.auto_fit is not None else self.device.type == "cuda"
        self.auto_fit = auto_fit and not self.env.enabled  # a retry on one rank would desynchronise the ranks
        self.resume_from = find_resume(cfg, announce=False)  # what it replaces is said last, below
        asked_split = split_of(cfg)  # before a resume adopts auto_fit's split, or auto_fit changes it
        init_state = self._prepare(cfg)
        cfg = self.cfg
        warn_inert_on_cpu(cfg, self.device)
        if self.device.type == "cpu":
            self._check_cpu_memory(cfg)
        seed_everything(cfg.seed)
        model = Thinker(cfg)
        if init_state is not None:
            load_model_state(model, init_state, str(cfg.init_from))
        self.model = model.to(self.device)
        if cfg.use_gradient_checkpointing:
            self._checkpoint_blocks(traced=cfg.use_compile)  # before FSDP: inside each shard's hooks
        self.precision = resolve_precision(cfg, self.device)
        refuse_unavailable(cfg, self.precision)
        self.offload = activation_offload(cfg.cpu_offload == "activations", self.device)
        self._build_step()
        self.total_steps = planned_steps(cfg, self.data.n_train_windows / self.env.world_size)
        self.stream = WindowStream(self.data.n_train_windows, cfg.seed)
        self.progress = Progress()
        schedule = make_schedule(cfg, self.total_steps)
        args = (self.model, self.optimizer, self.precision.scaler, self.stream, schedule, self.progress)
        self.state = TrainingState(*args, env=self.env, asked_split=asked_split)
        if self.resume_from is not None:
            load_snapshot(self.resume_from, self.state)
        self.compiled = self._compile()
        if cfg.use_gradient_checkpointing and cfg.use_compile and not self.compiled:
            self._checkpoint_blocks(traced=False)  # compiling failed: the kind eager runs take
        self.tokens_per_step = cfg.batch_size * cfg.gradient_accumulation_steps * cfg.ctx_len  # this rank's
        self.global_tokens_per_step = self.tokens_per_step * self.env.world_size
        self.val_set = self.data.val_windows(cfg.val_batches * cfg.batch_size)  # [N, ctx_len + 1], fixed
        self.unigram_entropy = unigram_entropy(self.data.train_tokens, cfg.vocab_size)
        self.stop_signal: int | None = None
        self._fitted = False
        self.save_dir = Path(cfg.save_dir)
        if self.env.is_main:  # after every check that can refuse the run, which then replaces nothing
            warn_replaced(cfg, self.resume_from, self.progress.step)
        self.setup_seconds = time.perf_counter() - started

    # --- setup ---
    def _prepare(self, cfg: Config) -> dict[str, torch.Tensor] | None:
        """Set the config, tokenizer and data (from a resumed checkpoint, ``init_from`` or scratch); return
        the initial weights, if any. Rank 0 trains the tokenizer and writes the token cache first; the other
        ranks then read both from the cache."""
        with distributed.main_first(self.env, self.device, "data preparation"):
            if self.resume_from is not None:
                self.cfg, self.tokenizer, init_state = resume_sources(cfg, self.resume_from, self.env.world_size)
            else:
                self.cfg, self.tokenizer, init_state = initial_sources(cfg)
            c = self.cfg
            check_vocab(self.tokenizer, c.vocab_size)
            self.data = TokenData.build(c.train_text, self.tokenizer, c.ctx_len, c.val_split, c.seed)
        return init_state

    def _checkpoint_blocks(self, traced: bool) -> None:
        """Gradient checkpointing of the kind this run can use: the reentrant kind, which costs the host half
        as much, in eager single-process runs; the non-reentrant kind where ``torch.compile`` traces the
        blocks (``traced``) or DDP / FSDP must see their gradients (see :func:`checkpoint_blocks`)."""
        reentrant = not traced and not self.env.enabled
        checkpoint_blocks(self.model, reentrant, self.cfg.gradient_checkpointing_every)

    def _build_step(self) -> None:
        """The loss module, its DDP / FSDP wrapper, the optimizer (after sharding) and the gradient norm.

        ``loss_fn(forward_model, tokens)`` is the step's loss: the wrapped :class:`LossModule`, so every
        parameter the loss uses (the head read directly by chunked cross-entropy too) is DDP's or FSDP's.
        """
        cfg = self.cfg
        self.loss_module = LossModule(self.model, cfg.chunked_ce)
        blocks = list(self.model.model.layers)
        # With weight_dtype=bf16, DDP leaves the weights with bf16 copies to the copies' own reduction.
        copied = copied_weights(self.model) if cfg.weight_dtype == "bf16" else []
        self.forward_model = distributed.wrap(
            self.loss_module,
            blocks,
            self.env,
            self.device,
            self.precision.dtype,
            find_unused=cfg.use_moe,
            ignored=copied,
        )
        self.loss_fn = run_loss
        # Under FSDP the optimizer must hold the sharded parameters, so it is built after wrapping.
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        # Under DDP, the bf16 copies' gradients are averaged after the backward pass (DDP leaves their
        # weights alone); elsewhere there is nothing to do.
        self.reduce_copy_gradients: Callable[[], None] = lambda: None
        ddp = self.env.enabled and self.env.mode == "ddp"
        if ddp and isinstance(self.optimizer, MasterWeightAdamW) and self.optimizer.compute_weights:
            self.reduce_copy_gradients = CopyGradientMean(self.optimizer.compute_weights, self.env.world_size).reduce
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_norm = grad_norm_fn(cfg.max_grad_norm, self.env)
        # Whether the optimizer is told on the device to skip a non-finite step (see update). Not with fp16's
        # scaler, which decides on the host, nor under FSDP, whose parameters are DTensors: the flag is a
        # plain tensor, and that was not tried there.
        scaler = self.precision.scaler
        self.skips_on_device = skips_on_device(self.optimizer) and not scaler.is_enabled() and not self.env.sharded
        # Whether the next step may be launched before this one's loss is read (see TrainingRun._run_steps).
        self.overlaps_steps = self.skips_on_device and cfg.overlap_steps

    def _compile(self) -> bool:
        """Compile what the loss calls (eager when that fails on any rank); see :func:`try_compile`."""
        if not self.cfg.use_compile:
            return False
        # FSDP's probe runs through the root, which gathers the parameters; elsewhere it stays local.
        probe_module = self.forward_model if self.env.sharded else self.loss_module
        # Random tokens from a generator of its own: the training RNG stays where it was.
        generator = torch.Generator(self.device).manual_seed(0)
        shape = (self.cfg.batch_size, self.cfg.ctx_len + 1)
        probe = torch.randint(0, self.cfg.vocab_size, shape, generator=generator, device=self.device)
        # With dropout, eager and compiled draw different masks; FSDP's gradients are shards.
        check = self.cfg.dropout == 0 and not self.env.sharded
        mode = self.cfg.compile_mode
        return try_compile(self.loss_module, probe_module, probe, self.precision, mode, self.env, check)

    # --- one optimizer step ---
    def next_batches(self) -> list[torch.Tensor]:
        """The micro-batches of the next step: ``gradient_accumulation_steps`` x [batch_size, ctx_len + 1]."""
        batches = []
        size, rank = self.cfg.batch_size, self.env.rank
        for _ in range(self.cfg.gradient_accumulation_steps):
            # Every rank draws the global micro-batch from the shared, seeded stream and keeps its slice.
            windows = self.stream.take(size * self.env.world_size)[rank * size : (rank + 1) * size]
            tokens = self.data.train_batch(windows)
            if self.device.type == "cuda":
                tokens = tokens.pin_memory()
            batches.append(tokens.to(self.device, non_blocking=True))
        return batches

    def train_step(self, batches: list[torch.Tensor]) -> StepResult:
        """Forward, backward, clip and (unless non-finite) step, then read the step's loss and norm."""
        return self.launch_step(batches).result()

    def launch_step(self, batches: list[torch.Tensor], ahead: int = 0, stop_requested: bool = False) -> LaunchedStep:
        """Queue a whole step on the device: forward, backward, clip and (unless non-finite) the update.

        ``ahead`` steps were launched before this one and are not read yet (0 or 1; see
        :meth:`TrainingRun._run_steps <muomni.training.loop.TrainingRun._run_steps>`); the schedule takes them
        as applied. ``stop_requested``: this process has a stop signal; the step's result says whether any
        rank had one. Where the update is not skipped on the device (:attr:`skips_on_device`), the host reads
        the loss here and the step is complete on return.
        """
        started = time.perf_counter()
        number = self.progress.step + ahead + 1
        lr = self.state.schedule(self.progress.applied_steps + ahead)
        set_lr(self.optimizer, lr)
        scaler = self.precision.scaler
        loss_sum = torch.zeros((), device=self.device)
        for i, tokens in enumerate(batches):
            # Gradients are reduced across ranks once per step, in the last micro-batch's backward.
            with distributed.gradient_sync(self.forward_model, self.env, sync=i == len(batches) - 1):
                with self.precision.ctx, self.offload():
                    sum_loss, _ = self.loss_fn(self.forward_model, tokens)
                loss = sum_loss / self.tokens_per_step  # mean over the targets of the whole step
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
            if len(batches) > 1 and isinstance(self.optimizer, MasterWeightAdamW):
                self.optimizer.accumulate()  # the bf16 copies' gradients summed in fp32
            if i == 0 and len(batches) > 1 and self.cuda_graphs:
                own_gradients(self.params)
        self.reduce_copy_gradients()
        fault_point("mid_step", number)
        read = self.update(loss_sum, stop_requested)
        return LaunchedStep(number, lr, read, launch_seconds=time.perf_counter() - started)

    def update(self, loss_sum: torch.Tensor, stop_requested: bool = False) -> Callable[[], list[float]]:
        """The end of a step, after its backward passes: clip, step unless non-finite, clear the gradients.
        Returns the read of the step's [loss, pre-clip norm, stop], the step's one host sync; stop > 0 when a
        rank had a stop signal (``stop_requested``) as the step was launched.

        Under torchrun the ranks agree on a stop through the mean they take of the loss and norm anyway: a
        collective of its own, read on the host, would wait for the step launched after this one too.

        Where the optimizer skips on the device, it is launched before the host reads the loss, told on the
        device to skip a non-finite step, and the stats are copied out before the update is queued: the read
        waits for the loss only, and the GPU runs the update while the host prepares the next step, instead
        of idling after the wait. The fused kernel also clips the gradients itself, in the pass that reads
        them (see step_unless). Elsewhere the host reads the stats here and decides.
        """
        scaler = self.precision.scaler
        on_device = self.skips_on_device
        scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        if isinstance(self.optimizer, MasterWeightAdamW):  # bf16 and fp32 gradients, the norm in fp32
            norm = self.optimizer.grad_norm()
        else:
            norm = total_grad_norm(self.params) if on_device else self.grad_norm(self.params)
        # The mean over ranks: the logged loss is the global one, and every rank takes the same decision.
        stop = loss_sum.new_full((), float(stop_requested))  # a fill on the device: no copy, no sync
        stats = distributed.mean_over_ranks(torch.stack([loss_sum, norm.float(), stop]), self.env)
        read_stats = copy_to_host(stats)  # queued before any update: the read need not wait for it
        if on_device:
            clip = (norm, self.cfg.max_grad_norm) if self.cfg.max_grad_norm else None
            step_unless(self.optimizer, ~torch.isfinite(stats).all(), clip)
            self.optimizer.zero_grad(set_to_none=True)
            return read_stats
        values = read_stats()
        loss_value, norm_value, _ = values
        if math.isfinite(loss_value) and math.isfinite(norm_value):
            scaler.step(self.optimizer)
        scaler.update()  # with fp16, an overflow (inf gradients after unscale_) lowers the scale
        self.optimizer.zero_grad(set_to_none=True)
        return lambda: values

    def _check_cpu_memory(self, cfg: Config) -> None:
        """:func:`~muomni.training.autofit.check_cpu_memory` for the model of ``cfg``, counted on the meta
        device (nothing allocated), times the ranks on this machine that each hold a whole copy."""
        with torch.device("meta"):
            n_params = sum(p.numel() for p in Thinker(cfg).parameters())
        copies = 1 if self.env.sharded else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        check_cpu_memory(cfg, n_params, copies)

    def fitted_step(
        self, batches: list[torch.Tensor], log: RunLog, ahead: int = 0, stop_requested: bool = False
    ) -> LaunchedStep:
        """:meth:`launch_step`; with ``auto_fit``, retried after an out-of-memory error with the next remedy."""
        rng = RngSnapshot(self.device) if self.auto_fit else None  # only a retry needs it
        while True:
            try:
                return self.launch_step(batches, ahead, stop_requested)
            except torch.OutOfMemoryError:
                if rng is None:
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
            self._checkpoint_blocks(traced=self.loss_module.compiled)
            if self.loss_module.compiled:  # the compiled graph was traced without checkpointing
                self.loss_module.use_compiled(self.cfg.compile_mode, self.loss_module.chunks_in_graph)
        if "cpu_offload" in remedy:
            self.offload = activation_offload(True, self.device)
        log.info(
            f"step {self.progress.step + 1}: out of memory; retrying with {remedy} "
            f"(effective batch {self.cfg.effective_batch_size} unchanged)"
        )
        return resplit(batches, self.cfg.batch_size)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled loss replays CUDA graphs (``compile_mode=reduce-overhead`` on a GPU)."""
        return self.loss_module.compiled and self.device.type == "cuda" and self.cfg.compile_mode == "reduce-overhead"

    # --- the loop ---
    def fit(self) -> Path | None:
        """Train to ``max_steps`` / ``max_epochs``, a stop signal, or too many non-finite steps (the loop
        itself: :class:`~muomni.training.loop.TrainingRun`).

        Returns:
            The last checkpoint written (None when nothing was trained and none was due). After a stop
            signal ``stop_signal`` names it (``signal.SIGTERM`` or ``signal.SIGINT``; None otherwise): the
            run is not finished, and a new ``Trainer(cfg).fit()`` resumes it.

        Raises:
            TrainingDiverged: after ``max_nonfinite_steps`` skipped steps in a row (a checkpoint of the
                last good weights is written first).
        """
        # A second fit() once began a new run's bookkeeping over this one's state: after a stop it trained
        # nothing and reported "done", after the end it rewrote the last checkpoint.
        if self._fitted:
            raise UserError("this Trainer has run fit() already; make a new Trainer(cfg), which resumes the run")
        self._fitted = True
        with StopSignals(announce=self.env.is_main) as stop, writing_run_folder(self.save_dir, self.env.is_main):
            return TrainingRun(self, stop).run()

    @torch.no_grad()  # not inference_mode: FSDP's gathered parameters are reused by later training steps
    def evaluate(self, stopped: Callable[[], bool] = lambda: False) -> float | None:
        """Mean token loss over the fixed validation windows (None without validation data, or when
        ``stopped()`` turned true on the way: a stop signal need not wait for a long validation).

        Every rank evaluates all of them (FSDP needs every rank to gather the parameters anyway), so under
        torchrun ``stopped`` must be the same on every rank.
        """
        if len(self.val_set) == 0:
            return None
        self.model.eval()
        total, n, whole = torch.zeros((), device=self.device), 0, True
        with self.loss_module.eager():  # the last, smaller chunk would recompile the compiled one
            for chunk in self.val_set.split(self.cfg.batch_size):  # [<=batch_size, ctx_len + 1]
                if stopped():
                    whole = False
                    break
                with self.precision.ctx:
                    sum_loss, count = self.loss_fn(self.forward_model, chunk.to(self.device))
                total += sum_loss
                n += count
        self.model.train()
        return total.item() / n if whole else None


def own_gradients(params: list[torch.nn.Parameter]) -> None:
    """Move gradients out of the CUDA graphs' memory pool.

    A first backward hands its graph's outputs to ``.grad`` as they are; the next micro-batch's forward
    starts a new graph generation, which reclaims that memory. Later micro-batches add into ``.grad`` in
    place, so one copy after the first keeps the accumulated gradient in memory of its own.
    """
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.clone()


# TrainingDiverged, resolve_device, seed_everything and total_grad_norm are re-exported: they were first
# defined here.
__all__ = ["Trainer", "TrainingDiverged", "resolve_device", "seed_everything", "total_grad_norm"]
