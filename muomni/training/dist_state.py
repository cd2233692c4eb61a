"""Full (unsharded) model and optimizer state, whatever the run's distribution: the checkpoint's view.

A checkpoint always holds what one process would write: the Thinker's state dict and the *index-keyed*
layout of a plain ``optimizer.state_dict()`` (parameters numbered in ``param_groups`` order). With FSDP the
shards are gathered through ``torch.distributed.checkpoint.state_dict`` (``full_state_dict=True``,
``cpu_offload=True``: only rank 0 receives them, on the CPU) and the optimizer's FQN-keyed state is renumbered;
loading goes the other way on every rank, each keeping its shard. So a run saved with N ranks resumes with M,
and ``muomni export`` / ``generate`` read it like any checkpoint. DCP's own file format is not used: it
pickles its metadata, and checkpoints here are pickle-free. Without FSDP (one process, DDP) these are the
plain state dicts: every rank holds the full state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from muomni.distributed import DistEnv


def _options():  # noqa: ANN202
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The Thinker's whole state dict; with FSDP every rank must call it and only rank 0 gets the tensors."""
    if not env.sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor], env: DistEnv) -> None:
    """Load a complete state dict (tied ``lm_head`` already filled in) into a plain, DDP'd or sharded model."""
    if not env.sharded:
        model.load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _names_by_group(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The parameter names (FQNs) of each optimizer group, in the optimizer's order."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv) -> dict[str, Any]:
    """``optimizer.state_dict()``'s layout (state keyed by parameter index), gathered whole under FSDP."""
    if not env.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    gathered = get_optimizer_state_dict(model, optimizer, options=_options())  # keyed by FQN; empty off rank 0
    groups = _names_by_group(model, optimizer)
    index = {name: i for i, name in enumerate(n for names in groups for n in names)}
    state = {index[name]: values for name, values in gathered.get("state", {}).items()}
    param_groups, start = [], 0
    for group, names in zip(optimizer.param_groups, groups):
        hyper = {k: v for k, v in group.items() if k != "params"}
        param_groups.append({**hyper, "params": list(range(start, start + len(names)))})
        start += len(names)
    return {"state": state, "param_groups": param_groups}


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], env: DistEnv
) -> None:
    """Load :func:`full_optimizer_state`'s layout; under FSDP each rank keeps its shard of every tensor."""
    if not env.sharded:
        optimizer.load_state_dict(state)
        return
    if not state["state"]:  # SGD without momentum keeps no tensors, and torch's loader needs one to find the device
        for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    groups = _names_by_group(model, optimizer)
    flat = [n for names in groups for n in names]
    by_name = {flat[int(i)]: values for i, values in state["state"].items()}
    param_groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": names}
        for group, names in zip(state["param_groups"], groups)
    ]
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, {"state": by_name, "param_groups": param_groups}, options=options)


__all__ = ["full_model_state", "full_optimizer_state", "load_full_model_state", "load_full_optimizer_state"]
