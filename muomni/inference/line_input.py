"""Reading the chat's lines so that Ctrl-C interrupts the wait for one, whichever thread the signal lands on.

A SIGINT sent to a process goes to any one of its threads that does not block it, and the threads that
torch, CUDA and OpenMP start do not block it. Python runs its handler in the main thread only, when that
thread next runs Python code; blocked in ``input()``'s read, it does not until a line comes. So a Ctrl-C at
the chat's prompt could be lost until Enter or the end of input (seen on an H200 machine: the chat, sent
SIGINT at its prompt, ended only when its input was closed). Here the main thread waits in ``select()`` on
standard input and on the wakeup descriptor that Python's C-level handler writes to from whichever thread
took the signal, so the handler (KeyboardInterrupt) runs at once.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable, Iterator
from typing import TextIO


class LineReader:
    """``input()`` for one text stream with a file descriptor (standard input): prints the prompt, returns
    the next line without its end, raises EOFError at the end of input. Bytes that are not text in the
    stream's encoding come through as lone surrogates (``surrogateescape``), which the chat refuses line by
    line rather than failing on them.

    It reads the descriptor itself (a stream's own read-ahead would hide lines from ``select()``), so nothing
    else may read the stream meanwhile.
    """

    def __init__(self, stream: TextIO, out: TextIO | None = None) -> None:
        self.fd = stream.fileno()
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.out = out
        self.pending = b""  # read but not yet returned: the rest of a chunk that held more than one line

    def __call__(self, prompt: str = "") -> str:
        out = self.out or sys.stdout
        out.write(prompt)
        out.flush()
        while b"\n" not in self.pending:
            chunk = self._read()
            if not chunk:  # end of input: a last line without its end, then EOFError
                if not self.pending:
                    raise EOFError
                line, self.pending = self.pending, b""
                return self._text(line)
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return self._text(line)

    def _text(self, line: bytes) -> str:
        return line.decode(self.encoding, errors="surrogateescape").removesuffix("\r")

    def _read(self) -> bytes:
        """The next bytes of the descriptor, waiting for them in a way that a signal interrupts."""
        with _signal_wakeup() as wakeup:
            while True:
                waiting = [self.fd] if wakeup is None else [self.fd, wakeup]
                ready, _, _ = select.select(waiting, [], [])
                if wakeup is not None and wakeup in ready:
                    _drain(wakeup)  # the signal's Python handler runs now, in this thread (KeyboardInterrupt)
                if self.fd in ready:
                    return os.read(self.fd, 1 << 16)


@contextlib.contextmanager
def _signal_wakeup() -> Iterator[int | None]:
    """The reading end of a pipe that Python's C-level signal handler writes a byte to on every signal, for
    the duration; None where that cannot be set up (not the main thread)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)  # set_wakeup_fd requires it: the handler must never block
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # only the main thread may set it; elsewhere Python runs no handler anyway
        os.close(read_end)
        os.close(write_end)
        yield None
        return
    try:
        yield read_end
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def line_reader(stream: TextIO) -> Callable[[str], str]:
    """A :class:`LineReader` of ``stream`` where it works (a descriptor that ``select()`` takes: not on
    Windows, where it takes sockets only), else ``input``."""
    if sys.platform == "win32":
        return input
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # a test's or an embedding's stand-in without a descriptor
        return input
    return LineReader(stream)


__all__ = ["LineReader", "line_reader"]
