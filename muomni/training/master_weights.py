"""bf16 weights for the linear layers, trained from fp32 master weights (``weight_dtype=bf16``).

Under bf16 autocast each linear layer casts its fp32 weight to bf16 in every forward pass, and its bf16
weight gradient back to fp32 in every backward pass: on the small preset, 168 kernels a step (about 0.5 ms
of a 27 ms step on an H200), and more between them. With ``weight_dtype=bf16`` each :class:`Linear` holds
the bf16 copy (``compute_weight``) that the forward and backward use, its gradient stays bf16, and the
optimizer reads that gradient, updates the fp32 weight and its moments, and writes the new bf16 copy in the
same pass (:class:`MasterWeightAdamW`). The fp32 weight stays the model's parameter (the master copy): it is
what checkpoints hold, what evaluation and export read, and what a resume restores, so a run's files are
the same with and without the key.

The numbers are autocast's: the copy is the fp32 weight rounded to bf16, which is what autocast's cast
gives, and the bf16 gradient is what autocast's cast back would have widened to fp32 exactly. What reads
the gradients (the global norm, the update) computes in fp32 as before. With gradient accumulation the
micro-batches' bf16 gradients are summed into fp32 ones (:meth:`MasterWeightAdamW.accumulate`), as
autocast's fp32 gradients sum. This is the mixed-precision recipe of Micikevicius et al. 2018
(https://arxiv.org/abs/1710.03740) for bf16, as Megatron-LM and FSDP2's ``param_dtype`` keep it.

Embeddings, norm gains and biases stay fp32 parameters (autocast does not cast them either): the optimizer
steps them from their fp32 gradients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from muomni.models.layers import Linear

# Devices where the Triton kernels step the parameters; tests add "cpu", where Triton's interpreter runs them.
TRITON_DEVICES = {"cuda"}


def _copied_linears(model: nn.Module) -> list[Linear]:
    """Every :class:`Linear` of ``model`` whose weight trains and is not tied to an embedding."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [
        m
        for m in model.modules()
        if isinstance(m, Linear) and m.weight.requires_grad and id(m.weight) not in embeddings
    ]


def copied_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights :func:`attach_compute_weights` gives bf16 copies."""
    return [m.weight for m in _copied_linears(model)]


def attach_compute_weights(model: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """Give every :class:`Linear` of ``model`` whose weight trains (and is not tied to an embedding) a bf16
    copy of its weight to compute with; returns {fp32 weight: bf16 copy}."""
    copies: dict[nn.Parameter, torch.Tensor] = {}
    for module in _copied_linears(model):
        copy = module.weight.detach().to(torch.bfloat16).requires_grad_(True)
        module.compute_weight = copy
        copies[module.weight] = copy
    return copies


class CopyGradientMean:
    """Under DDP, the mean over ranks of the bf16 copies' gradients (``weight_dtype=bf16`` under torchrun).

    DDP reduces the gradients of the parameters it holds, and a copy is not a parameter: the fp32 weights
    with copies are left out of DDP (:func:`muomni.distributed.wrap`'s ``ignored``), and their gradients are
    reduced here, after the backward pass of an accumulation window's last micro-batch. Each weight's
    gradient (its copy's, or the fp32 sum :meth:`MasterWeightAdamW.accumulate` made) is written into one
    fp32 buffer, which one all-reduce averages; the weights' ``.grad`` are then views of it. One collective
    and one copy a step: one all-reduce per weight, launched from gradient hooks, ran the tiny preset on 2
    H200s at 0.50 and 0.75 of fp32 weights' speed (not profiled; under CUDA graphs a hook fires only after
    its graph's backward pass, so little could overlap), where this gains 3-4% on the small preset. In fp32, as FSDP's
    gradients are reduced here, so 2 ranks of one micro-batch each give what 1 process accumulating both
    gives.
    """

    def __init__(self, compute_weights: dict[nn.Parameter, torch.Tensor], world_size: int) -> None:
        self.weights = list(compute_weights)
        self.copies = [compute_weights[p] for p in self.weights]
        self.world_size = world_size
        sizes = [p.numel() for p in self.weights]
        self.flat = torch.empty(sum(sizes), dtype=torch.float32, device=self.weights[0].device)
        self.views = [v.view_as(p) for v, p in zip(self.flat.split(sizes), self.weights, strict=True)]

    @torch.no_grad()
    def reduce(self) -> None:
        """Average the weights' gradients over the ranks (after the window's last backward pass)."""
        sources = []
        for p, copy, view in zip(self.weights, self.copies, self.views, strict=True):
            grad = p.grad if p.grad is not None else copy.grad
            sources.append(grad if grad is not None else torch.zeros_like(view))  # unused here: still 0
            p.grad, copy.grad = view, None
        torch._foreach_copy_(self.views, sources)
        self.flat.div_(self.world_size)
        dist.all_reduce(self.flat, op=dist.ReduceOp.SUM)


class MasterWeightAdamW(torch.optim.Optimizer):
    """AdamW whose matrices compute in bf16 copies (:func:`attach_compute_weights`) and train in fp32.

    The parameters (``param_groups``) are the model's fp32 ones, and the state is AdamW's (``step``,
    ``exp_avg``, ``exp_avg_sq`` per parameter, fp32), so state dicts and checkpoints have PyTorch AdamW's
    layout. A parameter with a bf16 copy takes its gradient from the copy (or from its own ``.grad``, where
    :meth:`accumulate` summed the micro-batches), and the step writes the copy.

    Like PyTorch's fused optimizers it reads ``found_inf`` (skip the step, on the device) and ``grad_scale``
    (divide every gradient: how the trainer clips), when set as attributes. On CUDA one Triton kernel steps
    each group (:mod:`~muomni.training.triton_adamw`); elsewhere the same arithmetic runs as PyTorch ops.
    One step count is shared by all parameters: they are always stepped together.
    """

    _step_supports_amp_scaling = True  # found_inf / grad_scale are read on the device

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        compute_weights: dict[nn.Parameter, torch.Tensor],
        lr: float,
        betas: tuple[float, float],
        eps: float,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0})
        self.compute_weights = compute_weights
        first = self.param_groups[0]["params"][0]
        self.device = first.device
        self.triton = self.device.type in TRITON_DEVICES  # else the update runs as PyTorch ops
        self.defaults["fused"] = self.triton
        self._steps = torch.zeros((), dtype=torch.float32, device=self.device)
        self._tables: dict[tuple, Any] = {}  # the Triton kernels' tables, by class of parameters
        # This step's gradient tables, by class: built by grad_norm, taken by step (one build and one copy to
        # the device a step, not two). Dropped by step and zero_grad, so no step's gradients outlive it here.
        self._grad_lists: dict[tuple, tuple[list[int], Any]] = {}

    # --- gradients ---
    def grad_tensors(self) -> list[torch.Tensor]:
        """The tensors holding this step's gradients: a parameter's bf16 copy, or the parameter itself."""
        return [self._grad_holder(p) for g in self.param_groups for p in g["params"]]

    def _grad_holder(self, p: torch.Tensor) -> torch.Tensor:
        copy = self.compute_weights.get(p)
        return p if copy is None or p.grad is not None else copy

    @torch.no_grad()
    def accumulate(self) -> None:
        """Sum the bf16 copies' gradients into their parameters' fp32 ``.grad`` (gradient accumulation:
        fp32 sums, as autocast's gradients sum) and clear the copies' gradients."""
        for p, copy in self.compute_weights.items():
            if copy.grad is None:
                continue
            if p.grad is None:
                p.grad = copy.grad.float()
            else:
                p.grad.add_(copy.grad)
            copy.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._grad_lists.clear()
        for copy in self.compute_weights.values():
            if set_to_none:
                copy.grad = None
            elif copy.grad is not None:
                copy.grad.zero_()

    @torch.no_grad()
    def refresh_compute_weights(self) -> None:
        """Write every bf16 copy from its fp32 weight (after the weights were loaded or changed)."""
        for p, copy in self.compute_weights.items():
            copy.copy_(p)

    # --- state ---
    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if not state:
            self._tables.clear()  # new moments: new addresses
            state["step"] = self._steps
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = [s["step"] for s in self.state.values() if "step" in s]
        if saved:  # one count for all: the saved ones are equal, being stepped together
            self._steps = torch.as_tensor(saved[0], dtype=torch.float32).to(self.device).clone()
        for state in self.state.values():
            state["step"] = self._steps
        self._tables.clear()  # the loaded moments are new tensors
        self.refresh_compute_weights()  # the model's fp32 weights were loaded before the optimizer

    # --- the step ---
    def _classes(self) -> list[tuple[tuple, dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]:
        """The parameters with a gradient this step, split by group and by kind (where the gradient is,
        whether there is a copy to write): one kernel launch each. Items: (key, group, params, holders)."""
        classes: dict[tuple, tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]] = {}
        for index, group in enumerate(self.param_groups):
            for p in group["params"]:
                holder = self._grad_holder(p)
                if holder.grad is not None:
                    key = (index, holder is not p, p in self.compute_weights)
                    _, params, holders = classes.setdefault(key, (group, [], []))
                    params.append(p)
                    holders.append(holder)
        return [(key, *value) for key, value in classes.items()]

    def _blocks(self, key: tuple, params: list[torch.Tensor]):  # noqa: ANN202 (triton_adamw.Blocks)
        from muomni.training.triton_adamw import block_tables

        blocks = ("blocks", key, *map(id, params))
        if blocks not in self._tables:
            self._tables[blocks] = block_tables([p.numel() for p in params], self.device)
        return self._tables[blocks]

    def _grad_list(self, key: tuple, grads: list[torch.Tensor], keep: bool):  # noqa: ANN202 (TensorList)
        """The :class:`~muomni.training.triton_adamw.TensorList` of this class's gradients: the one grad_norm
        built for these very tensors, else a new one (kept for step when ``keep``)."""
        from muomni.training.triton_adamw import tensor_list

        addresses = [g.data_ptr() for g in grads]
        built = self._grad_lists.pop(key, None)
        if built is None or built[0] != addresses or built[1].base is not grads[0]:
            built = (addresses, tensor_list(grads, self.device))
        if keep:
            self._grad_lists[key] = built
        return built[1]

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of this step's gradients (fp32, 0-d), as ``clip_grad_norm_`` computes it of
        their fp32 versions. On CUDA one kernel a class (:func:`~muomni.training.triton_adamw.sum_of_squares`)."""
        if not self.triton:
            from muomni.training.features import total_grad_norm

            return total_grad_norm(self.grad_tensors())
        from muomni.training.triton_adamw import sum_of_squares

        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for key, _, params, holders in self._classes():
            grads = self._grad_list(key, [h.grad for h in holders], keep=True)
            total += sum_of_squares(self._blocks(key, params), grads)
        return total.sqrt()

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("MasterWeightAdamW does not take a closure")
        found_inf = getattr(self, "found_inf", None)
        divisor = getattr(self, "grad_scale", None)
        skip = found_inf if found_inf is not None else torch.zeros((), device=self.device)
        if not self.triton and bool(skip):
            return
        classes = self._classes()
        # Every class's state before any table is built: a new state clears the tables of all classes.
        states_of = {key: [self._init_state(p) for p in params] for key, _, params, _ in classes}
        for key, group, params, holders in classes:
            states = states_of[key]
            grads = [h.grad for h in holders]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            copies = [self.compute_weights[p] for p in params] if key[2] else None
            if self.triton:
                self._launch(key, group, params, grads, exp_avgs, exp_avg_sqs, copies, skip, divisor)
                continue
            for j, p in enumerate(params):
                copy = copies[j] if copies is not None else None
                _adamw_reference(p, grads[j], exp_avgs[j], exp_avg_sqs[j], copy, self._steps, divisor, group)
        self._grad_lists.clear()
        self._steps.add_(1 - skip.float().clamp(max=1))  # a skipped step does not count

    def _launch(
        self,
        key: tuple,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
        exp_avg_sqs: list[torch.Tensor],
        copies: list[torch.Tensor] | None,
        skip: torch.Tensor,
        divisor: torch.Tensor | None,
    ) -> None:
        from muomni.training.triton_adamw import adamw_step, tensor_list

        # Weights, moments and copies keep their storage from step to step: their tables are built once,
        # and again after new state (the first step, a load_state_dict) clears them.
        lists = ("lists", key, *map(id, params))
        if lists not in self._tables:
            built = [tensor_list(ts, self.device) for ts in (params, exp_avgs, exp_avg_sqs)]
            self._tables[lists] = (*built, tensor_list(copies, self.device) if copies is not None else None)
        weights, moments1, moments2, copy_list = self._tables[lists]
        adamw_step(
            self._blocks(key, params),
            weights,
            self._grad_list(key, grads, keep=False),  # new gradients every step
            moments1,
            moments2,
            copy_list,
            self._steps,
            skip,
            divisor.float() if divisor is not None else None,
            lr=float(group["lr"]),
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )


def _adamw_reference(
    p: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    copy: torch.Tensor | None,
    steps: torch.Tensor,
    divisor: torch.Tensor | None,
    group: dict[str, Any],
) -> None:
    """One parameter's update in PyTorch ops: the Triton kernel's arithmetic (see triton_adamw)."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    g = grad.float()
    if divisor is not None:
        g = g / divisor.float()
    t = float(steps) + 1
    bias_correction1 = 1 - beta1**t
    bias_correction2_sqrt = (1 - beta2**t) ** 0.5
    p.mul_(1 - lr * wd)
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(eps)
    p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
    if copy is not None:
        copy.copy_(p)


__all__ = ["CopyGradientMean", "MasterWeightAdamW", "attach_compute_weights", "copied_weights"]
