"""``python -m sandbox_runtime``: the in-sandbox supervisor (configured by environment only).

See :mod:`sandbox_runtime.contract` for the names it reads and the build-mode output.
"""

from __future__ import annotations

import sys

from sandbox_runtime.supervisor import main

if __name__ == "__main__":
    sys.exit(main())
