"""``python -m duckagents.cli``: the ``duckagents`` command."""

import sys

from . import main

sys.exit(main())
