"""The +all row with Inductor settings changed in this process (``torch._inductor.config``), recorded with
the result. argv: SETTINGS preset out.json, SETTINGS being ``defaults`` or ``name=value[,name=value...]``
(dotted names for sub-configs; values read as Python literals), e.g. ``combo_kernels=True``."""

import ast
import sys

import torch._inductor.config as inductor_config
from plus_all_row import run

settings, preset, out = sys.argv[1:4]
if settings != "defaults":
    for item in settings.split(","):
        name, value = item.split("=", 1)
        *parents, leaf = name.split(".")
        holder = inductor_config
        for part in parents:
            holder = getattr(holder, part)
        if not hasattr(holder, leaf):
            sys.exit(f"this torch's inductor config has no {name}")
        setattr(holder, leaf, ast.literal_eval(value))
run(settings, out, preset)
