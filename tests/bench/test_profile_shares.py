"""``profile``'s shares with gradient checkpointing: attention and MLP are labelled in the forward pass only.

With checkpointing the blocks' forward runs again inside the backward pass (recomputation). Labelled there
too, attention and MLP were counted twice: once as themselves, once inside ``backward`` (the debug preset's
shares added up to 127.8%).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.profiler import profile, record_function

from muomni.bench.profile import labelled
from muomni.cli import main
from muomni.config import load_config
from muomni.models import Thinker, checkpoint_blocks

LABELS = ("attention", "mlp")


def _tiny_checkpointed(reentrant: bool) -> Thinker:
    cfg = {"vocab_size": 300, "n_layers": 2, "d_model": 64, "n_heads": 4, "kv_groups": 2, "d_ff": 96, "ctx_len": 48}
    torch.manual_seed(0)
    return checkpoint_blocks(Thinker(load_config(None, cfg)), reentrant=reentrant)


def _inside(inner: object, outer: object) -> bool:
    a, b = inner.time_range, outer.time_range  # type: ignore[attr-defined]
    return outer.thread == inner.thread and b.start <= a.start and a.end <= b.end  # type: ignore[attr-defined]


@pytest.mark.parametrize("reentrant", [False, True])
def test_recomputed_blocks_are_not_labelled_inside_backward(reentrant: bool) -> None:
    # Both of PyTorch's kinds of checkpointing recompute inside the backward pass (the reentrant kind in a
    # backward of its own, the other from its unpack hooks); neither recomputation may be labelled.
    model = _tiny_checkpointed(reentrant)
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with labelled(model), profile() as prof:
        logits = model(tokens)
        with record_function("backward"):
            logits.float().square().mean().backward()
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU]
    backward = next(e for e in events if e.name == "backward")
    ranges = [e for e in events if e.name in LABELS]
    assert sorted(e.name for e in ranges) == sorted(LABELS * 2)  # one of each per block: the forward's
    assert not [e.name for e in ranges if _inside(e, backward)]
    # The recomputation itself still ran, and gave gradients.
    assert all(p.grad is not None for p in model.model.layers.parameters())


def test_labels_are_removed_and_a_later_backward_is_unaffected() -> None:
    model = _tiny_checkpointed(reentrant=True)
    with labelled(model):
        pass
    tokens = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with profile() as prof:
        model(tokens).float().mean().backward()
    assert not [e for e in prof.events() if e.name in (*LABELS, "backbone")]


def test_checkpointed_profile_shares_add_up_to_at_most_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The regions are disjoint parts of the step (attention and MLP inside the forward), so their shares
    # add up to at most the whole; 0.1% a share for the printout's rounding.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"def f_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)))
    args = ["profile", "--config", "debug", "--steps", "2", "--out", str(tmp_path / "prof")]
    code = main([*args, f"train_text={corpus}", "device=cpu", "use_gradient_checkpointing=true"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("share of step time: "))
    shares = {name: float(pct) for name, pct in re.findall(r"(\w+) ([\d.]+)%", line)}
    assert set(shares) == {"attention", "mlp", "loss", "backward", "optimizer", "data"}, line
    assert shares["attention"] > 0 and shares["mlp"] > 0, line
    assert sum(shares.values()) <= 100.0 + 0.1 * len(shares), line
