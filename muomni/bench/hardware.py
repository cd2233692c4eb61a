"""What the machine is and how much memory a row used (what a GPU can do at best: :mod:`muomni.bench.peaks`)."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import shlex
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from muomni.bench.peaks import device_peak


def muomni_version(source: Path | None = None) -> str:
    """The package's version and, run from a git checkout, its commit (``+changes``: files differ from it).

    ``source``: the folder above the package (where muomni is not installed as a copy, the checkout's top).
    """
    from muomni import __version__

    source = (source or Path(__file__).resolve().parents[2]).resolve()
    git = ["git", "-C", str(source)]
    try:
        found = subprocess.run([*git, "rev-parse", "--show-toplevel", "--short", "HEAD"], capture_output=True,
                               text=True, timeout=5).stdout.split()  # fmt: skip
        # An installed copy may sit inside some other repository (a virtual environment in a project's folder).
        if len(found) != 2 or Path(found[0]).resolve() != source:
            return __version__
        changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, timeout=5).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git here
        return __version__
    return f"{__version__} (commit {found[1]}{'+changes' if changed else ''})"


def describe(device: torch.device) -> dict[str, object]:
    """Hardware and software versions to print and save with every number."""
    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "command": shlex.join(["muomni", *sys.argv[1:]]) if sys.argv else "",  # quoted: it can be run again
        "muomni": muomni_version(),
        "muomni_path": str(Path(__file__).resolve().parents[1]),  # which copy ran: an A/B of two copies says so
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
        peak = device_peak(device)
        info["gpu_peak"] = asdict(peak) if peak else None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


# Linux's record of this process's memory: its peak resident set (VmHWM), which writing "5" to clear_refs
# lowers to the current resident set. Unlike getrusage's ru_maxrss, VmHWM starts afresh at exec, so a row's
# process does not report the peak of the process that started it (the bench's parent, which may have
# trained the tokenizer first).
_PROC_STATUS, _PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator peak; on Linux, the process's peak resident memory (from what is
    resident now), so that rows measured one after another in one process each get their own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux, or a kernel before 4.0: the peak stays the process's
        _PROC_CLEAR_REFS.write_text("5")


def _proc_status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM") in bytes, or None where Linux does not say."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_memory_bytes() -> int | None:
    """This process's resident memory now (Linux's VmRSS), or None where /proc does not say."""
    return _proc_status_bytes("VmRSS")


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak since the last reset. CPU: the peak resident memory of this process since
    the last reset (on Linux; elsewhere since it started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
