"""Decode-kernel settings from a JSON object, each set on the one module that owns it, for the A/B scripts of
this folder: muomni.models.triton_decode, split_kv (split-KV attention) or decode_launch (PDL). A name that
no module or several modules have is refused: set anywhere else it would change nothing."""

import importlib
import json
import sys

MODULES = []
for _name in ("triton_decode", "split_kv", "decode_launch"):
    try:
        MODULES.append(importlib.import_module(f"muomni.models.{_name}"))
    except ModuleNotFoundError as e:  # a checkout from before these left triton_decode
        if e.name != f"muomni.models.{_name}":
            raise


def apply(consts_json: str, script: str) -> None:
    """Set each ``{name: value}`` of ``consts_json`` on its module; exit with a line naming ``script`` if
    a name is not exactly one module's."""
    for k, v in json.loads(consts_json).items():
        owners = [m for m in MODULES if hasattr(m, k)]
        if len(owners) != 1:
            sys.exit(f"{script}: {len(owners)} of {', '.join(m.__name__ for m in MODULES)} have {k}, not one")
        setattr(owners[0], k, v)
