"""Where a config's keys come from: a JSON file, a preset, or ``key=value`` overrides, read into plain dicts
for :func:`muomni.config.load_config`, which checks the keys and values. A file that cannot be read as a
JSON object of keys is a :class:`~muomni.errors.ConfigError` here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from muomni.errors import ConfigError

PRESETS = ("debug", "default", "tiny", "small")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # with or without the byte-order mark some editors write
    except FileNotFoundError:
        if path.suffix == ".json" and path.stem in PRESETS:  # "configs/tiny.json": the presets ship in the package
            name = path.stem
            raise ConfigError(f"config file {path} does not exist; the built-in preset is named without a path: {name}")
        raise ConfigError(f"config file {path} does not exist; give a JSON file or one of {', '.join(PRESETS)}")
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give a JSON file or one of {', '.join(PRESETS)}")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8")
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}")
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(f"config file {path}", pairs))
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")
    except RecursionError:  # thousands of nested brackets: the parser recurses once per level
        raise ConfigError(f"config file {path} nests too deeply to be a config; give a flat JSON object of keys")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of keys, not {type(data).__name__}")
    return data


def _unique_keys(where: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The keys of a JSON object or a command line, all different: JSON itself, and a dict built from
    ``key=value`` items, let the last of two equal keys win, silently."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(f"{where} gives key '{key}' twice; keep the one you mean")
        seen.add(key)
    return dict(pairs)


def preset_path(name: str) -> Path:
    """The JSON file of a built-in preset."""
    return Path(str(resources.files("muomni") / "configs" / f"{name}.json"))


def source_dict(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a config source: a JSON file, a preset's name, a dict, or None (no keys)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return dict(source)
    text = str(source)
    if not text.strip():  # Path("") is the current folder: the error would name a folder no one gave
        raise ConfigError(f"config file name is empty; give a JSON file or one of {', '.join(PRESETS)}")
    if "\0" in text:
        raise ConfigError(f"config file {text!r} holds a NUL character; give a JSON file or a preset")
    # A folder can never be a config file, so a folder named like a preset (./debug) does not hide the preset.
    if text in PRESETS and not Path(text).is_file():
        return _read_json(preset_path(text))
    return _read_json(Path(text))


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it parses, else as a string."""
    if not isinstance(item, str):
        raise ConfigError(f"override {item!r} must be a 'key=value' string")
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    except RecursionError:  # thousands of nested brackets
        raise ConfigError(f"override of '{key}' nests too deeply to be a config value")
    if isinstance(value, str) and value.lower() in ("true", "false", "null", "none"):
        value = {"true": True, "false": False}.get(value.lower())
    return key, value


def overrides_dict(overrides: dict[str, Any] | list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """``load_config``'s overrides as a dict: given as one, or as ``key=value`` strings."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return overrides
    if isinstance(overrides, (list, tuple)):
        return _unique_keys("the command line", [parse_override(item) for item in overrides])
    # One "key=value" string is the easy mistake: say what to pass rather than fail inside dict.update.
    raise ConfigError(
        f"overrides must be a dict such as {{'batch_size': 4}} or a list such as ['batch_size=4'], not "
        f"{type(overrides).__name__} {overrides!r}"
    )


__all__ = ["PRESETS", "overrides_dict", "parse_override", "preset_path", "source_dict"]
