"""``python -m duckagents``: the ``duckagents`` command."""

import sys

from .cli import main

sys.exit(main())
