"""The grid runner (qshield_core/grid.py): the grid file plans the committed cells; on a local Dask
cluster of 2 workers cells give the records of a serial run, models stay loaded in the workers, a
killed worker costs nothing but time, and a failing cell is retried, then reported.

One cluster serves the whole module (its start-up is most of this file's time)."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import dask
import pytest
import torch
import yaml
from conftest import require_samples

from qshield_core import evaluation, grid
from qshield_core.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = """
seed = 0
source = "samples"

[[stage]]
name = "tiny"
out = "tiny.json"

[[stage.run]]
datasets = ["mnist"]
models = ["classical", "hybrid-full"]
grad_modes = ["paper", "differentiable"]
attacks = ["none", "fgsm"]
n = 20
"""


def write_grid(folder: Path, text: str = TINY) -> Path:
    path = folder / "grid.toml"
    path.write_text(text)
    return path


def tiny_jobs(folder: Path) -> list[grid.Job]:
    return grid.plan(grid.load_grid(write_grid(folder)), out_dir=folder)


def records_by_key(path: Path) -> dict[str, dict]:
    records = evaluation.load_results(path)
    assert len({r["key"] for r in records}) == len(records), "a key is in the file more than once"
    return {r["key"]: r for r in records}


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, dict]:
    """The six tiny cells run serially in this process (evaluation.run_cells), one torch thread as on a worker."""
    require_samples()
    folder = tmp_path_factory.mktemp("serial")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation.run_cells([j.cell for j in tiny_jobs(folder)], folder / "serial.json", progress=False, log=None)
    finally:
        torch.set_num_threads(previous)
    return records_by_key(folder / "serial.json")


@pytest.fixture(scope="module")
def client(serial):
    before = dict(os.environ)
    with grid.cluster(workers=2) as c:
        yield c
    assert dict(os.environ) == before  # the nannies' variables (PYTHONHASHSEED, ...) do not leak into later tests


# --------------------------------------------------------------------------- the grid file


def test_results_grid_plans_every_committed_cell_and_leaves_nothing_to_run():
    """grids/results.toml plans every record of the committed results files but the ResNet-18 study's, which
    grids/resnet18.toml writes into the same files, and against those files nothing is left to run (each record
    current with today's attack parameters) but the cells of models not trained yet (scripts/run_results.sh
    reports those and goes on)."""
    jobs = grid.plan(grid.load_grid(REPO / "grids/results.toml"), source="test")
    resnet18 = grid.plan(grid.load_grid(REPO / "grids/resnet18.toml"), source="test")
    outs = sorted({j.out for j in jobs})
    assert [o.name for o in outs] == ["adaptive.json", "paper-reproduction.json", "sanity.json"]
    for out in outs:
        planned = [j.cell.key for j in jobs if j.out == out]
        assert len(planned) == len(set(planned))
        by_resnet18 = {j.cell.key for j in resnet18 if j.out == out}
        assert not by_resnet18 & set(planned)
        committed = {r["key"] for r in evaluation.load_results(REPO / out)}
        assert committed <= set(planned) | by_resnet18, (out, sorted(committed - set(planned) - by_resnet18)[:5])
    shipped = [grid.Job(j.stage, REPO / j.out, j.cell) for j in jobs
               if (REPO / "pretrained" / f"{j.cell.dataset}-{j.cell.model}.json").is_file()]
    assert len(shipped) >= 392  # the five models of the paper's study on three datasets, at least
    todo, _ = grid.pending(shipped)
    assert [j.cell.key for j in todo] == []


def test_stage_defaults_eps_sets_and_filters(tmp_path):
    text = """
[eps]
pair = { mnist = ["32/255", 0.3], cifar10 = ["8/255"] }
[[stage]]
name = "a"
out = "a.json"
datasets = ["mnist", "cifar10"]
eps = "pair"
n = 10
[[stage.run]]
models = ["classical"]
attacks = ["fgsm", "none"]
[[stage.run]]
models = ["classical"]
attacks = ["fgsm"]
n = 5
"""
    g = grid.load_grid(write_grid(tmp_path, text))
    keys = [j.cell.key for j in grid.plan(g, source="samples")]
    assert len(keys) == (2 + 1 + 2) + (2 + 1)  # fgsm at MNIST's 2 eps and CIFAR-10's 1, clean on both; n = 5 fgsm
    assert "mnist/classical/-/fgsm/eps=0.125490/steps=preset/n=10/seed=0/fast/samples" in keys
    assert "cifar10/classical/-/fgsm/eps=0.031373/steps=preset/n=5/seed=0/fast/samples" in keys
    only = grid.plan(g, datasets=["MNIST"], source="samples", n=3, out_dir=tmp_path / "o")
    assert {j.cell.dataset for j in only} == {"mnist"} and {j.cell.n for j in only} == {3}
    assert {j.out for j in only} == {tmp_path / "o" / "a.json"}


def test_model_sets_expand_in_order_once_each(tmp_path):
    text = """
[models]
pair = ["hybrid-full", "classical"]
[[stage]]
name = "a"
out = "a.json"
datasets = ["mnist"]
n = 10
[[stage.run]]
models = ["classical", "pair"]
attacks = ["none"]
"""
    g = grid.load_grid(write_grid(tmp_path, text))
    assert g.stages[0].runs[0].models == ("classical", "hybrid-full")
    assert [j.cell.model for j in grid.plan(g, source="samples")] == ["classical", "hybrid-full"]


@pytest.mark.parametrize(("text", "message"), [
    ("models = ['classical']\n[[stage]]\nname='a'\nout='a.json'\n", "[models] must be a table"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['mnist']\nmodels=['classical']\n"
     "attacks=['fgsm']\nn=10\nmodles=['x']\n", "unknown key(s) modles"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['mnist']\nmodels=['classical']\n"
     "attacks=['fgsm']\nn=10\neps='wide'\n", "eps set 'wide' is not defined"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['mnist', 'cifar10']\nmodels=['classical']\n"
     "attacks=['fgsm']\nn=10\neps={mnist=[0.1]}\n", "eps gives no value for cifar10"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['mnist']\nmodels=['classical']\n"
     "attacks=['fgsm']\nn=10\neps=['8/0']\n", "not a number or fraction"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['imagenet']\nmodels=['classical']\n"
     "attacks=['fgsm']\nn=10\n", "Unknown dataset 'imagenet'"),
    ("[[stage]]\nname='a'\nout='a.json'\n[[stage.run]]\ndatasets=['mnist']\nmodels=['classical']\nn=10\n",
     "run 1: needs attacks"),
    ("seed = 0\n", "no [[stage]] found"),
    ("[[stage]\n", "not valid TOML"),
])
def test_bad_grid_files_are_refused_with_the_place(tmp_path, text, message):
    with pytest.raises(grid.GridError, match=re.escape(message)):
        grid.load_grid(write_grid(tmp_path, text))


def test_bad_plans_are_refused(tmp_path):
    g = grid.load_grid(write_grid(tmp_path))
    with pytest.raises(grid.GridError, match="no stage paper"):
        grid.plan(g, stages=["paper"])
    with pytest.raises(grid.GridError, match="no run has model"):
        grid.plan(g, models=["hybrid-ring"])
    bad = TINY.replace('"fgsm"', '"fgsmm"')
    with pytest.raises(grid.GridError, match="stage 'tiny', run 1"):
        grid.plan(grid.load_grid(write_grid(tmp_path, bad)))


def test_pending_skips_current_records_and_reruns_stale_ones(tmp_path, serial):
    jobs = tiny_jobs(tmp_path)
    stale = dict(serial[jobs[1].cell.key], params={"eps": 0.5})  # recorded with other attack parameters
    evaluation.save_results(jobs[0].out, [serial[jobs[0].cell.key], stale])
    todo, done = grid.pending(jobs)
    assert [j.cell.key for j in done] == [jobs[0].cell.key]
    assert [j.cell.key for j in todo] == [j.cell.key for j in jobs[1:]]
    assert grid.pending(jobs, replace=True)[0] == jobs


def test_the_writer_keeps_records_other_processes_added_to_its_file(tmp_path):
    """Two grids (or a grid and ``evaluate``) filling one results file: a writer opened before the
    other's record landed must not drop it when it writes its own (it once rewrote the file from
    the records it had read at its start)."""
    out = tmp_path / "adaptive.json"
    evaluation.save_results(out, [{"key": "a", "v": 1}])
    writer = grid.ResultsWriter([out])
    evaluation.merge_record(out, {"key": "b", "v": 2})  # another process, while this grid runs
    writer.add(out, {"key": "c", "v": 3})
    writer.add(out, {"key": "a", "v": 4})  # a rerun replaces its stale record in place
    assert evaluation.load_results(out) == [{"key": "a", "v": 4}, {"key": "b", "v": 2}, {"key": "c", "v": 3}]
    with pytest.raises(KeyError, match="not one of this grid's results files"):
        writer.add(tmp_path / "other.json", {"key": "d"})


def test_a_record_that_cannot_be_merged_is_kept_beside_its_file_and_reported(client, tmp_path):
    jobs = [j for j in tiny_jobs(tmp_path) if j.cell.model == "classical"][:1]
    jobs[0].out.write_text("{ edited by hand, not JSON")
    summary = grid.run_jobs(client, jobs, progress=False)
    [(key, message)] = summary.failed.items()
    assert key == jobs[0].cell.key and "could not be merged" in message and "not valid JSON" in message
    [aside] = tmp_path.glob(f"{jobs[0].out.stem}.unmerged-*.json")
    assert str(aside) in message
    assert [r["key"] for r in evaluation.load_results(aside)] == [key]
    assert jobs[0].out.read_text() == "{ edited by hand, not JSON"  # the file as it was left


def test_two_writers_in_parallel_lose_no_record(tmp_path):
    out = tmp_path / "results.json"
    writers = [grid.ResultsWriter([out]) for _ in range(2)]

    def fill(w: int) -> None:
        for i in range(25):
            writers[w].add(out, {"key": f"{w}-{i}"})

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["key"] for r in evaluation.load_results(out)) == sorted(f"{w}-{i}" for w in range(2)
                                                                          for i in range(25))


# --------------------------------------------------------------------------- on the cluster


def test_dask_yaml_holds_the_local_clusters_worker_settings(client):
    flat = {}
    for section, table in yaml.safe_load((REPO / "grids/dask.yaml").read_text())["distributed"].items():
        for key, value in table.items():
            for name, v in value.items():
                flat[f"distributed.{section}.{key}.{name}"] = v
    assert flat == grid.WORKER_CONFIG
    assert set(client.run(grid.start_environ, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
    # workers start with this process's thread settings (which change the last bits of torch's results)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PATH"):
        assert set(client.run(grid.start_environ, name).values()) == {os.environ.get(name)}
    assert set(client.run(dask.config.get, "distributed.worker.profile.enabled").values()) == {False}


def test_cells_on_the_cluster_equal_the_serial_run_and_models_stay_loaded(client, serial, tmp_path):
    jobs = tiny_jobs(tmp_path)
    first = grid.run_jobs(client, jobs, progress=False)
    assert first.failed == {} and sorted(first.ran) == sorted(serial)
    assert sum(first.cells_per_worker.values()) == 6
    on_file = records_by_key(jobs[0].out)
    assert {k: grid.comparable(r) for k, r in on_file.items()} == {k: grid.comparable(r) for k, r in serial.items()}
    assert all(r["torch_threads"] == 1 for r in on_file.values())
    # the same cells again, on the same worker processes: 12 cells, but no worker has loaded more than
    # the 3 models these cells use (the model cache outlives a task); records unchanged
    second = grid.run_jobs(client, jobs, progress=False)
    assert second.failed == {}
    workers = set(first.cells_per_worker) | set(second.cells_per_worker)
    assert len(workers) <= 2 and sum(second.cells_per_worker.values()) == 6  # so one ran at least 6 cells
    loaded = {**first.models_loaded, **second.models_loaded}
    assert set(loaded) == workers and max(loaded.values()) <= 3
    again = records_by_key(jobs[0].out)
    assert {k: grid.comparable(r) for k, r in again.items()} == {k: grid.comparable(r) for k, r in serial.items()}


def leave_marker(marker_dir: str) -> None:
    """A file holding this process's pid, written beside the folder and renamed into it whole (a watcher never
    reads a marker before its pid is in it)."""
    draft = Path(marker_dir).parent / f"{uuid.uuid4().hex}.draft"
    draft.write_text(str(os.getpid()))
    os.replace(draft, Path(marker_dir, draft.stem))


def slow_once(cell, *, marker_dir: str, slow_key: str, seconds: float, **kwargs):
    """Task body for the fault test: the first attempt at ``slow_key`` leaves a marker (its pid) and waits."""
    if cell.key == slow_key:
        first = not any(Path(marker_dir).iterdir())
        leave_marker(marker_dir)
        if first:
            time.sleep(seconds)
    return grid.evaluate_one(cell, **kwargs)


def stalls_after_one_batch(cell, *, marker_dir: str, slow_key: str, **kwargs):
    """Task body: the first attempt at ``slow_key`` finishes its first batch (which its checkpoint keeps), then
    leaves a marker and waits in its second, to be killed there."""
    if cell.key == slow_key and not any(Path(marker_dir).iterdir()):
        from qshield_core.evaluation import runner

        real, calls = runner.run_attack, []

        def run_attack(*args, **kw):
            if calls:
                leave_marker(marker_dir)
                time.sleep(120)
            calls.append(args[8])
            return real(*args, **kw)

        runner.run_attack = run_attack  # in this worker process only, which is killed
    return grid.evaluate_one(cell, **kwargs)


def kill_when_marked(client, marker_dir: Path, slow_key: str, seen: dict, timeout: float = 120.0) -> None:
    """Wait for the slow cell's marker, check that the scheduler has it processing on that worker, SIGKILL it."""
    deadline = time.monotonic() + timeout
    while not any(marker_dir.iterdir()):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    try:
        pid = int(next(marker_dir.iterdir()).read_text())
        address = next(a for a, p in grid.worker_pids(client).items() if p == pid)
        seen["processing"] = [k for k in client.processing(workers=[address])[address] if k.endswith(slow_key)]
        seen["pid"] = pid
        os.kill(pid, signal.SIGKILL)
    except Exception as err:  # reported by the test's assertion
        seen["error"] = repr(err)


def test_a_worker_killed_while_it_holds_a_cell(client, serial, tmp_path):
    jobs = tiny_jobs(tmp_path)
    slow_key = next(j.cell.key for j in jobs if j.cell.model == "hybrid-full" and j.cell.attack == "fgsm")
    markers = tmp_path / "markers"
    markers.mkdir()
    seen: dict = {}
    killer = threading.Thread(target=kill_when_marked, args=(client, markers, slow_key, seen), daemon=True)
    killer.start()
    summary = grid.run_jobs(client, jobs, progress=False, evaluate=functools.partial(
        slow_once, marker_dir=str(markers), slow_key=slow_key, seconds=20.0))
    killer.join(timeout=5)
    assert seen.get("processing"), f"the worker was not killed while it held the slow cell: {seen}"
    attempts = [int(p.read_text()) for p in markers.iterdir()]
    assert len(attempts) == 2 and seen["pid"] in attempts and len(set(attempts)) == 2  # rerun by another process
    assert summary.failed == {} and sorted(summary.ran) == sorted(serial)
    on_file = records_by_key(jobs[0].out)
    assert {k: grid.comparable(r) for k, r in on_file.items()} == {k: grid.comparable(r) for k, r in serial.items()}


def test_a_cell_whose_worker_is_killed_part_way_goes_on_from_its_finished_batches(client, tmp_path):
    """The cell's first batch is done and kept, then its worker is killed: the rerun on another process attacks
    the rest only, and its record is that of the cell run in one go (the randomised paper mode, 5 draws)."""
    job = next(j for j in tiny_jobs(tmp_path) if j.cell.model == "hybrid-full" and j.cell.grad_mode == "paper"
               and j.cell.attack == "fgsm")
    markers, checkpoints = tmp_path / "markers", tmp_path / "cells"
    markers.mkdir()
    seen: dict = {}
    killer = threading.Thread(target=kill_when_marked, args=(client, markers, job.cell.key, seen), daemon=True)
    killer.start()
    summary = grid.run_jobs(client, [job], progress=False, batch_size=8, checkpoint_dir=str(checkpoints),
                            evaluate=functools.partial(stalls_after_one_batch, marker_dir=str(markers),
                                                       slow_key=job.cell.key))
    killer.join(timeout=5)
    assert seen.get("processing"), f"the worker was not killed while it held the cell: {seen}"
    assert summary.failed == {} and summary.ran == [job.cell.key]
    (record,) = evaluation.load_results(job.out)
    assert record["resumed_batches"] == 1, "the rerun went on from the first batch (n = 20, batches of 8)"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as on a worker
    try:
        in_one_go = evaluation.evaluate_cell(job.cell.dataset, job.cell.model, job.cell.grad_mode, job.cell.attack,
                                             job.cell.eps, job.cell.n, job.cell.seed, source=job.cell.source,
                                             batch_size=8)
    finally:
        torch.set_num_threads(previous)
    assert grid.comparable(record) == grid.comparable(in_one_go)
    assert not list(checkpoints.iterdir()), "the finished cell's checkpoint is removed"


def remove_workers_when_marked(client, marker_dir: Path, timeout: float = 120.0) -> None:
    """Once the slow cell has started, close every worker for good, as a scheduler does with workers that stopped
    answering and whose restart failed."""
    deadline = time.monotonic() + timeout
    while not any(marker_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.cluster.scale(0)


def test_a_cluster_left_without_workers_stops_with_a_message_and_keeps_the_cells_done(serial, tmp_path):
    jobs = tiny_jobs(tmp_path)
    slow_key = jobs[-1].cell.key
    markers = tmp_path / "markers"
    markers.mkdir()
    with grid.cluster(workers=1) as lonely:
        remover = threading.Thread(target=remove_workers_when_marked, args=(lonely, markers), daemon=True)
        remover.start()
        with pytest.raises(grid.NoWorkersError, match="Run the same command again") as raised:
            grid.run_jobs(lonely, jobs, progress=False, no_worker_grace_s=3.0, evaluate=functools.partial(
                slow_once, marker_dir=str(markers), slow_key=slow_key, seconds=60.0))
        remover.join(timeout=5)
    on_file = records_by_key(jobs[0].out) if jobs[0].out.exists() else {}
    finished = int(re.search(r"(\d+) cell\(s\) finished", str(raised.value)).group(1))
    assert slow_key not in on_file and len(on_file) == finished
    assert {k: grid.comparable(r) for k, r in on_file.items()} == {k: grid.comparable(serial[k]) for k in on_file}


def fail_always(cell, *, marker_dir: str, bad_key: str, **kwargs):
    if cell.key == bad_key:
        Path(marker_dir, uuid.uuid4().hex).touch()
        raise RuntimeError("this cell always fails")
    return grid.evaluate_one(cell, **kwargs)


def test_a_failing_cell_is_retried_then_reported_and_the_others_finish(client, tmp_path):
    jobs = [j for j in tiny_jobs(tmp_path) if j.cell.model == "classical"]
    markers = tmp_path / "markers"
    markers.mkdir()
    bad = jobs[0].cell.key
    summary = grid.run_jobs(client, jobs, retries=1, progress=False,
                            evaluate=functools.partial(fail_always, marker_dir=str(markers), bad_key=bad))
    assert summary.failed == {bad: "RuntimeError: this cell always fails"}
    assert len(list(markers.iterdir())) == 2  # the first attempt and one retry
    assert list(records_by_key(jobs[0].out)) == [jobs[1].cell.key]


def test_cli_grid_runs_resumes_and_reports_failures(client, tmp_path, capsys):
    text = TINY.replace('models = ["classical", "hybrid-full"]', 'models = ["classical"]').replace(
        'out = "tiny.json"', f'out = {json.dumps(str(tmp_path / "cli.json"))}')
    path = write_grid(tmp_path, text)
    address = ["--address", client.scheduler.address, "--quiet"]
    assert main(["grid", str(path), *address]) == 0
    assert "2 cell(s) run" in capsys.readouterr().out
    assert len(records_by_key(tmp_path / "cli.json")) == 2
    assert main(["grid", str(path), *address]) == 0
    assert "0 cell(s) run" in capsys.readouterr().out
    empty = tmp_path / "no-models"
    empty.mkdir()
    assert main(["grid", str(path), *address, "--out-dir", str(tmp_path / "o"), "--model-dir", str(empty),
                 "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "2 cell(s) failed" in err and "mnist/classical/-/fgsm/" in err
    assert main(["grid", str(path), *address, "--workers", "2"]) == 2
    assert "--workers sizes a local cluster" in capsys.readouterr().err
