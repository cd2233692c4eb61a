"""A row's peak memory on a CPU is its own: not an earlier row's in the same process, nor the peak of the
process that started it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from muomni.bench.hardware import peak_memory_bytes, reset_peak_memory

CPU = torch.device("cpu")
MIB = 2**20
pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak resident memory")


def _touch(mib: int) -> torch.Tensor:
    return torch.ones(mib * MIB // 4)  # written, so resident


def test_a_reset_forgets_an_earlier_peak() -> None:
    big = _touch(300)
    before = peak_memory_bytes(CPU)
    del big
    reset_peak_memory(CPU)
    after = peak_memory_bytes(CPU)
    assert before - after > 200 * MIB  # the 300 MiB that went are no longer the peak
    small = _touch(50)
    assert peak_memory_bytes(CPU) - after > 40 * MIB  # and a new peak is seen
    del small


def test_a_child_process_does_not_report_its_parents_peak() -> None:
    """getrusage's ru_maxrss is kept across exec: the bench's rows reported the parent's peak (its tokenizer
    training) as their own."""
    big = _touch(400)
    parent = peak_memory_bytes(CPU)
    del big
    code = "import torch, muomni.bench.hardware as h; print(h.peak_memory_bytes(torch.device('cpu')))"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert parent - child > 300 * MIB, (parent, child)
