"""The randomized-smoothing study (certified beside empirical robustness):
``python scripts/certified_study.py [--dataset mnist organamnist] [--n 500] [--mc 1000]``.

The work is :func:`qshield_core.certify.smoothing_eval.main`; see that module, and
:mod:`qshield_core.certify.smoothing` for the algorithms.
"""

import sys

import _single_thread  # noqa: F401  (first: one thread, the repository on sys.path)

from qshield_core.certify.smoothing_eval import main

if __name__ == "__main__":
    sys.exit(main())
