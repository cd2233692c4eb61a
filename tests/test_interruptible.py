"""call_interruptibly: a Ctrl-C that the called code would swallow still ends the wait at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from muomni.interruptible import call_interruptibly

WORK_S = 3.0


def _swallowing_work(seconds: float, interrupts: int = 0) -> int:
    """Busy for ``seconds`` and until it has dropped ``interrupts`` KeyboardInterrupts, dropping every one
    (as Hugging Face tokenizers' BPE training drops a Ctrl-C it checks for); returns how many it dropped."""
    end, dropped = time.monotonic() + seconds, 0
    while True:
        try:  # the test as well as the sleep: a Ctrl-C may land anywhere in the loop
            if time.monotonic() >= end and dropped >= interrupts:
                return dropped
            time.sleep(0.01)
        except KeyboardInterrupt:
            dropped += 1


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in this test whatever the runner set (a worker may ignore SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_in(seconds: float) -> None:
    threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT)).start()


def test_the_value_and_the_exception_of_the_call_come_back() -> None:
    assert call_interruptibly(divmod, 7, 2) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        call_interruptibly(divmod, 1, 0)


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill with SIGINT ends the process on Windows")
def test_a_ctrl_c_the_call_would_swallow_ends_the_wait_at_once(python_sigint: None) -> None:
    _ctrl_c_in(0.2)  # the reference: called in the main thread, the work loses the Ctrl-C and goes on
    assert _swallowing_work(1.0, interrupts=1) == 1

    start = time.monotonic()
    _ctrl_c_in(0.2)
    with pytest.raises(KeyboardInterrupt):
        call_interruptibly(_swallowing_work, WORK_S)
    assert time.monotonic() - start < WORK_S / 2


def test_from_another_thread_the_call_runs_in_that_thread() -> None:
    ran_in: list[str] = []

    def record() -> None:
        ran_in.append(threading.current_thread().name)

    thread = threading.Thread(target=call_interruptibly, args=(record,), name="caller")
    thread.start()
    thread.join()
    assert ran_in == ["caller"]
