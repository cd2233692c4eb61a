"""Rank, world size and model wrapping for torchrun; on one process every function here does nothing.

``distributed=ddp`` wraps the model in DistributedDataParallel and syncs gradients only on the last
micro-step of an accumulation window. ``distributed=fsdp`` shards each block and the root with FSDP2
(``fully_shard``), in the mixed precision the run uses. Checkpoints gather full state dicts through
``torch.distributed.checkpoint.state_dict`` and are written by rank 0 as safetensors, so a run saved with
N ranks resumes with M and nothing is pickled (DCP's own file format pickles its metadata).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from muomni.errors import ConfigError

# A collective that waits longer than this means a peer died: fail instead of hanging forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("MUOMNI_DIST_TIMEOUT_S", "300")))


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands. The default is the single process."""

    mode: str = "none"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def setup(mode: str, device_type: str) -> DistEnv:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU), or stay a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistEnv(mode=mode)
    if mode == "none":
        raise ConfigError(f"started by torchrun with {world} processes but distributed is none; set distributed=ddp")
    env = DistEnv(mode, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return env


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _fully_shard():  # noqa: ANN202
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard  # torch 2.5
    return fully_shard, MixedPrecisionPolicy


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """DDP or FSDP2 around ``model`` (already on ``device``); the model itself on one process."""
    if not env.enabled:
        return model
    if env.mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    fully_shard, policy = _fully_shard()
    mp = policy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else policy()
    for block in model.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


@contextmanager
def gradient_sync(model: nn.Module, env: DistEnv, sync: bool) -> Iterator[None]:
    """Reduce gradients across ranks only when ``sync`` (the last micro-step of an accumulation window)."""
    if not env.enabled or sync:
        if env.mode == "fsdp" and env.enabled:
            model.set_requires_gradient_sync(True)
        yield
    elif env.mode == "ddp":
        with model.no_sync():
            yield
    else:
        model.set_requires_gradient_sync(False)
        yield


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (in place); unchanged on one process."""
    if env.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The Thinker inside a DDP wrapper or a compiled module."""
    inner = getattr(model, "_orig_mod", model)
    return getattr(inner, "module", inner)


def full_model_state(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state on the CPU; on FSDP every rank must call it."""
    if env.mode != "fsdp" or not env.enabled:
        return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor], env: DistEnv) -> None:
    """Load a full state dict into a plain, DDP or FSDP model (each rank keeps its shard).

    A checkpoint of a tied model has no ``lm_head.weight`` (it is the embedding); it is filled in here so the
    load stays strict and a missing tensor is an error, not a silently random weight.
    """
    if "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    if env.mode != "fsdp" or not env.enabled:
        unwrap(model).load_state_dict(state, strict=True)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))
