"""CPU offload done the right way: activations and optimizer state go to pinned host memory, not the model.

``cpu_offload=activations``: tensors saved for the backward pass are copied to pinned CPU memory as the
forward produces them and brought back when the backward needs them (``torch.autograd.graph.save_on_cpu``).
The GPU then holds one block's activations at a time instead of all of them; the copies cost PCIe time.

``cpu_offload=optimizer``: the optimizer keeps fp32 master weights and its state (AdamW: two moments, 8 bytes
a parameter) on the CPU and steps there. Each step copies the gradients down, steps, and copies the weights
back up. The GPU keeps only weights and gradients. The idea of ZeRO-Offload (Ren et al. 2021,
https://arxiv.org/abs/2101.06840) and torchao's ``CPUOffloadOptimizer``, in a few lines of plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


def activation_offload(enabled: bool, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A factory of contexts for the forward pass: ``save_on_cpu`` when enabled, else a null context."""
    if not enabled:
        return nullcontext
    pin = device.type == "cuda"
    return lambda: torch.autograd.graph.save_on_cpu(pin_memory=pin)


class CPUOffloadOptimizer:
    """Wraps an optimizer class so its master weights and state live on the CPU.

    It exposes what the trainer uses of an optimizer (``param_groups``, ``step``, ``zero_grad``,
    ``state_dict``, ``load_state_dict``); the state dict has the wrapped optimizer's layout, so checkpoints
    look the same with and without offload.
    """

    def __init__(self, param_groups: Iterable[dict[str, Any]], optimizer_cls: type, **kwargs: Any) -> None:
        self.device_params: list[torch.Tensor] = []
        host_groups = []
        for group in param_groups:
            params = list(group["params"])
            self.device_params += params
            pin = params[0].device.type == "cuda" if params else False
            host = [self._host_copy(p, pin) for p in params]
            host_groups.append({**group, "params": host})
        self.host_params = [p for g in host_groups for p in g["params"]]
        self.optimizer = optimizer_cls(host_groups, **kwargs)

    @staticmethod
    def _host_copy(p: torch.Tensor, pin: bool) -> torch.Tensor:
        host = torch.empty(p.shape, dtype=torch.float32, device="cpu", pin_memory=pin)
        host.copy_(p.detach())
        host.requires_grad_(True)
        host.grad = torch.zeros_like(host, pin_memory=pin)
        return host

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    @torch.no_grad()
    def step(self) -> None:
        """Gradients down, one CPU step, weights up (the upload is asynchronous from pinned memory)."""
        for dev, host in zip(self.device_params, self.host_params):
            if dev.grad is not None:
                host.grad.copy_(dev.grad, non_blocking=True)
        if self.device_params and self.device_params[0].device.type == "cuda":
            torch.cuda.synchronize(self.device_params[0].device)  # the gradient copies must land first
        self.optimizer.step()
        for dev, host in zip(self.device_params, self.host_params):
            dev.copy_(host, non_blocking=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.device_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
        with torch.no_grad():  # the master weights follow the (already loaded) model weights
            for dev, host in zip(self.device_params, self.host_params):
                host.copy_(dev)
