"""CPU offload keeps what is learned: the same weights as without it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from muomni.config import load_config
from muomni.models import Thinker
from muomni.training.offload import CPUOffloadOptimizer, activation_offload


def _model() -> Thinker:
    torch.manual_seed(0)
    cfg = load_config(None, {"vocab_size": 300, "n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "ctx_len": 16})
    return Thinker(cfg)


def _train(model: Thinker, optimizer, offload_activations: bool, steps: int = 3) -> None:  # noqa: ANN001
    forward_context = activation_offload(offload_activations, torch.device("cpu"))
    data = torch.randint(0, 300, (steps, 4, 17), generator=torch.Generator().manual_seed(1))
    for batch in data:
        with forward_context():
            loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_optimizer_offload_gives_the_same_weights() -> None:
    plain, offloaded = _model(), _model()
    kwargs = {"lr": 1e-2, "weight_decay": 0.1, "foreach": False}
    _train(plain, torch.optim.AdamW(plain.parameters(), **kwargs), False)
    wrapped = CPUOffloadOptimizer([{"params": list(offloaded.parameters())}], torch.optim.AdamW, **kwargs)
    _train(offloaded, wrapped, False)
    for (name, a), b in zip(plain.state_dict().items(), offloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p is not q for p, q in zip(wrapped.host_params, offloaded.parameters()))


def test_optimizer_offload_state_dict_round_trip() -> None:
    model = _model()
    opt = CPUOffloadOptimizer([{"params": list(model.parameters())}], torch.optim.AdamW, lr=1e-2)
    _train(model, opt, False, steps=1)
    state = opt.state_dict()
    again = CPUOffloadOptimizer([{"params": list(model.parameters())}], torch.optim.AdamW, lr=1e-2)
    again.load_state_dict(state)
    assert torch.equal(again.state[again.host_params[0]]["exp_avg"], opt.state[opt.host_params[0]]["exp_avg"])


def test_activation_offload_gives_the_same_weights() -> None:
    plain, offloaded = _model(), _model()
    _train(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2), False)
    _train(offloaded, torch.optim.AdamW(offloaded.parameters(), lr=1e-2), True)
    for (name, a), b in zip(plain.state_dict().items(), offloaded.state_dict().values()):
        assert torch.equal(a, b), name
