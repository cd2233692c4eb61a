"""A preset's +all training row as it is (chunked cross-entropy: the loss by chunks of rows, never the whole
logits) against the same row with the whole logits (``chunked_ce=false``), both compiled, CUDA graphs
replayed: what chunking costs or buys in speed and peak memory once the step is compiled. argv: variant
(chunked|full) preset out.json ; one variant per process."""

import sys

from plus_all_row import run

variant, preset, out = sys.argv[1:4]
if variant not in ("chunked", "full"):
    sys.exit(f"unknown variant {variant!r}: chunked or full")


def whole_logits(spec: dict) -> None:
    spec["config"]["chunked_ce"] = False


run(variant, out, preset, adjust=whole_logits if variant == "full" else None)
