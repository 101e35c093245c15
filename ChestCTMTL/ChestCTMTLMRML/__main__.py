"""``python -m ChestCTMTLMRML analyze ...`` - the same as the ``chestctmtl`` command."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
