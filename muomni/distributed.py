"""Rank, world size, model wrapping and collectives for torchrun; on one process every function here does nothing.

``distributed=ddp`` wraps the loss module (:class:`~muomni.training.loss.LossModule`, which holds the whole
Thinker) in DistributedDataParallel and syncs gradients only on the last micro-step of an accumulation
window. ``distributed=fsdp`` shards each block and the root with FSDP2 (``fully_shard``), in the mixed
precision the run uses. Full state dicts for checkpoints are gathered in :mod:`muomni.training.dist_state`.

A rank that fails must not leave the others waiting forever: collectives time out after
``MUOMNI_DIST_TIMEOUT_S`` seconds (default 300), and a rank that raises destroys its process group on the
way out, which breaks its peers' pending collectives at once (gloo) or after the timeout (NCCL); torchrun
also stops the other workers when one exits with an error or is killed.

Several nodes: torchrun's usual rendezvous arguments (``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``...).
``save_dir`` and ``MUOMNI_CACHE`` must then be on a filesystem every node sees: rank 0 writes checkpoints
and every rank reads them on resume; rank 0 trains the tokenizer and tokenizes the corpus, then the other
ranks read both from the cache (a node with its own, empty cache would train its own tokenizer).
"""

from __future__ import annotations

import datetime
import os
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import signature

import torch
import torch.distributed as dist
from torch import nn

from muomni.errors import ConfigError, UserError

TIMEOUT_ENV = "MUOMNI_DIST_TIMEOUT_S"
# Test hook: "<rank>:<step>[:<SIGNAL>]" makes that rank raise (or send itself SIGNAL) after that step.
FAIL_ENV = "MUOMNI_TEST_FAIL_RANK"


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

    @property
    def sharded(self) -> bool:
        """FSDP with more than one process: parameters are DTensor shards."""
        return self.enabled and self.mode == "fsdp"


SINGLE = DistEnv()


def collective_timeout() -> datetime.timedelta:
    """A collective that waits longer than this means a peer died: fail instead of hanging forever."""
    raw = os.environ.get(TIMEOUT_ENV, "300")
    try:
        return datetime.timedelta(seconds=float(raw))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None


# The oldest torch with which several CPU processes (gloo) learn what one process learns, per wrapper and
# compilation: two ranks against one process, 4 steps (tests/distributed). FSDP2: torch 2.5.1 stops at its
# first forward ("FSDP requires CUDA for streams"), 2.6.0 at its first backward (its CPU stream stub has no
# record_event), 2.7.1 and 2.8.0 run but end 6.5e-3 away (relative, the first block's output projection);
# 2.9.1 and 2.13 match. Compiled DDP: 2.5.1 and 2.6.0 end 6.3e-2 away (the embedding); 2.7.1 to 2.13 match.
# Eager DDP matched on every one of them. (2.7.0 and 2.9.0 not tried; on GPUs, NCCL: see the README.)
CPU_MIN_TORCH = {("fsdp", False): (2, 9), ("fsdp", True): (2, 9), ("ddp", True): (2, 7)}


def cpu_unsupported(mode: str, compiled: bool, version: str = torch.__version__) -> str | None:
    """Why this torch's ``mode`` (ddp or fsdp), compiled or not, cannot train on CPUs (None: it can)."""
    least = CPU_MIN_TORCH.get((mode, compiled))
    if least is None or torch.torch_version.TorchVersion(version) >= least:
        return None
    what = f"distributed={mode}" + (" with use_compile=true" if compiled else "")
    fix = "use distributed=ddp" if mode == "fsdp" else "set use_compile=false"
    return f"{what} on CPUs needs torch {'.'.join(map(str, least))} or newer (this is {version}); {fix}"


def setup(mode: str, device_type: str, compiled: bool = False) -> DistEnv:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU), or stay a single process.

    Raises:
        ConfigError: torchrun started several processes and ``distributed`` is none, or this torch cannot
            train with ``mode`` (``compiled``: with use_compile) on CPUs (see ``CPU_MIN_TORCH``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        if mode != "none" and "WORLD_SIZE" not in os.environ:  # torchrun sets it, even for one process
            warnings.warn(
                f"distributed={mode} but not started by torchrun: training as one process "
                f"(for N: torchrun --nproc_per_node N -m muomni train ...)",
                stacklevel=2,
            )
        return DistEnv(mode=mode)
    if mode == "none":
        raise ConfigError(
            f"config key 'distributed': started by torchrun with {world} processes but distributed is none; "
            "set distributed=ddp or distributed=fsdp"
        )
    if device_type == "cpu" and (reason := cpu_unsupported(mode, compiled)):
        raise ConfigError(f"config key 'distributed': {reason}")
    env = DistEnv(mode, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if device_type == "cuda":
        if env.local_rank >= (gpus := torch.cuda.device_count()):
            raise ConfigError(
                f"torchrun started local rank {env.local_rank} but this machine has {gpus} GPU(s): one process "
                f"per GPU; use --nproc_per_node {gpus}, or device=cpu"
            )
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=collective_timeout())
    return env


def teardown(env: DistEnv, ok: bool) -> None:
    """Leave the process group; also after an error (``ok`` False), which ends the peers' pending collectives.

    After success the ranks first meet at a barrier, so none exits while a peer still reads from it.
    """
    if env.enabled and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _fsdp_api():  # noqa: ANN202
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # torch >= 2.6
    except ImportError:
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard  # torch 2.5
    return fully_shard, MixedPrecisionPolicy


def wrap(
    module: nn.Module,
    blocks: list[nn.Module],
    env: DistEnv,
    device: torch.device,
    param_dtype: torch.dtype | None,
    find_unused: bool = False,
    ignored: list[nn.Parameter] | None = None,
) -> nn.Module:
    """DDP or FSDP2 around ``module`` (already on ``device``); ``module`` itself on one process.

    Args:
        module: the loss module: every parameter the loss uses must be inside it.
        blocks: the transformer blocks, sharded one by one with FSDP (gathered and freed one at a time).
        param_dtype: the autocast dtype (FSDP then gathers parameters in it and reduces gradients in fp32).
        find_unused: DDP must look for parameters without a gradient (MoE experts no token chose).
        ignored: parameters DDP leaves alone: the fp32 weights of ``weight_dtype=bf16``, whose gradients land
            on their bf16 copies and are reduced by
            :class:`~muomni.training.master_weights.CopyGradientMean`. They are broadcast from rank 0 here,
            as DDP broadcasts the parameters it holds.
    """
    if not env.enabled:
        return module
    if env.mode == "ddp":
        if ignored:
            ids_ignored = {id(p) for p in ignored}
            names = [name for name, p in module.named_parameters() if id(p) in ids_ignored]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)
            for p in ignored:
                dist.broadcast(p.detach(), src=0)
        ids = [device.index] if device.type == "cuda" else None
        # The buffers (RoPE tables, padding mask) are the same on every rank: no broadcast at each forward.
        # (The argument was renamed in recent torch; the old name still works there, with a warning.)
        ddp = nn.parallel.DistributedDataParallel
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in signature(ddp).parameters else "broadcast_buffers"
        return ddp(module, device_ids=ids, find_unused_parameters=find_unused, **{no_sync: False})
    fully_shard, policy = _fsdp_api()
    mp = policy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else policy()
    # The mesh of the training device: fully_shard's default mesh is CUDA's wherever CUDA is, so a CPU run
    # on a GPU machine would put rank i on GPU i (and fail where there are fewer GPUs than ranks).
    from torch.distributed.device_mesh import init_device_mesh

    shard = {"mesh": init_device_mesh(device.type, (env.world_size,)), "mp_policy": mp}
    for block in blocks:
        fully_shard(block, **shard)
    # The root holds the embedding, final norm and head: unsharded for the whole loss, chunked CE included.
    fully_shard(module, **shard)
    return module


@contextmanager
def gradient_sync(module: nn.Module, env: DistEnv, sync: bool) -> Iterator[None]:
    """Reduce gradients across ranks only when ``sync`` (the last micro-step of an accumulation window).

    Forward and backward of the micro-step both run inside this context.
    """
    if not env.enabled:
        yield
    elif env.mode == "ddp" and not sync:
        with module.no_sync():  # type: ignore[operator]
            yield
    elif env.mode == "fsdp":
        module.set_requires_gradient_sync(sync)  # type: ignore[operator]
        yield
    else:
        yield


def mean_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean over ranks (a non-finite value anywhere makes it non-finite everywhere); unchanged on one."""
    if not env.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (a stop signal, a failed probe)."""
    if not env.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


@contextmanager
def main_first(env: DistEnv, device: torch.device, what: str) -> Iterator[None]:
    """Run the body on rank 0, then on the others (which then read what rank 0 cached).

    When rank 0 fails, the others stop with one line instead of waiting at the barrier.
    """
    if not env.enabled:
        yield
        return
    if env.is_main:
        failed = True
        try:
            yield
            failed = False
        finally:
            any_rank(failed, env, device)  # releases the others, telling them how it went
        return
    if any_rank(False, env, device):
        raise UserError(f"rank 0 failed during {what}; see its error above")
    yield


def inject_failure(env: DistEnv, step: int) -> None:
    """Test hook: ``MUOMNI_TEST_FAIL_RANK=<rank>:<step>[:<SIGNAL>]`` fails that rank after that step."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    rank, at, sig = (spec.split(":") + [""])[:3]
    if rank != str(env.rank) or at != str(step):
        return
    if sig:  # SIGKILL ends here; SIGTERM / SIGINT go to the stop handler, as torchrun's forwarded ones would
        os.kill(os.getpid(), getattr(signal, sig))
        return
    raise RuntimeError(f"injected failure on rank {env.rank} at step {step} ({FAIL_ENV})")


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP's global gradient norm) as a plain tensor; any other tensor unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


__all__ = [
    "FAIL_ENV",
    "SINGLE",
    "TIMEOUT_ENV",
    "DistEnv",
    "any_rank",
    "barrier",
    "collective_timeout",
    "full_tensor",
    "gradient_sync",
    "inject_failure",
    "main_first",
    "mean_over_ranks",
    "setup",
    "teardown",
    "wrap",
]
