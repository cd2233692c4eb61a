"""Every benchmark test gets its own cache folder, so nothing touches ~/.cache/muomni; ``no_work`` for the
tests of what is checked before any work."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MUOMNI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _work_started(*args: object, **kwargs: object) -> None:
    raise AssertionError("work started before the options were checked")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first step of each command's work (building a model, tokenizing, measuring a row or a plan
    candidate), replaced by a failure: the options' checks must come first."""
    from muomni.bench import infer, train
    from muomni.training import plan, trainer

    monkeypatch.setattr(train, "_warm_data_cache", _work_started)
    monkeypatch.setattr(train, "run_spec", _work_started)
    monkeypatch.setattr(infer, "_model", _work_started)
    monkeypatch.setattr(trainer, "Trainer", _work_started)
    monkeypatch.setattr(plan, "_warm_data_cache", _work_started)
    monkeypatch.setattr(plan, "search", _work_started)
