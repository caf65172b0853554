"""Write a Gallery grid: ``python scripts/make_gallery.py --dataset mnist --out results/gallery-mnist.json``.

The work is :func:`qshield_core.gallery.main` (the same function a ``python -m qshield_core gallery``
subcommand would call); see that module for what the grid is.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.gallery import main

if __name__ == "__main__":
    sys.exit(main())
