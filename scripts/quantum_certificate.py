"""The quantum-noise certificate over test points:
``python scripts/quantum_certificate.py --out results/quantum-certificate.json [--n 500] [--source test]``.

The work is :func:`qshield_core.certify.quantum_eval.main`; see that module, and
:mod:`qshield_core.certify.quantum` for the theorems.
"""

import sys

import _single_thread  # noqa: F401  (first: one thread, the repository on sys.path)

from qshield_core.certify.quantum_eval import main

if __name__ == "__main__":
    sys.exit(main())
