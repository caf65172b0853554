"""Start the QShield app (``make run``): ``streamlit run app.py`` with the heavy imports started early.

Streamlit runs ``app.py`` only when the first browser session connects, and that first run then
spends several seconds importing PyTorch and torchattacks. Here a background thread starts those
imports as soon as the server answers, while the browser loads the front end and connects, so the
first visit finds them (partly) done and the compiled kernels of the hybrid's head loaded. Everything else is
Streamlit's own command line: extra arguments are passed on (e.g. ``--server.port 8502``).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wait_for_server(timeout_s: float = 15.0) -> None:
    """Return once Streamlit's server has started (or after ``timeout_s``). Imports started earlier share the
    interpreter lock with the server's own start and delay it (measured: the server answered at 4.1 s instead
    of 1.9 s), and the browser can only fetch the front end once the server answers."""
    from streamlit import runtime
    from streamlit.runtime.runtime import RuntimeState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if runtime.exists() and runtime.get_instance().state != RuntimeState.INITIAL:
            return
        time.sleep(0.05)


def _preload() -> None:
    """Once the server is up, import the library the pages use and load the hybrid head's compiled kernels
    (numba's cache, or a compilation after an install without ``make setup``); an error here is left for the
    page to report."""
    with contextlib.suppress(Exception):  # the app reports import errors itself, with context
        _wait_for_server()
        import numpy as np

        import qshield_core.lab  # noqa: F401  (torch, torchattacks, pandas, Plotly)
        from qshield_core import fusion_jit

        fusion_jit.precompile((np.float32,))  # the shipped models' precision


def main() -> None:
    sys.path.insert(0, str(REPO))
    import streamlit  # noqa: F401  (first, in this thread: the preload thread reads streamlit.runtime)
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    # app.py routes with st.navigation, which leaves Streamlit's legacy mode for a folder named pages/ only when
    # it first runs: until then the first visitor's sidebar listed the folder's files (_shared.py among them).
    PagesManager.uses_pages_directory = False
    threading.Thread(target=_preload, name="qshield-preload", daemon=True).start()

    sys.argv = ["streamlit", "run", str(REPO / "app.py"), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
