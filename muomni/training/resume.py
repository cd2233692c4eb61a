"""Which checkpoint a run resumes from, what it may change on the way, and what it replaces.

Resume policy (``resume``): ``auto`` continues from the run folder's newest complete checkpoint (broken
ones are skipped with a warning) or starts fresh when there is none; ``never`` starts fresh; a path
resumes from that checkpoint (or run folder). A checkpoint whose config differs in a key that fixes the
model's shape or the data order is refused, and so is another folder's checkpoint for a ``save_dir`` that
holds a run of its own. Checkpoints in ``save_dir`` newer than the starting point belong to an abandoned
run: they are deleted when this run writes its first checkpoint (not before, so a run that dies at once
loses nothing), and the run says so when it starts. What a checkpoint holds and how it is restored:
:mod:`muomni.training.snapshot`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from muomni.config import Config
from muomni.errors import CheckpointError
from muomni.paths import HF_PREFIX
from muomni.training.checkpoint import latest_checkpoint, list_checkpoints, resolve_checkpoint


def check_global_batch(old: Config, old_world: int, new: Config, new_world: int, ckpt: Path) -> None:
    """Refuse a resume whose steps would see other windows: the global batch, ``batch_size x accumulation x
    processes``, must stay the same. How it is split may change (fewer windows a micro-batch to fit a smaller
    device, or other processes).

    Raises:
        CheckpointError: naming both batches and the way out.
    """
    was, now = old.effective_batch_size * old_world, new.effective_batch_size * new_world
    if was == now:
        return
    kind, old_procs, new_procs = "batch", "", ""
    if old_world > 1 or new_world > 1:
        kind, old_procs, new_procs = "global batch", f" x {old_world} processes", f" x {new_world}"
    raise CheckpointError(
        f"cannot resume from {ckpt}: its {kind} was {was} windows ({old.batch_size} x "
        f"{old.gradient_accumulation_steps} accumulation{old_procs}) and is {now} now "
        f"({new.batch_size} x {new.gradient_accumulation_steps}{new_procs}); set batch_size or "
        "gradient_accumulation_steps so they match, or resume=never to start over"
    )


def find_resume(cfg: Config, announce: bool = True) -> Path | None:
    """The checkpoint to resume from under ``cfg.resume``, or None to start fresh.

    A run folder holds one run. Resuming a checkpoint of another folder into one that already holds a run
    would replace that run (its newer checkpoints deleted, its log cut), so it is refused; starting over
    (``resume=never``) or going back to an earlier checkpoint of the folder's own run is allowed, and said
    (``announce``: :func:`warn_replaced`; the trainer says it itself, once nothing else can stop the run).

    Raises:
        CheckpointError: a missing or broken ``resume`` path, or another run's checkpoint for a run folder
            that holds a run of its own.
    """
    own = list_checkpoints(cfg.save_dir)
    if cfg.resume == "never":
        ckpt = None
    elif cfg.resume == "auto":
        ckpt = latest_checkpoint(cfg.save_dir)  # warns of each broken one it skips
        if ckpt is None and own:  # starting over would delete a long run for one hand-edited file
            raise CheckpointError(
                f"no checkpoint of {cfg.save_dir} is complete (see the warnings above); mend one and resume=PATH "
                "it, or resume=never to start over (they are deleted when that run writes its first checkpoint)"
            )
    else:
        ckpt = _resume_path(cfg, own)
    steps = {p.resolve(): _step_of(p) for p in own}
    start = 0 if ckpt is None else steps.get(ckpt.resolve())  # None: not one of this folder's (it has none)
    if announce and start is not None:
        warn_replaced(cfg, ckpt, start)
    return ckpt


def _resume_path(cfg: Config, own: list[Path]) -> Path:
    """The checkpoint ``resume=PATH`` names (see :func:`find_resume`). A Hugging Face model is no run to
    resume: that advice ("give it as hf:") was refused in turn, so both point to ``init_from``."""
    model = cfg.resume.removeprefix(HF_PREFIX)
    start = f"a run starts from a Hugging Face model with init_from={HF_PREFIX}{model}"
    if cfg.resume.startswith(HF_PREFIX):
        raise CheckpointError(f"config key 'resume': resume continues a muomni run; {start}")
    try:
        ckpt = resolve_checkpoint(cfg.resume, hf_folder=f"resume continues a muomni run; {start}")
    except CheckpointError as e:
        raise CheckpointError(f"config key 'resume': {e}")
    if own and not ckpt.resolve().is_relative_to(Path(cfg.save_dir).resolve()):
        raise CheckpointError(
            f"save_dir {cfg.save_dir} already holds a run (checkpoints up to step {_step_of(own[-1])}), and "
            f"resume={cfg.resume} is another run's: give an empty save_dir to continue that run there, or "
            f"resume=auto to continue the run in {cfg.save_dir}"
        )
    return ckpt


def warn_replaced(cfg: Config, resumed: Path | None, step: int) -> None:
    """Say which checkpoints of ``cfg.save_dir`` a run starting at ``step`` (from ``resumed``, or from scratch)
    replaces: those :func:`stale_checkpoints` finds, which go when it writes its first checkpoint. Broken
    ones that ``resume=auto`` skipped are among them, named, as a user's file may be in one."""
    stale = stale_checkpoints(cfg.save_dir, step)
    if not stale:
        return
    where, newest = cfg.save_dir, _step_of(stale[-1])
    go, keep = "go when this run writes its first", "to keep them, stop now and move them away"
    if resumed is None and cfg.resume == "never":
        said = f"resume=never: this run replaces the one in {where} (its checkpoints up to step {newest} {go})"
    elif cfg.resume == "auto":  # those after the newest complete one are all broken
        names = ", ".join(p.name for p in stale)
        said = f"resuming from step {step}: the broken checkpoints of {where} after it ({names}) {go}; {keep}"
    else:
        said = f"resuming from step {step}: the checkpoints of {where} after it (up to step {newest}) {go}"
    warnings.warn(said, stacklevel=2)


def _step_of(ckpt: Path) -> int:
    """The step of a checkpoint folder (``step_00000012`` -> 12)."""
    return int(ckpt.name.split("_")[1])


def check_compatible(old: Config, new: Config, ckpt: Path, keys: list[str]) -> None:
    """Refuse to resume when a key that fixes the model or the data order changed.

    Raises:
        CheckpointError: naming the key, both values, and the way out.
    """
    for key in keys:
        was, now = getattr(old, key), getattr(new, key)
        if was != now:
            raise CheckpointError(
                f"cannot resume from {ckpt}: config key '{key}' was {json.dumps(was)} there and is "
                f"{json.dumps(now)} now; give {key}={json.dumps(was)} to resume it, or use a new save_dir (or "
                "resume=never) to start over"
            )


def stale_checkpoints(save_dir: str | Path, start_step: int) -> list[Path]:
    """Checkpoints of ``save_dir`` newer than the step this run starts from (an abandoned run's)."""
    return [p for p in list_checkpoints(save_dir) if _step_of(p) > start_step]


def remove_stale(stale: list[Path], keep: Path) -> None:
    """Delete the abandoned checkpoints, except ``keep`` (just written over one of them)."""
    for path in stale:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)
    stale.clear()


__all__ = [
    "check_compatible",
    "check_global_batch",
    "find_resume",
    "remove_stale",
    "stale_checkpoints",
    "warn_replaced",
]
