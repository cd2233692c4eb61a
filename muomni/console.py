"""Standard output whose reader may go away (``muomni train | head``, a pager quit early, a lost ``tee``).

Writing to a closed pipe raises BrokenPipeError. A training run's results are its checkpoints and a
benchmark's are its files, not its lines on stdout, so a run that died of it lost its steps since the last
checkpoint. Under :func:`closed_stdout_dropped`, the first write that finds the reader gone points the
stream at the null device instead, and the job goes on without its output (Python's documented way:
https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class DroppingStdout:
    """A text stream that writes through to ``stream`` until its reader is gone, then drops what follows.

    Not an ``io.TextIOBase``: that class's own ``encoding`` and ``errors`` (None) would hide the stream's.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = False

    def write(self, text: str) -> int:
        if not self.dropped:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.dropped:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        """Point the stream's descriptor at the null device: what is still buffered, and Python's flush at
        exit, then go nowhere instead of failing again."""
        self.dropped = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # a stream without a descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)

    def isatty(self) -> bool:
        return not self.dropped and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def __getattr__(self, name: str) -> Any:  # encoding, errors, buffer, ...: the stream's own
        return getattr(self._stream, name)


@contextlib.contextmanager
def closed_stdout_dropped() -> Iterator[DroppingStdout]:
    """``sys.stdout`` as a :class:`DroppingStdout` for the duration (restored after, for the caller's)."""
    previous = sys.stdout
    sys.stdout = wrapped = DroppingStdout(previous)
    try:
        yield wrapped
    finally:
        sys.stdout = previous


__all__ = ["DroppingStdout", "closed_stdout_dropped"]
