"""The points a cell is evaluated on: seeded, class-balanced, nested subsets of the test split or of
the shipped samples.

For one seed, the subsets of different sizes are nested (the first n / C points of each class in
one seeded order), so records on n = 200 and n = 1000 share their first 200 points and a per-point
worst case over them is well defined (:func:`qshield_core.evaluation.records.worst_case`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import torch

from ..data import dataset_available, get_spec, list_samples, load_samples, load_split

SOURCES = ("auto", "test", "samples")


@dataclass
class EvalPoints:
    """The images a cell is evaluated on, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    """Test-split indices of the points, sorted (also for the shipped samples, which are test images)."""
    source: str
    exact: bool
    selection: str
    kind: str = "test"
    """``"test"`` (the test split) or ``"samples"`` (the shipped samples): part of the cell key."""

    @property
    def indices_sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.source, self.indices]).encode()).hexdigest()


def balanced_indices(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> list[int]:
    """A seeded subset of ``n`` indices with (as nearly as possible) n / C points per class, sorted.

    The class order comes from a private ``torch.Generator`` seeded with ``seed``; subsets of growing
    ``n`` are nested while every class has enough points.
    """
    labels = torch.as_tensor(labels)
    n = min(int(n), int(labels.numel()))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=gen)
    per_class = [order[labels[order] == c] for c in range(num_classes)]
    quota = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    chosen = [pc[:q] for pc, q in zip(per_class, quota, strict=True)]
    taken = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
    if taken.numel() < n:  # a class ran short: fill from the rest, in the seeded order
        mask = torch.ones(labels.numel(), dtype=torch.bool)
        mask[taken] = False
        rest = order[mask[order]]
        taken = torch.cat([taken, rest[: n - taken.numel()]])
    return sorted(int(i) for i in taken)


def resolve_source(dataset: str, source: str = "auto", data_root: str | None = None) -> str:
    """``"test"`` or ``"samples"``: ``"auto"`` becomes ``"test"`` when the test split's files are present.

    A cell's key carries the resolved source, so a cell computed on the shipped samples (no dataset
    on disk) is never mistaken for the test-split cell of the same name when the data appears.
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {', '.join(SOURCES)}.")
    if source != "auto":
        return source
    return "test" if dataset_available(get_spec(dataset).name, data_root) else "samples"


@functools.lru_cache(maxsize=4)
def _test_split(dataset: str, data_root: str | None):
    return load_split(dataset, "test", data_root)


def evaluation_points(dataset: str, n: int, seed: int = 0, data_root: str | None = None,
                      source: str = "auto") -> EvalPoints:
    """A seeded class-balanced subset of the test split (``source="test"``), of the shipped samples
    (``"samples"``), or of the test split when its files are present and the samples otherwise (``"auto"``).
    The returned points say which (``kind``)."""
    spec = get_spec(dataset)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    kind = resolve_source(spec.name, source, data_root)
    if kind == "test":
        split = _test_split(spec.name, data_root)
        idx = balanced_indices(split.labels, n, spec.num_classes, seed)
        images = split.images[idx].float().div_(255.0)
        return EvalPoints(images, split.labels[idx].clone(), idx, f"{split.source}, test split", split.exact,
                          f"class-balanced seeded subset (seed {seed}) of {len(split)} test images", "test")
    images, labels = load_samples(spec.name)
    idx = balanced_indices(labels, n, spec.num_classes, seed)
    samples = list_samples(spec.name)
    test_indices = [samples[i].index for i in idx]
    return EvalPoints(images[idx], labels[idx], test_indices, "assets/samples (shipped test images)",
                      spec.name != "cifar10",
                      f"class-balanced seeded subset (seed {seed}) of {len(labels)} shipped samples; "
                      "indices are test-split indices", "samples")
