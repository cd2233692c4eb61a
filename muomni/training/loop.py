"""One run of the training loop (:meth:`Trainer.fit <muomni.training.trainer.Trainer.fit>`): steps launched
and landed, and what is due between them (the log, validation, checkpoints, a stop signal, a diverged run).

The :class:`~muomni.training.trainer.Trainer` holds what a step needs (the model, the optimizer, the data,
the decisions made once); a :class:`TrainingRun` holds what one call of ``fit`` keeps while it runs: the
log, the stop signals, when the last step landed, and the last validation and checkpoint.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from muomni import distributed
from muomni.errors import UserError
from muomni.training.checkpoint import CONFIG_FILE, TOKENIZER_FILE, prune_checkpoints
from muomni.training.faults import StopSignals, fault_point
from muomni.training.in_flight import InFlight, LaunchedStep, StepResult
from muomni.training.resume import remove_stale, stale_checkpoints
from muomni.training.runlog import RunLog
from muomni.training.snapshot import save_snapshot
from muomni.training.startup import describe_run

if TYPE_CHECKING:
    from muomni.training.trainer import Trainer


class TrainingDiverged(UserError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm."""


class TrainingRun:
    """One call of ``fit``: writes the run folder's config and tokenizer (rank 0; ``fit`` has made the
    folder and holds its lock), opens the log and prints the startup lines; :meth:`run` then trains.

    Args:
        trainer: the trainer whose steps this run launches (its ``stop_signal`` is set on a stop).
        stop: the signal handlers installed for the run.
    """

    def __init__(self, trainer: Trainer, stop: StopSignals) -> None:
        self.trainer, self.stop = trainer, stop
        t = trainer
        step = t.progress.step
        # Checkpoints of a run this one replaces (resume=never, or an earlier checkpoint resumed) go when
        # this run writes its first; so do the folder's config, tokenizer and log, kept whole until then.
        self._stale = stale_checkpoints(t.save_dir, step)
        self.last_ckpt: Path | None = t.resume_from
        # A resumed run that trains no further step neither re-evaluates nor rewrites its checkpoint, unless a
        # stop skipped the validation due at its step: that runs first, as in a run that never stopped.
        self._last_ckpt_step = self._last_eval_step = step if t.resume_from is not None else -1
        self._owed_eval = t.resume_from is not None and self._validation_owed(step)
        if t.resume_from is None:
            t.progress.val_step = 0
        held = bool(self._stale)
        # A resume with nothing to train (the same command again) leaves the folder as it was: its config.json
        # stays the one trained with, and no step, validation or checkpoint runs.
        self._idle = t.resume_from is not None and not self._owed_eval and self._done()
        if t.env.is_main and not held and not self._idle:
            self._write_run_files()
        # An idle run writes no log either: a new save_dir it resumed into stays without a run's files.
        self.log = RunLog(
            t.save_dir, step, t.total_steps, t.cfg.print_freq, enabled=t.env.is_main, held=held or self._idle
        )
        for line in describe_run(t):
            self.log.info(line)
        self._landed_at = time.perf_counter()

    def _validation_owed(self, step: int) -> bool:
        """Whether the checkpoint resumed at ``step`` lacks the validation due after that step (a stop came
        first). Checkpoints older than ``Progress.val_step`` are taken to have it."""
        t = self.trainer
        val_step = t.progress.val_step
        due = step % t.cfg.val_freq == 0 or self._done()
        return val_step is not None and val_step != step and due and step > 0

    def _write_run_files(self) -> None:
        t = self.trainer
        t.cfg.save(t.save_dir / CONFIG_FILE)
        t.tokenizer.save(t.save_dir / TOKENIZER_FILE)

    def run(self) -> Path | None:
        """Train to ``max_steps`` / ``max_epochs``, a stop signal, or too many non-finite steps; return the
        last checkpoint written (see :meth:`Trainer.fit <muomni.training.trainer.Trainer.fit>`)."""
        try:
            if self._owed_eval:
                self._evaluate()
                self._last_ckpt_step = -1  # the checkpoint resumed from is written again, now with it
            self._run_steps()
            if not self.trainer.env.enabled:  # ranks act on a signal together, only once they agreed on it
                self.trainer.stop_signal = self.stop.received
            return self._finish()
        finally:
            self.log.close()

    def _run_steps(self) -> None:
        """Launch and land steps until the last, a stop signal, or too many non-finite steps in a row.

        A step is launched (:meth:`Trainer.launch_step`: its work queued on the device) and then landed
        (:meth:`_land`: its loss read, counted, logged, and the periodic actions due after it run). With
        ``Trainer.overlaps_steps``, step n+1 is launched before step n lands, so the host's read of step n's
        loss and its work between steps (logging, the next batch, entering the compiled step) happen while
        the GPU runs step n+1, instead of the GPU idling meanwhile (the tiny preset's step on an H200: 5.40 ->
        5.00 ms). At most one step is in flight, and never past a point where the run's state must be whole: a
        step after which validation, a checkpoint or the end is due lands before the next is launched, and a
        stop signal or a diverged run lands the step in flight before it acts.

        The schedule takes the step in flight as applied: were it skipped (non-finite), the step launched
        beside it has the schedule's next learning rate, one position ahead, and the schedule follows the
        applied steps again from the step after. The weights are the same as without overlap otherwise.
        """
        t = self.trainer
        # Whether to overlap is decided here, step by step (_may_overlap), so the queue itself always may.
        in_flight = InFlight(self._land)
        while True:
            halted = t.stop_signal is not None or self._diverged
            may_launch = not halted and not self._done(ahead=in_flight.ahead)
            if may_launch and (in_flight.step is None or self._may_overlap(in_flight.step)):
                batches = t.next_batches()
                in_flight.push(t.fitted_step(batches, self.log, in_flight.ahead, stop_requested=self.stop.requested))
            elif in_flight.step is not None:
                in_flight.drain()
            else:
                break
        if self._diverged:
            self._checkpoint()
            p = t.progress
            raise TrainingDiverged(
                f"training stopped at step {p.step}: {p.nonfinite_in_row} steps in a row had a non-finite loss or "
                f"gradient norm; {self.last_ckpt} holds the last good weights; lower lr, keep max_grad_norm on, "
                "or use bf16/fp32 (amp_dtype=bf16 or use_amp=false)"
            )

    def _may_overlap(self, in_flight: LaunchedStep) -> bool:
        """Whether the next step may be launched before ``in_flight`` lands (see :meth:`_run_steps`)."""
        return self.trainer.overlaps_steps and not any(self._due(in_flight.number))

    def _land(self, launched: LaunchedStep) -> None:
        """Read a launched step's loss, count and log it, then act on a stop signal or the periodic actions."""
        t = self.trainer
        result = launched.result()
        # A step's time is the time since the step before landed; but with overlapped steps on a device that
        # runs work as it is launched (a CPU), the step before landed after this one's work was done (its
        # launch came first), so a step landing with none launched after it (the last, or one before
        # validation) would show almost no time: its own launch is its time there.
        seconds = max(time.perf_counter() - self._landed_at, launched.launch_seconds)
        self._after_step(result, seconds)
        fault_point("step_end", t.progress.step)
        distributed.inject_failure(t.env, t.progress.step)
        if not self._diverged and not self._stop_agreed(result):
            self._periodic()
        self._landed_at = time.perf_counter()  # the next step's time leaves out validation and checkpoints

    @property
    def _diverged(self) -> bool:
        return self.trainer.progress.nonfinite_in_row >= self.trainer.cfg.max_nonfinite_steps

    def _stop_agreed(self, landed: StepResult) -> bool:
        """Whether to stop after the step just landed. Under torchrun, which forwards a signal to every
        worker but not in step: whether any rank had received one when that step was launched (the ranks
        agree through the step's own collective, see :meth:`Trainer.update`), so each stops after the same
        step."""
        t = self.trainer
        if not (landed.stop_requested if t.env.enabled else self.stop.requested):
            return False
        t.stop_signal = self.stop.received or signal.SIGTERM
        return True

    def _done(self, ahead: int = 0) -> bool:
        """Whether training is over once the ``ahead`` steps launched and not yet landed are."""
        t = self.trainer
        max_epochs = t.cfg.max_epochs
        steps = t.progress.step + ahead
        return steps >= t.total_steps or (max_epochs is not None and t.stream.epoch >= max_epochs)

    def _end_word(self, step: int) -> str:
        """Where ``step`` stands against the run's end: "past" it where a lowered max_steps put it before, else "at"."""
        return "past" if step > self.trainer.total_steps else "at"

    def _after_step(self, result: StepResult, seconds: float) -> None:
        t = self.trainer
        p = t.progress
        p.step += 1
        p.tokens += t.global_tokens_per_step
        record = {
            "step": p.step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": t.global_tokens_per_step / max(seconds, 1e-9),
            "effective_batch": t.cfg.effective_batch_size * t.env.world_size,
            "epoch": t.stream.epoch,
        }
        if t.device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(t.device) / 2**30
        if result.applied:
            p.applied_steps += 1
            p.nonfinite_in_row = 0
        else:  # with fp16, a finite loss with infinite gradients is the scaler's overflow
            record["skipped"] = p.skip(overflow=t.precision.scaler.is_enabled() and math.isfinite(result.loss))
            self.log.info(
                f"step {p.step} skipped ({record['skipped']}: loss {result.loss}, grad norm {result.grad_norm}); "
                f"{p.nonfinite_in_row} in a row, {p.overflow_skips} overflow and {p.nonfinite_skips} non-finite in all"
            )
        self.log.step(record)

    def _due(self, step: int) -> tuple[bool, bool, bool]:
        """Whether validation, a checkpoint and emptying the CUDA cache are due after ``step``."""
        t = self.trainer
        cfg = t.cfg
        empty_cache = bool(cfg.empty_cache_steps) and t.device.type == "cuda" and step % cfg.empty_cache_steps == 0
        return step % cfg.val_freq == 0, step % cfg.checkpoint_freq == 0, empty_cache

    def _periodic(self) -> None:
        validate, checkpoint, empty_cache = self._due(self.trainer.progress.step)
        if validate:
            self._evaluate()
        if checkpoint:
            self._checkpoint()
        if empty_cache:
            torch.cuda.empty_cache()  # returns cached blocks to the driver, for other processes or fragmentation

    def _finish(self) -> Path | None:
        t = self.trainer
        step = t.progress.step
        if t.stop_signal is not None:
            if self._last_ckpt_step != step:  # not again at a step just saved, or the one resumed from
                self._checkpoint()
            # resume=never would start over, and resume=PATH go back to PATH: only auto resumes from here.
            again = "the same command" if t.cfg.resume == "auto" else "the same command with resume=auto"
            self.log.info(
                f"stopped by {signal.Signals(t.stop_signal).name} after step {step}; saved {self.last_ckpt} "
                f"({again} resumes the run)"
            )
            return self.last_ckpt
        if self._idle:
            self.log.info(
                f"nothing to train: the run is already at step {step}, {self._end_word(step)} its end (max_steps "
                f"{json.dumps(t.cfg.max_steps)}, max_epochs {json.dumps(t.cfg.max_epochs)}); raise them to train "
                "further"
            )
            return self.last_ckpt
        if self._last_eval_step != step:
            self._evaluate()
            if not t.env.enabled and self.stop.received is not None:  # it came during that validation
                t.stop_signal = self.stop.received
                return self._finish()
        if self._last_ckpt_step != step:
            self._checkpoint()
        val = t.progress.val_loss
        val_text = "n/a (no validation data)" if val is None else f"{val:.4f}"
        self.log.info(f"done at step {step}: val loss {val_text} vs unigram entropy {t.unigram_entropy:.4f} nats")
        return self.last_ckpt

    def _evaluate(self) -> None:
        t = self.trainer
        # One process stops validating at a signal; ranks go on together, as they agree on a signal only
        # through a step's results.
        val = t.evaluate(stopped=lambda: not t.env.enabled and self.stop.requested)
        self._last_eval_step = t.progress.step
        if val is None:
            return
        t.progress.val_loss, t.progress.val_step = val, t.progress.step
        self.log.evaluation(t.progress.step, val)

    def _checkpoint(self) -> None:
        t = self.trainer
        step = t.progress.step
        folder = save_snapshot(t.save_dir, t.cfg, t.tokenizer, t.state)
        if t.env.is_main:
            if self._stale:  # the run this one replaces goes now: its checkpoints, then its files
                remove_stale(self._stale, folder)  # before pruning, which keeps the highest step numbers
                self._write_run_files()
                self.log.settle()
            prune_checkpoints(t.save_dir, t.cfg.keep_checkpoints)
        self.last_ckpt, self._last_ckpt_step = folder, step
        self.log.info(f"step {step}: checkpoint {folder}")
        fault_point("after_ckpt", step)


__all__ = ["TrainingDiverged", "TrainingRun"]
