"""The chat's line reader: ``input()``'s lines, and a Ctrl-C that interrupts the wait wherever it lands."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from muomni.inference.line_input import LineReader, line_reader

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="select() on a pipe")


@pytest.fixture
def pipe() -> Iterator[tuple[LineReader, int]]:
    """A reader of a pipe's reading end, and the pipe's writing end."""
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as stream:
        yield LineReader(stream, out=io.StringIO()), write_end
    with contextlib.suppress(OSError):  # closed by the test
        os.close(write_end)


def test_lines_come_one_at_a_time_whatever_the_chunks(pipe: tuple[LineReader, int]) -> None:
    reader, write_end = pipe
    os.write(write_end, b"hello\nsecond\r\nthi")  # two lines and a half in one chunk
    assert reader("> ") == "hello" and reader("> ") == "second"
    os.write(write_end, "rd caf\u00e9\n".encode() + b"bad \xff byte\nlast without an end")
    os.close(write_end)
    assert reader("> ") == "third caf\u00e9"
    assert reader("> ") == "bad \udcff byte"  # passed on as a lone surrogate: the chat refuses that line
    assert reader("> ") == "last without an end"
    with pytest.raises(EOFError):
        reader("> ")
    assert reader.out is not None and reader.out.getvalue() == "> " * 6  # type: ignore[attr-defined]


def test_a_sigint_taken_by_another_thread_interrupts_the_wait_at_once(pipe: tuple[LineReader, int]) -> None:
    """A process's SIGINT may land on any thread (CUDA's, OpenMP's); Python runs the handler in the main
    thread only, when it next runs Python code. Blocked in a read, as input() is, it waited for the next line:
    here the line that comes after 5 s. The reader's wait ends at the signal."""
    reader, write_end = pipe
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not whatever the test runner set
    late_line = threading.Timer(5.0, os.write, (write_end, b"late\n"))
    elsewhere = threading.Timer(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGINT))
    try:
        late_line.start()
        elsewhere.start()
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            reader("> ")
        waited = time.monotonic() - start
    finally:
        late_line.cancel()
        elsewhere.join()
        signal.signal(signal.SIGINT, previous)
    assert waited < 3.0, f"the Ctrl-C waited {waited:.1f} s for the next line"
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup descriptor was handed back


def test_a_stream_without_a_descriptor_is_read_with_input() -> None:
    assert line_reader(io.StringIO("hello\n")) is input
    with open(os.devnull, encoding="utf-8") as stream:
        assert isinstance(line_reader(stream), LineReader)
