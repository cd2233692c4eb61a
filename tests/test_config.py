"""Config loading and validation: every bad value fails at load with one line naming the key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from muomni.config import KEYS, PRESETS, Config, load_config, parse_override
from muomni.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"

# (overrides, the key the message must name)
BAD_CONFIGS = [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": -4}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": "eight"}, "batch_size"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": 0}, "lr"),
    ({"lr": 1e10}, "lr"),
    ({"lr": 10.5}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"d_model": 256, "n_heads": 3}, "n_heads"),
    ({"d_model": 96, "n_heads": 32}, "n_heads"),  # head_dim 3: RoPE needs it even
    ({"kv_groups": 3}, "kv_groups"),
    ({"kv_groups": 0}, "kv_groups"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"use_amp": "yes"}, "use_amp"),
    ({"use_flash": 1}, "use_flash"),
    ({"vocab_size": 100}, "vocab_size"),
    ({"n_layers": 0}, "n_layers"),
    ({"ctx_len": 0}, "ctx_len"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": None, "max_epochs": None}, "max_steps"),
    ({"wd": -0.1}, "wd"),
    ({"max_grad_norm": -1}, "max_grad_norm"),
    ({"val_split": 1.0}, "val_split"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"scheduler": "step"}, "scheduler"),
    ({"amp_dtype": "fp8"}, "amp_dtype"),
    ({"cpu_offload": "gpu"}, "cpu_offload"),
    ({"device": "tpu"}, "device"),
    ({"distributed": "horovod"}, "distributed"),
    ({"betas": [0.9]}, "betas"),
    ({"betas": [0.9, 1.5]}, "betas"),
    ({"momentum": 1.0}, "momentum"),
    ({"use_moe": True, "num_experts": 1}, "num_experts"),
    ({"use_moe": True, "num_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"min_lr": 1.0, "lr": 1e-3}, "min_lr"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"gradient_checkpointing_every": 0}, "gradient_checkpointing_every"),
    ({"rope_theta": 0}, "rope_theta"),
    ({"save_dir": ""}, "save_dir"),
    ({"eps": 0}, "eps"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
]


@pytest.mark.parametrize("overrides,key", BAD_CONFIGS)
def test_bad_value_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert f"'{key}'" in message
    assert "\n" not in message


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat'.*did you mean 'lr'|'learning_rat'"):
        load_config(None, {"learning_rat": 1e-3})
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_config(None, {"batch_sise": 8})
    with pytest.raises(ConfigError, match=r"unknown config key 'LR' \(did you mean 'lr'\?\)"):  # keys are lower case
        load_config(None, {"LR": 0.1})
    with pytest.raises(ConfigError, match=r"unknown config key 'Batch_Size' \(did you mean 'batch_size'\?\)"):
        load_config(None, {"Batch_Size": 8})
    with pytest.raises(ConfigError, match="unknown config key 'foo'; the README's configuration table lists every key"):
        load_config(None, {"foo": 1})


def test_a_config_path_that_is_a_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder; give a JSON file or one of debug"):
        load_config(tmp_path)


def test_a_preset_given_as_a_missing_path_is_pointed_to_by_name(tmp_path: Path) -> None:
    """The design's example path "configs/tiny.json" is where a checkout's presets would be; they ship inside the
    package, so the error names the preset to give instead."""
    with pytest.raises(ConfigError, match="does not exist; the built-in preset is named without a path: tiny$"):
        load_config(tmp_path / "configs" / "tiny.json")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(broken)
    listy = tmp_path / "list.json"
    listy.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(listy)


def test_a_key_given_twice_in_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"batch_size": 4, "lr": 0.001, "batch_size": 8}')
    with pytest.raises(ConfigError, match="gives key 'batch_size' twice"):
        load_config(str(path))


def test_a_key_given_twice_on_the_command_line_is_refused_as_in_a_file() -> None:
    with pytest.raises(ConfigError, match="^the command line gives key 'batch_size' twice; keep the one you mean$"):
        load_config("debug", ["batch_size=1", "lr=0.01", "batch_size=2"])


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "notepad.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"batch_size": 3}')
    assert load_config(str(path)).batch_size == 3


def test_a_config_file_in_another_encoding_or_an_empty_name_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"save_dir": "runs/caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 22\); save it as UTF-8$"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="^config file name is empty; give a JSON file or one of debug"):
        load_config("")


def test_a_list_of_the_wrong_length_says_what_it_must_be() -> None:
    with pytest.raises(ConfigError, match=r"'betas': \[0.9\] is not a list of 2 numbers"):
        load_config(None, {"betas": [0.9]})


def test_checkpointing_every_nth_block_without_checkpointing_says_it_does_nothing() -> None:
    with pytest.warns(UserWarning, match="'gradient_checkpointing_every' .2. does nothing without"):
        load_config(None, {"gradient_checkpointing_every": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, {"gradient_checkpointing_every": 2, "use_gradient_checkpointing": True})


def test_muomni_thinker_tiny_loads_unchanged() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(FIXTURES / "thinker_tiny.json")
    assert (cfg.vocab_size, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_groups) == (32000, 4, 256, 4, 2)
    assert cfg.effective_batch_size == 32
    ignored = sorted(str(w.message).split("'")[1] for w in caught)
    assert ignored == ["num_workers", "shuffle_buffer_size"]  # drop_last true is the behaviour anyway
    assert all("not used" in str(w.message) for w in caught)


def test_presets_load_and_shapes() -> None:
    for name in PRESETS:
        load_config(name)
    tiny = load_config("tiny")
    assert (tiny.vocab_size, tiny.d_ff, tiny.ctx_len, tiny.batch_size, tiny.lr) == (32000, 1024, 512, 32, 3e-4)
    small = load_config("small")
    assert (small.d_model, small.n_layers, small.n_heads, small.kv_groups, small.d_ff) == (768, 12, 12, 4, 2048)


def test_overrides_parse_json_values() -> None:
    assert parse_override("lr=1e-3") == ("lr", 1e-3)
    assert parse_override("use_amp=false") == ("use_amp", False)
    assert parse_override("min_lr=null") == ("min_lr", None)
    assert parse_override("save_dir=runs/x") == ("save_dir", "runs/x")
    assert parse_override("betas=[0.9,0.99]") == ("betas", [0.9, 0.99])
    cfg = load_config("debug", ["batch_size=4", "use_flash=false"])
    assert cfg.batch_size == 4 and cfg.use_flash is False
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("batch_size")


def test_round_trip_through_json(tmp_path: Path) -> None:
    cfg = load_config("tiny", {"betas": [0.8, 0.9]})
    cfg.save(tmp_path / "c.json")
    again = load_config(tmp_path / "c.json")
    assert again == cfg
    assert set(json.loads((tmp_path / "c.json").read_text())) == set(KEYS)


def test_derived_values() -> None:
    cfg = Config(use_gqa=False, kv_groups=2)
    assert cfg.n_kv_heads == cfg.n_heads
    assert Config(lr=1e-3).final_lr == pytest.approx(1e-4)
    assert Config(lr=1e-3, min_lr=0.0).final_lr == 0.0


def test_cli_reports_config_error_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "muomni", "train", "batch_size=0", f"save_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "batch_size" in lines[0]
    assert not (tmp_path / "checkpoints").exists()


def _readme_defaults() -> list[tuple[str, str]]:
    """(key, default as written) for every row of the README's table of config keys."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("| key | default |", 1)[1].split("\n\n", 1)[0]
    pairs = []
    for row in table.splitlines()[2:]:
        keys_cell, default_cell = row.split("|")[1:3]
        keys = re.findall(r"`(\w+)`", keys_cell)
        defaults = re.split(r",\s*(?![^\[]*\])", re.sub(r"\(.*?\)", "", default_cell).strip())  # not inside [...]
        assert len(keys) == len(defaults), row
        pairs += zip(keys, (d.strip() for d in defaults))
    return pairs


def _as_written(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_written(v) for v in value) + "]"
    return str(value)


def test_readme_table_gives_the_config_defaults() -> None:
    pairs = _readme_defaults()
    assert len(pairs) > 40
    default = Config()
    for key, written in pairs:
        value = getattr(default, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(written) == value, f"README says {key} = {written}, Config has {value}"
        else:
            assert written == _as_written(value), f"README says {key} = {written}, Config has {value}"
