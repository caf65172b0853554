"""Shared fixtures: skip markers for the local datasets and shipped models, and small helpers."""

from __future__ import annotations

import pytest
import torch

from qshield_core.data import SAMPLES_INDEX, dataset_available, resolve_data_root
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
