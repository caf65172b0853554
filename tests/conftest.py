"""Shared fixtures: skip markers for the local datasets and shipped models, and small helpers."""

from __future__ import annotations

import pytest
import torch

from qshield_core.data import SAMPLES_INDEX, dataset_available, resolve_data_root
from qshield_core.evaluation import wilson_interval
from qshield_core.zoo import PRETRAINED_DIR

DATASET_NAMES = ("mnist", "organamnist", "cifar10")


def require_dataset(name: str) -> None:
    """Skip the calling test, with the reason, when ``name``'s local files are absent."""
    if not dataset_available(name):
        root = resolve_data_root()
        pytest.skip(f"{name} data not present under {root.path} ({root.origin}); set QSHIELD_DATA_ROOT to run this")


def require_samples() -> None:
    if not SAMPLES_INDEX.is_file():
        pytest.skip(f"shipped samples missing ({SAMPLES_INDEX}); run scripts/make_samples.py")


def make_record(model: str, attack: str, asr: float, dataset: str = "mnist", eps: float | None = 32 / 255,
                mode: str | None = None) -> dict:
    """A hand-made results record (n = 1000, 990 correct) with the given ASR, for the report tests."""
    n, correct = 1000, 990
    fooled = round(asr * correct)
    ci = wilson_interval(fooled, correct)
    return {"key": f"{dataset}/{model}/{mode or '-'}/{attack}/eps={eps:.6f}/steps=preset/n={n}/seed=0/fast/auto",
            "dataset": dataset, "model": model, "grad_mode": mode, "attack": attack, "suite": "paper", "eps": eps,
            "n": n, "clean_accuracy": 0.99, "clean_accuracy_ci": [0.98, 0.995], "robust_accuracy": 0.5,
            "robust_accuracy_ci": [0.47, 0.53], "asr": fooled / correct, "asr_ci": list(ci), "n_clean_correct": correct,
            "seconds_per_image": 0.001, "forwards_per_image": 10.0, "backwards_per_image": 10.0,
            "points": {"indices_sha256": "x"}}


def shipped_cards() -> list:
    """The model cards in pretrained/ (empty until models have been trained)."""
    return sorted(PRETRAINED_DIR.glob("*.json"))


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests are small: two threads keep them fast on a shared 2-core machine and deterministic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# The browser tests' shared fixtures (tests/browser_support.py): one Chromium and one app server per module.


@pytest.fixture(scope="module")
def browser():
    from browser_support import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser):
    from browser_support import app_server, require_shipped

    require_shipped()
    with app_server(tmp_path_factory.mktemp("server")) as url:
        yield url
