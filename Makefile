# QShield: one command runs the app, one runs the tests (each sets itself up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup devices run test lint demo bench train results screenshots clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m qshield_core.fusion_jit  # compile the hybrid head's kernels once (numba's cache)
	touch $@

setup: $(VENV)/.installed  ## create .venv and install everything

devices: setup  ## optional: IBM calibration snapshots for real-device noise (qiskit-ibm-runtime, about 60 MB)
	$(PY) -m pip install --quiet "qiskit-ibm-runtime==0.51.0"

run: setup  ## start the Streamlit app on the shipped models and samples
	$(PY) scripts/serve.py --server.port $(PORT) --server.headless true

test: setup  ## lint, then the whole test suite (browser tests need Debian's chromium)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: setup  ## a short CLI demo on the shipped models and samples
	$(PY) -m qshield_core demo --dataset mnist

bench: setup  ## benchmarks (timings as ratios measured in one run)
	$(PY) bench/bench_backends.py
	$(PY) bench/bench_app.py

train: setup  ## retrain every shipped model from scratch (about 60 minutes on 2 CPU cores)
	bash scripts/train_all.sh

results: setup  ## regenerate results/*.json and their tables (long; resumable)
	bash scripts/run_results.sh

screenshots: setup  ## refresh the README's pictures (docs/screenshots) from the browser tests
	QSHIELD_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_e2e.py tests/test_e2e_story.py

clean:
	rm -rf $(VENV) checkpoints .pytest_cache .ruff_cache
