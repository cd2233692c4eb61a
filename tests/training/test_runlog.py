"""``metrics.jsonl`` on resume: the records after the resumed step go, whatever else the file holds."""

from __future__ import annotations

import json
from pathlib import Path

from muomni.training.runlog import truncate_metrics


def test_truncate_keeps_the_steps_up_to_the_checkpoint_and_drops_junk_and_bytes_that_are_not_utf8(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [json.dumps({"step": s, "loss": 5.0 - s / 10}) for s in range(1, 6)]
    # A torn last line, a line that is not JSON, and bytes that are not UTF-8 (a resume once failed on them
    # with UnicodeDecodeError, and the run could not go on until the file was mended by hand).
    junk = b"\xff\xfe junk\n" + b"not json\n" + b'{"step": 6, "lo'
    path.write_bytes("".join(r + "\n" for r in records).encode() + junk)
    truncate_metrics(path, last_step=3)
    assert path.read_text(encoding="utf-8").splitlines() == records[:3]
