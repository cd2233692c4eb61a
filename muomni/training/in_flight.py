"""Steps in flight: an optimizer step whose work is queued on the device, and the one a loop has launched
and not landed yet.

The host reads one step's loss and gradient norm (:class:`StepResult`) while the device may still run that
step's update and the next step (see :meth:`muomni.training.loop.TrainingRun._run_steps`). The training loop,
the bench's row worker and ``muomni profile`` land their steps through :class:`InFlight`, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch


class StepResult(NamedTuple):
    """What the host reads of one optimizer step."""

    loss: float
    grad_norm: float  # before clipping
    lr: float
    applied: bool  # False: the loss or the norm was not finite, and the weights were left as they were
    stop_requested: bool  # a rank had a stop signal when the step was launched (every rank reads alike)


class LaunchedStep:
    """An optimizer step whose work is queued on the device; :meth:`result` waits for its loss and gradient
    norm (not for its update, which the device may still be running) and reads them, once."""

    def __init__(self, number: int, lr: float, read: Callable[[], list[float]], launch_seconds: float = 0.0) -> None:
        self.number, self.lr = number, lr  # number: 1 for the run's first step
        self._read = read
        self._result: StepResult | None = None
        # The host's time to launch it: where the device runs work as it is launched (a CPU), the step's time.
        self.launch_seconds = launch_seconds

    def result(self) -> StepResult:
        if self._result is None:
            loss, norm, stop = self._read()
            applied = math.isfinite(loss) and math.isfinite(norm)
            self._result = StepResult(loss, norm, self.lr, applied, stop > 0)
        return self._result


class InFlight:
    """The step a loop has launched and not landed yet: at most one (see
    :meth:`muomni.training.loop.TrainingRun._run_steps`).

    :meth:`push` takes the step just launched and lands the one launched before it, so the host lands step
    n while the device runs step n+1; with ``overlap`` off the new step lands at once as well. The training
    loop, the bench's row worker and ``muomni profile`` land their steps through it, in the same order.
    """

    def __init__(self, land: Callable[[LaunchedStep], object], overlap: bool = True) -> None:
        self._land, self.overlap = land, overlap
        self.step: LaunchedStep | None = None

    @property
    def ahead(self) -> int:
        """Steps launched and not landed (0 or 1): the next launch's schedule takes them as applied."""
        return int(self.step is not None)

    def push(self, launched: LaunchedStep) -> None:
        previous, self.step = self.step, launched
        if previous is not None:
            self._land(previous)
        if not self.overlap:
            self.drain()

    def drain(self) -> None:
        """Land the step in flight, if there is one."""
        if self.step is not None:
            step, self.step = self.step, None
            self._land(step)


def copy_to_host(values: torch.Tensor) -> Callable[[], list]:
    """Start copying a small tensor to the host; the returned function waits for the copy and reads the values
    the tensor held at this call.

    The wait covers the work queued before this call only. ``values.tolist()`` after the optimizer's launch
    would wait for the update too, and the host would prepare the next step (the batch, the graph's
    launch) only then, with the GPU idle meanwhile; this way it does so while the GPU runs the update.
    """
    if values.device.type != "cuda":
        now = values.tolist()  # nothing runs asynchronously to wait for
        return lambda: now
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> list:
        copied.synchronize()
        return host.tolist()

    return read
