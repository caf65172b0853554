"""Imported first by the study scripts: one BLAS/OpenMP thread per process (set before NumPy loads; the
studies run one process per core) and the repository on ``sys.path``."""

import os
import sys
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
