"""A checkpoint's manifest: what verify accepts, and a clear error for anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from muomni.errors import CheckpointError
from muomni.training.checkpoint import MANIFEST, verify, write_checkpoint


def _checkpoint(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "run", 3, {"notes.json": lambda p: p.write_text('{"a": 1}\n')})


def test_a_written_checkpoint_verifies(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    assert set(verify(ckpt)["files"]) == {"notes.json"}


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        "[1, 2]",
        '{"step": 3}',
        '{"step": 3, "files": [["notes.json", 8]]}',
        '{"step": 3, "files": {"notes.json": {"sha256": "00"}}}',
        '{"step": 3, "files": {"notes.json": {"bytes": "9", "sha256": "00"}}}',
        '{"step": 3, "files": {"notes.json": {"bytes": 9}}}',
        '{"step": 3, "files": {"notes.json": 9}}',
    ],
)
def test_a_manifest_of_another_shape_is_corrupt_not_a_crash(tmp_path: Path, manifest: str) -> None:
    ckpt = _checkpoint(tmp_path)
    (ckpt / MANIFEST).write_text(manifest)
    with pytest.raises(CheckpointError, match=f"has a corrupt {MANIFEST}"):
        verify(ckpt)


def test_a_file_that_changed_after_writing_fails_its_checksum(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    (ckpt / "notes.json").write_text('{"a": 2}\n')
    with pytest.raises(CheckpointError, match="notes.json is missing or does not match its checksum"):
        verify(ckpt)
    assert json.loads((ckpt / MANIFEST).read_text())["step"] == 3
