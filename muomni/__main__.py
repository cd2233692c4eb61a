"""``python -m muomni`` is the ``muomni`` command."""

import sys

from muomni.cli import main

sys.exit(main())
