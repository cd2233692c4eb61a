"""Config input that used to crash: absurd sizes, deep nesting, NUL characters, keys that are not strings, a
folder named like a preset; and the command line's last resort for running out of memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import muomni
from muomni import cli
from muomni.cli import main
from muomni.config import load_config
from muomni.errors import ConfigError

# The bounds, written out: the test checks the numbers, not that the code agrees with itself.
LIMITS = {
    "vocab_size": 2**20,
    "d_model": 2**16,
    "d_ff": 2**18,
    "n_layers": 1024,
    "ctx_len": 2**20,
    "batch_size": 2**20,
}


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("muomni: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("key", "value"), [("vocab_size", 2_000_000_000), ("d_model", 262_144), ("batch_size", 100_000_000)]
)
def test_an_absurd_size_is_refused_at_load_naming_the_key_and_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: int
) -> None:
    """These once ended in a Rust allocation abort (exit 134), torch's and numpy's out-of-memory errors."""
    code = main(["train", "--config", "debug", f"{key}={value}", f"save_dir={tmp_path / 'run'}"])
    line = _one_line_error(capsys, code)
    assert f"config key '{key}'" in line and f"must be at most {LIMITS[key]:,}" in line
    assert not (tmp_path / "run").exists()


def test_the_limits_leave_room_for_real_models() -> None:
    # Gemma's vocabulary, Llama 3 405B's widths and depth, Qwen2.5-1M's context.
    real = {"vocab_size": 262_144, "d_model": 16_384, "n_heads": 128, "d_ff": 53_248, "n_layers": 126}
    cfg = load_config("debug", {**real, "ctx_len": 1_010_000, "batch_size": 4096})
    assert cfg.vocab_size == 262_144 and cfg.ctx_len == 1_010_000
    for key, limit in LIMITS.items():
        assert getattr(load_config("debug", {"d_model": 64, "n_heads": 4, key: limit}), key) == limit
        with pytest.raises(ConfigError, match=f"config key '{key}': {2 * limit} is invalid: must be at most"):
            load_config("debug", {key: 2 * limit})


def test_a_deeply_nested_config_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    line = _one_line_error(capsys, main(["train", "--config", str(path)]))
    assert f"config file {path} nests too deeply" in line
    with pytest.raises(ConfigError, match="override of 'betas' nests too deeply"):
        load_config("debug", ["betas=" + "[" * 100_000])


@pytest.mark.parametrize("key", ["save_dir", "train_text", "resume", "init_from"])
def test_a_nul_character_in_a_path_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    path = tmp_path / "nul.json"
    path.write_text(json.dumps({"save_dir": str(tmp_path / "run"), key: "a\u0000b"}), encoding="utf-8")
    line = _one_line_error(capsys, main(["train", "--config", str(path)]))
    assert f"config key '{key}'" in line and "a path cannot hold a NUL character" in line
    with pytest.raises(ConfigError, match="holds a NUL character"):
        load_config("debug\0.json")


def test_a_folder_named_like_a_preset_does_not_hide_the_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "debug").mkdir()
    assert load_config("debug") == load_config(muomni.config.preset_path("debug"))
    (tmp_path / "tiny").write_text(json.dumps({"batch_size": 3}), encoding="utf-8")
    assert load_config("tiny").batch_size == 3  # a file is a config file, whatever its name


def test_bad_overrides_and_keys_from_python_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"overrides must be a dict .* or a list .*, not str 'batch_size=4'"):
        load_config("debug", overrides="batch_size=4")
    assert load_config("debug", overrides=("batch_size=4",)).batch_size == 4
    with pytest.raises(ConfigError, match="override 4 must be a 'key=value' string"):
        load_config("debug", overrides=[4])
    with pytest.raises(ConfigError, match="config keys must be strings, not 1"):
        load_config({1: 2})
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_sise' \(did you mean 'batch_size'\?\)"):
        muomni.Config(batch_sise=4)
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        muomni.Config(bogus=1)
    assert muomni.Config(batch_size=4).batch_size == 4


def _raising(error: BaseException):  # noqa: ANN202
    def run(args: object) -> int:
        raise error

    return lambda command: run


def _numpy_out_of_memory() -> BaseException:
    try:
        np.empty((2**30, 2**20), dtype=np.int64)  # 8 PiB: refused at once
    except MemoryError as e:
        return e
    raise AssertionError("numpy allocated 8 PiB")


def _torch_cpu_out_of_memory() -> BaseException:
    try:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB
    except RuntimeError as e:
        return e
    raise AssertionError("torch allocated 1 PiB")


@pytest.mark.parametrize(
    ("make", "first_line"),
    [
        (_numpy_out_of_memory, "Unable to allocate 8.00 PiB"),
        (_torch_cpu_out_of_memory, "DefaultCPUAllocator: can't allocate memory"),
        (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nmore"), "CUDA out of"),
    ],
)
def test_running_out_of_memory_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    make,
    first_line: str,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(cli, "_resolve", _raising(make()))
    line = _one_line_error(capsys, main(["train"]))
    assert line.startswith("muomni: error: not enough memory for this job (") and first_line in line
    assert line.endswith("lower batch_size, ctx_len or the model's size")


def test_other_runtime_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_resolve", _raising(RuntimeError("an internal bug")))
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["train"])
