"""distributed=ddp or fsdp outside torchrun: one process, and the user is told so."""

from __future__ import annotations

import warnings

import pytest

from muomni import distributed


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_distributed_mode_without_torchrun_warns_and_runs_as_one_process(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.warns(UserWarning, match=f"distributed={mode} but not started by torchrun"):
        env = distributed.setup(mode, "cpu")
    assert not env.enabled and env.world_size == 1


@pytest.mark.parametrize(("mode", "world"), [("none", None), ("ddp", "1")])
def test_no_warning_without_a_mode_or_under_a_one_process_torchrun(
    monkeypatch: pytest.MonkeyPatch, mode: str, world: str | None
) -> None:
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = distributed.setup(mode, "cpu")
    assert not env.enabled
