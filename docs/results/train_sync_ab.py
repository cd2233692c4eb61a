"""Small +all training row, the stats read after the optimizer's launch (old) or copied out before (new).
argv: variant out.json ; run one variant per process."""

import sys

from plus_all_row import run

import muomni.training.trainer as tr

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    tr.copy_to_host = lambda values: values.tolist  # read when called: after the update is queued
run(variant, out)
