"""Records: the typed result of one cell, the files that hold them, and the rules that read them.

A *record* is one JSON object per cell (:class:`Record`, schema :data:`RECORD_SCHEMA`). It stores
its exact attack parameters, its provenance, its metrics with intervals and, per point, whether the
point was classified correctly before and after the attack, together with the points' test-split
indices. Three rules are defined here once, and the reports, the app's pages and the cost table all
use them:

- :func:`select_record`: which record stands for a cell when several share its identity;
- :func:`worst_case`: the per-point worst case over attacks, on the points every attack saw;
- :func:`strongest`: the strongest attack, compared on the same points;
- :func:`compare_on_shared_points`: two worst cases (two models), on the points both saw, with the paired
  interval of their difference.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from filelock import FileLock

from ..attacks import resolve_params
from .metrics import paired_difference_interval, paired_table, unpack_bits, wilson_interval

SCHEMA = "qshield.results/1"
"""The results file's format: ``{"schema": SCHEMA, "records": [Record, ...]}``."""
RECORD_SCHEMA = "qshield.record/2"
"""Version 2 adds the points' indices and kind, a resolved source in the key, and multi-draw figures."""

VOLATILE_FIELDS = ("created", "seconds_total", "seconds_per_image", "hardware", "cpu_count", "torch_threads",
                   "versions", "command", "source_file", "migrated", "resumed_batches")
"""Fields that depend on when, where and how fast a cell ran, not on what it computed."""


class PointsInfo(TypedDict, total=False):
    source: str
    exact: bool
    selection: str
    indices_sha256: str
    indices: list[int]
    kind: str


class PerPoint(TypedDict, total=False):
    clean_correct: str
    adv_correct: str


class Record(TypedDict, total=False):
    """One cell's result (the fields every record has; attacked cells add cost and perturbation fields)."""

    schema: str
    key: str
    dataset: str
    model: str
    grad_mode: str | None
    backend: str
    attack: str
    attack_display: str
    suite: str | None
    eps: float | None
    eps_255: float | None
    params: dict | None
    seed: int
    n: int
    points: PointsInfo
    n_clean_correct: int
    clean_accuracy: float
    clean_accuracy_ci: list[float]
    n_robust: int
    robust_accuracy: float
    robust_accuracy_ci: list[float]
    asr: float | None
    asr_ci: list[float] | None
    seconds_per_image: float
    forwards_per_image: float
    backwards_per_image: float
    draws: dict
    per_point: PerPoint


# --------------------------------------------------------------------------- cells and keys


def cell_key(dataset: str, model: str, grad_mode: str | None, attack: str, eps: float | None, n: int, seed: int,
             backend: str = "fast", steps: int | None = None, source: str = "test") -> str:
    """The identity of a cell in a results file (resuming skips keys already there).

    ``source`` is the resolved one (``test`` or ``samples``), never ``auto``.
    """
    if source not in ("test", "samples"):
        raise ValueError(f"A cell key needs a resolved source (test or samples), got {source!r}.")
    eps_text = "-" if eps is None else f"{eps:.6f}"
    return (f"{dataset}/{model}/{grad_mode or '-'}/{attack}/eps={eps_text}/steps={steps or 'preset'}"
            f"/n={n}/seed={seed}/{backend}/{source}")


@dataclass(frozen=True)
class Cell:
    """One independent unit of evaluation (``source`` resolved: ``test`` or ``samples``)."""

    dataset: str
    model: str
    grad_mode: str | None
    attack: str
    eps: float | None
    n: int
    seed: int = 0
    backend: str = "fast"
    steps: int | None = None
    source: str = "test"

    @property
    def key(self) -> str:
        return cell_key(self.dataset, self.model, self.grad_mode, self.attack, self.eps, self.n, self.seed,
                        self.backend, self.steps, self.source)

    @property
    def params(self) -> dict | None:
        """The attack's parameters as the current presets resolve them (None for clean accuracy)."""
        if self.attack == "none":
            return None
        return resolve_params(self.attack, self.dataset, self.eps, self.steps, self.seed)


def is_current(record: dict, cell: Cell) -> bool:
    """Whether ``record`` was computed with the attack parameters ``cell`` would use today."""
    as_json = json.loads(json.dumps(cell.params))  # tuples become lists, as in the file
    return record.get("params") == as_json


def is_preset_budget(record: dict) -> bool:
    """Whether a record ran its attack's preset budget (no ``--steps`` override in its cell key)."""
    return "/steps=preset/" in record.get("key", "/steps=preset/") and not record.get("app_budget")


def comparable(record: dict) -> dict:
    """``record`` without the fields that depend on when, where and how fast it ran."""
    return {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}


# --------------------------------------------------------------------------- files


def records_of(data: Any) -> list | None:
    """The records of a parsed results file (a list, or ``{"records": [...]}``); None for other JSON."""
    records = data.get("records") if isinstance(data, dict) else data
    return records if isinstance(records, list) else None


def load_results(path: str | os.PathLike) -> list[dict]:
    """The records of a results file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"Results file {path} is not valid JSON ({err}).") from None
    records = records_of(data)
    if records is None:
        raise ValueError(f"Results file {path} has no list of records.")
    return records


def save_results(path: str | os.PathLike, records: list[dict], schema: str = SCHEMA) -> None:
    """Write the records atomically (a temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(_dumps({"schema": schema, "records": records}) + "\n")
    os.replace(tmp, path)


_INT_LIST = re.compile(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]")


def _dumps(data: Any) -> str:
    """Indented JSON with lists of integers (the points' indices) kept on one line."""
    return _INT_LIST.sub(lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", json.dumps(data, indent=1))


def upsert(records: list[dict], record: dict) -> list[dict]:
    """``records`` with ``record`` added, or replacing the record of the same key (in place)."""
    at = next((i for i, r in enumerate(records) if r.get("key") == record.get("key")), None)
    if at is None:
        records.append(record)
    else:
        records[at] = record
    return records


def merge_record(path: str | os.PathLike, record: dict, schema: str = SCHEMA) -> list[dict]:
    """Add ``record`` to the results file (replacing a record with its key); returns all records.

    The file is re-read and rewritten under an exclusive lock (``filelock`` on ``<file>.lock``, on
    every platform), so several processes on one machine can fill the same file with their cells.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock"))):
        records = upsert(load_results(path), record)
        save_results(path, records, schema)
    return records


# --------------------------------------------------------------------------- one record per cell


def identity(record: dict) -> tuple:
    """What a record measures: (dataset, model, gradient mode, attack, eps)."""
    eps = record.get("eps")
    return (record.get("dataset"), record.get("model"), record.get("grad_mode"), record.get("attack"),
            None if eps is None else round(float(eps), 6))


def _rank(record: dict) -> tuple:
    kind = (record.get("points") or {}).get("kind")
    on_test = kind == "test" or (kind is None and "test split" in (record.get("points") or {}).get("source", ""))
    return (is_preset_budget(record), on_test, int(record.get("n", 0)), record.get("created", ""))


def select_record(records: Iterable[dict]) -> dict | None:
    """The record that stands for a cell among records of the same :func:`identity`: the attack's
    preset budget over a lowered one, the test split over the shipped samples, then the most points,
    then the newest. None for no records."""
    return max(records, key=_rank, default=None)


def select_records(records: Iterable[dict]) -> dict[tuple, dict]:
    """{identity: :func:`select_record`} over all records."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(identity(r), []).append(r)
    return {key: select_record(rs) for key, rs in groups.items()}


# --------------------------------------------------------------------------- per-point comparisons


def point_outcomes(record: dict) -> dict[int, bool] | None:
    """{test index: robust (correct before and after the attack)} of an attacked record; None when the
    record does not keep its per-point outcomes or its indices."""
    per_point, points = record.get("per_point") or {}, record.get("points") or {}
    if "adv_correct" not in per_point or "indices" not in points:
        return None
    n = int(record["n"])
    robust = unpack_bits(per_point["clean_correct"], n) & unpack_bits(per_point["adv_correct"], n)
    return dict(zip(points["indices"], robust.tolist(), strict=True))


@dataclass(frozen=True)
class WorstCase:
    """The per-point worst case over a set of attacks, on the points every one of them saw."""

    robust_accuracy: float
    robust_accuracy_ci: tuple[float, float]
    n: int
    attacks: tuple[str, ...]
    per_attack: dict[str, float]
    """Each attack's robust accuracy on the same n points."""
    left_out: tuple[str, ...] = ()
    """Attacks whose records keep no per-point outcomes (older records), not in the worst case."""
    outcomes: Mapping[int, bool] = field(default_factory=dict, compare=False, repr=False)
    """{test index: robust against every attack}: the points behind the figures, for paired comparisons."""
    points_kind: str | None = None
    """The records' source of points ("test" or "samples"): indices of two sources are not comparable."""


def _common_points(outcomes: Sequence[dict[int, bool]]) -> list[int]:
    common = set(outcomes[0])
    for o in outcomes[1:]:
        common &= set(o)
    return sorted(common)


def worst_case(records: Sequence[dict]) -> WorstCase | None:
    """A point is robust only if it survives every attack in ``records``; taken over the points that
    every record saw (the seeded subsets are nested, so this is the smallest record's points).

    Records of one model and one source of points (test split or shipped samples) are expected;
    None when fewer than one record keeps per-point outcomes or the records share no point.
    """
    kinds = {(r.get("points") or {}).get("kind") for r in records}
    if len(kinds) > 1:
        raise ValueError(f"Records on different sources of points cannot be combined per point: {sorted(kinds)}.")
    usable = [(r, point_outcomes(r)) for r in records]
    left_out = tuple(r["attack"] for r, o in usable if o is None)
    usable = [(r, o) for r, o in usable if o is not None]
    if not usable:
        return None
    common = _common_points([o for _, o in usable])
    if not common:
        return None
    robust = np.ones(len(common), dtype=bool)
    per_attack = {}
    for r, o in usable:
        survived = np.array([o[i] for i in common], dtype=bool)
        per_attack[r["attack"]] = float(survived.mean())
        robust &= survived
    k, n = int(robust.sum()), len(common)
    return WorstCase(k / n, wilson_interval(k, n), n, tuple(r["attack"] for r, _ in usable), per_attack, left_out,
                     dict(zip(common, robust.tolist(), strict=True)), next(iter(kinds)) or "test")


@dataclass(frozen=True)
class PairedComparison:
    """Two robust accuracies on the same n points and their difference, a - b, with Newcombe's paired
    interval (:func:`~qshield_core.evaluation.metrics.paired_difference_interval`)."""

    n: int
    accuracy_a: float
    accuracy_a_ci: tuple[float, float]
    accuracy_b: float
    accuracy_b_ci: tuple[float, float]
    difference: float
    difference_ci: tuple[float, float]


def compare_on_shared_points(a: WorstCase, b: WorstCase) -> PairedComparison | None:
    """``a`` against ``b`` (e.g. a hybrid's worst case against its CNN's) on the points both saw; None when
    they share none. Both must come from the same source of points."""
    if a.points_kind != b.points_kind:
        raise ValueError(f"Worst cases on different sources of points cannot be paired: "
                         f"{a.points_kind!r} and {b.points_kind!r}.")
    common = sorted(set(a.outcomes) & set(b.outcomes))
    if not common:
        return None
    robust_a = np.array([a.outcomes[i] for i in common], dtype=bool)
    robust_b = np.array([b.outcomes[i] for i in common], dtype=bool)
    n, k_a, k_b = len(common), int(robust_a.sum()), int(robust_b.sum())
    table = paired_table(robust_a, robust_b)
    return PairedComparison(n, k_a / n, wilson_interval(k_a, n), k_b / n, wilson_interval(k_b, n),
                            (k_a - k_b) / n, paired_difference_interval(*table))


def strongest(records: Sequence[dict]) -> tuple[dict, WorstCase] | None:
    """The attack with the lowest robust accuracy on the points all of ``records`` saw, and the
    comparison it won (None when no record keeps per-point outcomes)."""
    case = worst_case(records)
    if case is None:
        return None
    name = min(case.per_attack, key=lambda a: (case.per_attack[a], a))
    return next(r for r in records if r["attack"] == name), case
