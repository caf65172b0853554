"""Start the QShield app (``make run``): ``streamlit run app.py`` with the heavy imports started early.

Streamlit runs ``app.py`` only when the first browser session connects, and that first run then
spends several seconds importing PyTorch, torchattacks, pandas and Plotly. Here a background thread
starts those imports while the server boots and the browser connects, so the first visit finds
them (partly) done and the compiled kernels of the hybrid's head loaded. Everything else is
Streamlit's own command line: extra arguments are passed on (e.g. ``--server.port 8502``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _preload() -> None:
    """Import the library the pages use, and load the hybrid head's compiled kernels (numba's cache, or a
    compilation after an install without ``make setup``); an error here is left for the page to report."""
    with contextlib.suppress(Exception):  # the app reports import errors itself, with context
        import numpy as np

        import qshield_core.lab  # noqa: F401  (torch, torchattacks, pandas, Plotly)
        from qshield_core import fusion_jit

        fusion_jit.precompile((np.float32,))  # the shipped models' precision


def main() -> None:
    sys.path.insert(0, str(REPO))
    threading.Thread(target=_preload, name="qshield-preload", daemon=True).start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(REPO / "app.py"), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
