"""Support for the browser tests: a real ``streamlit run app.py`` server and headless Chromium.

Chromium is Debian's (``apt-get install chromium``, at ``/usr/bin/chromium``) driven by Playwright for
Python (``pip install playwright``; Playwright's own browser download is never used). Both are
optional locally: the tests that need them skip, saying what is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("QSHIELD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]
SERVER_START_TIMEOUT = 180.0
PAGE_TIMEOUT_MS = 420_000  # a cold page on a busy 2-core machine imports torch, PennyLane and loads models

# The app's pages as st.navigation serves them: (url path, title shown on the page, screenshot name).
PAGES = [
    ("", "Attack Lab", "attack_lab"),
    ("robustness_explorer", "Robustness Explorer", "robustness_explorer"),
    ("quantum_circuit", "Quantum Circuit", "quantum_circuit"),
    ("attacker_cost", "Attacker Cost", "attacker_cost"),
    ("claims", "Claim cards", "claims"),
    ("certified", "Certified", "certified"),
    ("about", "About QShield", "about"),
]


def require_browser() -> None:
    """Skip, naming what to install, when Playwright or Debian's Chromium is absent."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set QSHIELD_CHROMIUM)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200 and response.read().strip() == b"ok"
    except OSError:
        return False


@contextmanager
def streamlit_server(env: dict | None = None, log_path: Path | None = None, launcher: str = "streamlit"):
    """Start the app on a free port; yield (url, process, seconds until healthy).

    ``launcher="streamlit"`` runs ``streamlit run app.py``; ``"serve"`` runs ``scripts/serve.py``
    (what ``make run`` uses: the same server, with the heavy imports started while it boots).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = ["scripts/serve.py"] if launcher == "serve" else ["-m", "streamlit", "run", "app.py"]
    command = [sys.executable, *start, "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        while not healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode} (log: {log_path})")
            if time.perf_counter() - started > SERVER_START_TIMEOUT:
                raise TimeoutError(f"streamlit did not answer on {url} within {SERVER_START_TIMEOUT:.0f} s")
            time.sleep(0.2)
        yield url, process, time.perf_counter() - started
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        if log_path:
            log.close()


def launch_options() -> dict:
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@contextmanager
def chromium():
    """Debian's Chromium under Playwright (skips when either is missing); closed on exit."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**launch_options())
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def app_server(log_dir: Path, env: dict | None = None):
    """The app on a free port for a test module (yields its URL); fails the module if the server died meanwhile."""
    log = Path(log_dir) / "streamlit.log"
    with streamlit_server(env=env, log_path=log) as (url, process, _):
        yield url
        assert process.poll() is None, f"the server died during the tests (see {log})"


DEFAULT_VIEWPORT = {"width": 1440, "height": 1000}


def open_page(browser, url: str, viewport: dict | None = None, **context):
    """A new page at ``url`` (``context``: Playwright context options, e.g. ``has_touch=True``) and the list
    its script errors are collected into."""
    page = browser.new_page(viewport=viewport or DEFAULT_VIEWPORT, **context)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    return page, errors


def require_shipped(dataset: str = "mnist", models: tuple[str, ...] = ("classical", "hybrid-full")) -> None:
    from qshield_core import zoo

    missing = [m for m in models if not zoo.model_files(dataset, m).weights.is_file()]
    if missing:
        pytest.skip(f"shipped {dataset} models missing: {', '.join(missing)}")


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/screenshots when QSHIELD_SCREENSHOTS=1 (to refresh the README's pictures), else a temporary folder."""
    if os.environ.get("QSHIELD_SCREENSHOTS") == "1":
        target = REPO / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path


# JavaScript run in the page: true once Streamlit has finished the script run and drawn the page.
SETTLED_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  if (app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stAppSkeleton"], [data-testid="stSkeleton"], '
                             + '[data-testid="stSkeletonElement"]')) return false;
  const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  return charts.every((chart) => chart.querySelector('svg.main-svg'));
}"""


def wait_settled(page, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until the page's script run has finished (the app shows no 'running' state)."""
    page.wait_for_function(SETTLED_JS, timeout=timeout_ms, polling=250)


def full_screenshot(page, path: Path) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, not the document, so the
    viewport is first made as tall as that block's content."""
    height = page.evaluate("""() => {
      const main = document.querySelector('[data-testid="stMain"]') || document.body;
      const sidebar = document.querySelector('[data-testid="stSidebarContent"]');
      return Math.max(main.scrollHeight, sidebar ? sidebar.scrollHeight : 0, window.innerHeight);
    }""")
    width = page.viewport_size["width"] if page.viewport_size else 1440
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 12000)})
    page.wait_for_timeout(800)
    wait_settled(page)
    page.screenshot(path=str(path), full_page=True)
