"""The +all row under the Inductor settings of this process's environment (``TORCHINDUCTOR_*``, which the
caller sets), recorded with the result. argv: preset out.json"""

import os
import sys

from plus_all_row import run

preset, out = sys.argv[1:3]
settings = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_"))
run(" ".join(settings) or "defaults", out, preset)
