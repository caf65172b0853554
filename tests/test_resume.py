"""Batch checkpoints (qshield_core.evaluation.resume): a cell interrupted part-way goes on from its finished
batches and gives the record of an uninterrupted run; a checkpoint that does not fit is not used."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_samples

from qshield_core import evaluation
from qshield_core.evaluation import runner
from qshield_core.evaluation.resume import BatchCheckpoint, BatchResult, ProgressWatch

N, BATCH = 12, 4  # three batches
REAL_RUN_ATTACK = runner.run_attack


class Interrupted(Exception):
    """Stands for a session's end or a killed worker, after some batches."""


def counting_run_attack(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count the batches attacked (their seeds); raise :class:`Interrupted` once ``stop_after`` are done."""
    seeds = []

    def run_attack(*args, **kwargs):
        if stop_after is not None and len(seeds) == stop_after:
            raise Interrupted
        seeds.append(args[8])
        return REAL_RUN_ATTACK(*args, **kwargs)

    monkeypatch.setattr(runner, "run_attack", run_attack)
    return seeds


def cell(model: str = "classical", grad_mode: str | None = None, attack: str = "pgd", **kwargs) -> dict:
    return evaluation.evaluate_cell("mnist", model, grad_mode, attack, None, N, 0, source="samples",
                                    batch_size=BATCH, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted() -> dict:
    require_samples()
    return {"classical": cell(), "paper": cell("hybrid-full", "paper", "fgsm")}


@pytest.mark.parametrize("which, model, mode, attack", [("classical", "classical", None, "pgd"),
                                                         ("paper", "hybrid-full", "paper", "fgsm")])
def test_an_interrupted_cell_goes_on_from_its_finished_batches(monkeypatch, tmp_path, uninterrupted, which, model,
                                                               mode, attack):
    """Two batches done, then the run dies; the same cell run again attacks only the third batch, and its record
    is the uninterrupted run's (the randomised paper mode's five draws included)."""
    counting_run_attack(monkeypatch, stop_after=2)
    with pytest.raises(Interrupted):
        cell(model, mode, attack, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1, "the two finished batches were kept"
    seeds = counting_run_attack(monkeypatch)
    resumed = cell(model, mode, attack, checkpoint_dir=tmp_path)
    assert seeds == [2], "only the third batch (seed + 2) was attacked again"
    assert resumed["resumed_batches"] == 2
    assert evaluation.comparable(resumed) == evaluation.comparable(uninterrupted[which])
    assert not list(tmp_path.glob("*.json")), "a finished cell's checkpoint is removed"


def interrupted_checkpoint(monkeypatch, tmp_path):
    counting_run_attack(monkeypatch, stop_after=1)
    with pytest.raises(Interrupted):
        cell(checkpoint_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(fingerprint="0" * 64), "have changed since"),
    (lambda d: d.update(key="mnist/another/cell"), "not this cell's"),
    (lambda d: d["batches"][0].pop("adv"), "adv"),
    (lambda d: d["batches"][0]["clean"][0].pop(), "do not fit"),
    (lambda d: (d.clear(), d.update(schema=None)), "not this cell's"),
])
def test_a_checkpoint_that_does_not_fit_is_not_used(monkeypatch, tmp_path, uninterrupted, damage, message):
    path = interrupted_checkpoint(monkeypatch, tmp_path)
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    seeds = counting_run_attack(monkeypatch)
    with pytest.warns(UserWarning, match=message):
        record = cell(checkpoint_dir=tmp_path)
    assert seeds == [0, 1, 2] and "resumed_batches" not in record
    assert evaluation.comparable(record) == evaluation.comparable(uninterrupted["classical"])


def test_a_corrupt_checkpoint_is_not_used_and_fresh_ignores_a_good_one(monkeypatch, tmp_path, uninterrupted):
    path = interrupted_checkpoint(monkeypatch, tmp_path)
    good = path.read_bytes()
    for damaged in (good[: len(good) // 2], b"[]"):
        path.write_bytes(damaged)
        seeds = counting_run_attack(monkeypatch)
        with pytest.warns(UserWarning, match="not used"):
            cell(checkpoint_dir=tmp_path)
        assert seeds == [0, 1, 2]
    path.write_bytes(good)
    seeds = counting_run_attack(monkeypatch)
    record = cell(checkpoint_dir=tmp_path, resume=False)
    assert seeds == [0, 1, 2] and "resumed_batches" not in record
    assert evaluation.comparable(record) == evaluation.comparable(uninterrupted["classical"])


def test_batch_results_round_trip_through_json_bit_for_bit(tmp_path):
    gen = torch.Generator().manual_seed(0)
    batch = BatchResult(clean=[torch.randint(0, 10, (5,), generator=gen) for _ in range(3)],
                        adv=[torch.randint(0, 10, (5,), generator=gen) for _ in range(3)],
                        linf=torch.rand(5, generator=gen), l2=torch.rand(5, generator=gen) * 7,
                        l0_pixels=torch.randint(0, 784, (5,), generator=gen), seconds=1 / 3, forwards=50.0,
                        backwards=1e-7 / 3, surrogate_forwards=None, surrogate_backwards=2 / 7)
    checkpoint = BatchCheckpoint(tmp_path, "a/key", "f" * 64)
    checkpoint.save([batch, batch])
    (back, again) = checkpoint.load()
    for loaded in (back, again):
        for name in ("linf", "l2", "l0_pixels"):
            assert torch.equal(getattr(loaded, name), getattr(batch, name)), name
            assert getattr(loaded, name).dtype == getattr(batch, name).dtype
        assert all(torch.equal(a, b) for a, b in zip(loaded.clean + loaded.adv, batch.clean + batch.adv, strict=True))
        assert (loaded.seconds, loaded.backwards, loaded.surrogate_forwards, loaded.surrogate_backwards) == (
            batch.seconds, batch.backwards, None, batch.surrogate_backwards)
    assert BatchCheckpoint(tmp_path, "a/key", "f" * 64, fresh=True).load() == []


def test_the_grid_reports_each_batch_a_running_cell_finishes(tmp_path):
    batch = BatchResult(clean=[torch.zeros(2, dtype=torch.long)], adv=[torch.ones(2, dtype=torch.long)],
                        linf=torch.zeros(2), l2=torch.zeros(2), l0_pixels=torch.zeros(2, dtype=torch.long),
                        seconds=1.0, forwards=2.0, backwards=2.0)
    watch = ProgressWatch(tmp_path / "cells")
    assert watch.news() == [], "no folder yet"
    first, second = BatchCheckpoint(tmp_path / "cells", "a/cell", "f"), BatchCheckpoint(tmp_path / "cells", "b", "f")
    first.save([batch], total=4)
    (tmp_path / "cells" / "other.json").write_text("{not json")
    assert watch.news() == ["a/cell: batch 1 of 4 done"]
    assert watch.news() == [], "said once"
    first.save([batch, batch], total=4)
    second.save([batch])
    assert set(watch.news()) == {"a/cell: batch 2 of 4 done", "b: batch 1 done"}
    only_b = ProgressWatch(tmp_path / "cells", keys=["b"])
    assert only_b.news() == ["b: batch 1 done"], "another run's cell is not reported"
    (tmp_path / "cells" / "list.json").write_text("[]")
    second.save([batch, batch])
    assert only_b.news() == ["b: batch 2 done"]
