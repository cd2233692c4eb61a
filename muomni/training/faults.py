"""Stopping cleanly on SIGTERM / Ctrl-C, and the test hook that simulates a crash at a named point.

:class:`StopSignals` turns the first SIGTERM or SIGINT into a request the training loop honours after the
current optimizer step (it then writes a checkpoint and returns). A second Ctrl-C interrupts at once.

:func:`fault_point` is a test hook: with ``MUOMNI_TEST_KILL_AT="<point>:<step>[:<SIGNAL>]"`` in the
environment the process sends itself ``SIGNAL`` (default SIGKILL) when it reaches ``<point>`` at
``<step>``. The points are ``mid_step`` (after the first micro-batch's backward), ``step_end`` (after the
optimizer step, before any checkpoint), ``ckpt_write`` (inside a checkpoint write, after the model file),
``ckpt_replace`` (a checkpoint replacing one of the same step, after the first rename), ``after_ckpt``,
and ``export_write`` (``muomni export``, after the model file; its step is 0). Without the variable it
does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

KILL_ENV = "MUOMNI_TEST_KILL_AT"


def fault_point(point: str, step: int) -> None:
    """Test hook: signal this process here when ``MUOMNI_TEST_KILL_AT`` names this point and step."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    at, _, sig = rest.partition(":")
    if name == point and at == str(step):
        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))


class StopSignals:
    """Context manager: while active, SIGTERM and SIGINT request a stop instead of killing the process.

    Args:
        announce: say on stderr, as the first signal arrives, that the run will stop (one rank of several).

    Attributes:
        received: the first signal number received, or None.
    """

    def __init__(self, announce: bool = True) -> None:
        self.received: int | None = None
        self.announce = announce
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            # A second Ctrl-C should not wait for the step and the checkpoint.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.announce:  # said at once: the step, or a long validation, may take a while
                name = signal.Signals(signum).name
                line = f"muomni: {name}: stopping after this step, with a checkpoint (Ctrl-C again: at once)\n"
                # os.write, not print: a handler that prints while the interrupted code was printing to the
                # same buffered stream fails with "reentrant call".
                os.write(2, line.encode())

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


__all__ = ["KILL_ENV", "StopSignals", "fault_point"]
