"""(Runs on commit da53c12, where muomni.models.layers.side_by_side exists; the change was reverted after this A/B.)
Small +all training row, q/k/v and gate/up as one product each over their weights side by side (new) or
as separate products (old). argv: variant out.json ; run one variant per process."""

import sys

from plus_all_row import run

from muomni.models import layers

variant, out = sys.argv[1], sys.argv[2]
if variant == "old":
    layers.side_by_side = lambda x, linears: tuple(linear(x) for linear in linears)
run(variant, out)
