"""The upper bound of reading each step's loss one step late, measured on the code before overlap_steps
(12180bd): the +all row where a step's read returns the step before's values, waiting only for that step's
copy. argv: variant (plain|defer) preset out.json ; run one variant per process."""

import sys

from plus_all_row import run

import muomni.training.trainer as T

variant, preset, out = sys.argv[1:4]
if variant == "defer":
    copy_to_host = T.copy_to_host
    previous = [None]

    def deferred_copy(values):  # noqa: ANN001, ANN201
        read = copy_to_host(values)

        def deferred():  # noqa: ANN202
            values = previous[0]() if previous[0] is not None else [0.0, 0.0]
            previous[0] = read
            return values

        return deferred

    T.copy_to_host = deferred_copy
run(variant, out, preset)
