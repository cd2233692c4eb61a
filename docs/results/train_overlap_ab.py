"""A preset's +all row with overlap_steps off (sync) or on (overlap), through the bench's row worker.
argv: variant (sync|overlap) preset out.json ; run one variant per process."""

import sys

from plus_all_row import run

variant, preset, out = sys.argv[1:4]
run(variant, out, preset, lambda spec: spec["config"].update(overlap_steps=variant == "overlap"))
