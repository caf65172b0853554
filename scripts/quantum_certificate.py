"""The quantum-noise certificate over test points:
``python scripts/quantum_certificate.py --out results/quantum-certificate.json [--n 500] [--source test]``.

The work is :func:`qshield_core.certify.quantum_eval.main`; see that module, and
:mod:`qshield_core.certify.quantum` for the theorems.
"""

import os
import sys
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before NumPy loads: one thread
    os.environ.setdefault(_name, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.certify.quantum_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
