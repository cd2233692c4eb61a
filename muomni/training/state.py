"""Training state as safetensors + JSON, never pickle: optimizer state and random-number generators.

Optimizer: ``optimizer.state_dict()["state"]`` maps a parameter index to named values. Tensors go to
``optimizer.safetensors`` as ``state.<index>.<name>``; everything else (a ``None`` momentum buffer, a
float) goes to JSON. The hyperparameters (``param_groups``) are saved for reference but on restore the
current optimizer's groups are kept: they come from the config, which may change on resume (``lr``), and
from the device (``fused``). Restoring reproduces every state tensor bit for bit.

RNG: Python's ``random`` and NumPy's legacy global state are JSON lists; torch's CPU and CUDA generator
states are uint8 tensors in ``rng.safetensors``.

A file can pass its checksum and still hold the wrong state (copied over another and rehashed, or written
by other code): restoring checks what it unpacks, and :func:`unpacking` turns what still fails into one
line that names the checkpoint and the file.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muomni.errors import CheckpointError

RNG_FILE = "rng.safetensors"


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors (for safetensors) and a JSON-able rest.

    Returns:
        ``(tensors, meta)``; ``meta`` holds ``scalars`` (index -> name -> value) and ``param_groups``.
    """
    return optimizer_state_to_files(optimizer.state_dict())


def optimizer_state_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`optimizer_to_files` of a state dict in ``optimizer.state_dict()``'s layout (FSDP gathers one)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in sd["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what :func:`optimizer_to_files` wrote into ``optimizer`` (built for the same model).

    Raises:
        CheckpointError: the saved state is for a different set of parameters.
    """
    # load_state_dict casts state tensors to each parameter's device and dtype ("step" stays as saved).
    optimizer.load_state_dict(optimizer_state_from_files(optimizer, tensors, meta))


def optimizer_state_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> dict[str, Any]:
    """The state dict (``optimizer.state_dict()``'s layout, with the current ``param_groups``) of saved files.

    Raises:
        CheckpointError: the saved state is for a different set of parameters.
    """
    current = optimizer.state_dict()
    saved_sizes = [len(g["params"]) for g in meta["param_groups"]]
    sizes = [len(g["params"]) for g in current["param_groups"]]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"the checkpoint's optimizer has parameter groups of sizes {saved_sizes} but this model's are "
            f"{sizes}; the model or optimizer changed; use a new save_dir, or resume=never to start over"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]  # numbered as in state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, name = _state_key(key, len(params))
        # A moment or momentum buffer has its parameter's shape; "step" is a scalar. Caught here, a tensor of
        # another model is named; loaded, it would fail in the first step, deep inside the optimizer.
        if tensor.dim() > 0 and tensor.shape != params[index].shape:
            raise ValueError(f"{key} has shape {list(tensor.shape)}, its parameter {list(params[index].shape)}")
        state.setdefault(index, {})[name] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": current["param_groups"]}


def _state_key(key: str, n_params: int) -> tuple[int, str]:
    """``state.<index>.<name>`` -> ``(index, name)``; ValueError for another name or an index out of range."""
    parts = key.split(".", 2)
    if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or not parts[2]:
        raise ValueError(f"tensor {key!r} is not named state.<index>.<name>")
    index, name = int(parts[1]), parts[2]
    if index >= n_params:
        raise ValueError(f"tensor {key!r} is for parameter {index} but this model's optimizer has {n_params}")
    return index, name


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Every global RNG state: ``(json_part, tensors)``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py = {"version": version, "state": list(internal), "gauss_next": gauss}
    npy = {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return {"python": py, "numpy": npy}, tensors


def checked_rng_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` when they hold a CPU generator state like this torch's; else ValueError saying what they hold."""
    cpu, like = tensors.get("torch_cpu"), torch.get_rng_state()
    if cpu is None or cpu.dtype != like.dtype or cpu.shape != like.shape:
        held = ", ".join(list(tensors)[:3]) or "no tensors"
        raise ValueError(f"no torch_cpu generator state of {like.numel()} bytes; it holds {held}")
    return tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` returned. CUDA states are restored when the device count matches."""
    checked_rng_tensors(tensors)
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = meta["numpy"]
    keys = np.asarray(npy["keys"], dtype=np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def unpacking(ckpt: Path, name: str, what: str) -> Iterator[None]:
    """Restore ``what`` from the checkpoint's file ``name``; the errors of state that does not fit (a missing
    key, a wrong shape or type) become a CheckpointError naming both. Wrap only the unpacking: anything else
    that raised one of these types would be a bug, and must keep its traceback."""
    try:
        yield
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        text = f"missing {e}" if isinstance(e, KeyError) else str(e).strip()
        why = text.splitlines()[0] if text else type(e).__name__
        raise CheckpointError(f"checkpoint {ckpt}: {name} does not hold {what} ({why}); resume from another one")


__all__ = [
    "RNG_FILE",
    "checked_rng_tensors",
    "optimizer_from_files",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "optimizer_to_files",
    "rng_state",
    "set_rng_state",
    "unpacking",
]
