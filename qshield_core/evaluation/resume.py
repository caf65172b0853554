"""Batch checkpoints: a long cell that is interrupted resumes from its last finished batch.

A cell attacks its points in batches, batch i seeded with ``seed + i`` (:mod:`.runner`), so the batches an
earlier run finished are exactly the batches a fresh run would compute, and a cell resumed from them gives
the record of an uninterrupted run (tested). That matters for the studies' longest cells: AutoAttack at
n = 1000 on an adversarially trained model is hours on one core, and a session that ends, a worker that
dies or a machine that reboots would otherwise throw all of it away.

A checkpoint is one JSON file per cell: for every finished batch, what the record is built from (each
draw's predicted classes, the perturbation norms, the pass counts, the seconds), under a *fingerprint* of
everything those batches depend on: the cell's key, the weights of the model and of its surrogate, the
points, the batch size, the draws, the attack's resolved parameters and the package versions. A checkpoint
whose fingerprint differs, or that cannot be read, is not used (the cell starts afresh and overwrites it);
the file is removed once the cell's record is complete. Changing the project's own attack code does not
change the fingerprint: after such a change run the grid with ``--fresh``, or delete the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT_SCHEMA = "qshield.batches/1"


@dataclass
class BatchResult:
    """What one attacked batch contributes to its record (the per-image tensors and the batch's totals)."""

    clean: list[torch.Tensor]
    """Predicted classes before the attack, one tensor per draw of a randomised model (one otherwise)."""
    adv: list[torch.Tensor]
    """Predicted classes after the attack, per draw."""
    linf: torch.Tensor
    l2: torch.Tensor
    l0_pixels: torch.Tensor
    seconds: float
    forwards: float
    backwards: float
    surrogate_forwards: float | None = None
    surrogate_backwards: float | None = None

    def to_json(self) -> dict:
        """Exact: float32 norms become the float64 numbers equal to them, which JSON keeps digit for digit."""
        return {"clean": [t.tolist() for t in self.clean], "adv": [t.tolist() for t in self.adv],
                "linf": self.linf.tolist(), "l2": self.l2.tolist(), "l0_pixels": self.l0_pixels.tolist(),
                "seconds": self.seconds, "forwards": self.forwards, "backwards": self.backwards,
                "surrogate_forwards": self.surrogate_forwards, "surrogate_backwards": self.surrogate_backwards}

    @classmethod
    def from_json(cls, data: dict, norm_dtype: torch.dtype = torch.float32) -> BatchResult:
        return cls(clean=[torch.tensor(c, dtype=torch.long) for c in data["clean"]],
                   adv=[torch.tensor(a, dtype=torch.long) for a in data["adv"]],
                   linf=torch.tensor(data["linf"], dtype=norm_dtype), l2=torch.tensor(data["l2"], dtype=norm_dtype),
                   l0_pixels=torch.tensor(data["l0_pixels"], dtype=torch.long), seconds=float(data["seconds"]),
                   forwards=float(data["forwards"]), backwards=float(data["backwards"]),
                   surrogate_forwards=data["surrogate_forwards"], surrogate_backwards=data["surrogate_backwards"])


def fingerprint(**what: object) -> str:
    """SHA-256 of the JSON of ``what`` (sorted keys): the identity of the batches a checkpoint may stand for."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class BatchCheckpoint:
    """The finished batches of one cell, on disk at ``directory/<hash of the key>.json``."""

    def __init__(self, directory: str | os.PathLike, key: str, fingerprint: str, *, fresh: bool = False) -> None:
        self.path = Path(directory) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"
        self.key, self.fingerprint, self.fresh = key, fingerprint, fresh

    def load(self, norm_dtype: torch.dtype = torch.float32) -> list[BatchResult]:
        """The batches finished earlier, in order; none when there is no usable checkpoint (said in a warning
        when a file is there but cannot be used) or when ``fresh`` (the first batch saved replaces the file)."""
        if self.fresh or not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
            if data.get("schema") != CHECKPOINT_SCHEMA or data.get("key") != self.key:
                raise ValueError("it is not this cell's")
            if data.get("fingerprint") != self.fingerprint:
                raise ValueError("the model, the points or the attack's parameters have changed since")
            return [BatchResult.from_json(b, norm_dtype) for b in data["batches"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError: a ValueError
            warnings.warn(f"Batch checkpoint {self.path} not used ({err}): the cell {self.key} starts afresh.",
                          stacklevel=2)
            return []

    def save(self, batches: list[BatchResult], total: int | None = None) -> None:
        """Write every finished batch, and how many the cell has in all (atomically: a temporary file, then a
        rename). A checkpoint that cannot be written is said in a warning and the cell goes on without one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"schema": CHECKPOINT_SCHEMA, "key": self.key, "fingerprint": self.fingerprint,
                                       "total_batches": total, "batches": [b.to_json() for b in batches]}))
            os.replace(tmp, self.path)
        except OSError as err:
            warnings.warn(f"Batch checkpoint {self.path} could not be written ({err}).", stacklevel=2)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class ProgressWatch:
    """Which cells have finished more batches since the last look, read from their checkpoints in ``directory``
    (the grid's driver reports them: an AutoAttack cell of an hour otherwise shows nothing until it ends)."""

    def __init__(self, directory: str | os.PathLike, keys: Iterable[str] | None = None) -> None:
        """``keys``: the cells to report (default: every checkpoint in ``directory``, other runs' too)."""
        self.directory, self.seen = Path(directory), {}
        self.keys = None if keys is None else set(keys)

    def news(self) -> list[str]:
        """One line per cell whose checkpoint holds more batches than at the last call, e.g.
        ``mnist/...: batch 2 of 4 done``; files that cannot be read (being replaced, or not ours) are passed over."""
        lines = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                data = json.loads(path.read_text())
                key, done, total = data["key"], len(data["batches"]), data.get("total_batches")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if self.keys is not None and key not in self.keys:
                continue
            if done > self.seen.get(key, 0):
                lines.append(f"{key}: batch {done}{'' if total is None else f' of {total}'} done")
            self.seen[key] = done
        return lines


__all__ = ["CHECKPOINT_SCHEMA", "BatchCheckpoint", "BatchResult", "ProgressWatch", "fingerprint"]
