"""Every benchmark test gets its own cache folder, so nothing touches ~/.cache/muomni."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MUOMNI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
