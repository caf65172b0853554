"""Benchmark: a grid of cells run serially against the same cells on a local Dask cluster, and the
engine's overhead per task, measured in one run (read the ratios, not the seconds, on a shared machine).

    python bench/bench_grid.py                       # 8 MNIST cells on the shipped samples, 2 workers
    python bench/bench_grid.py --workers 2 --n 100 --json results/bench_grid.json

Serial is :func:`qshield_core.evaluation.run_cells` in this process (torch on one thread, as on a
worker); the engine is :func:`qshield_core.grid.run_jobs` on a local cluster started once (its
start-up, worker processes importing torch, is reported apart). The two alternate ``--repeats``
times so that both see the same load from other work. The engine's per-task overhead is measured
with no-op tasks, through the grid runner (which rewrites the results file after every record) and
through Dask alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core import evaluation, grid, zoo

GRID = """
seed = 0
source = "samples"

[[stage]]
name = "bench"
out = "bench.json"

[[stage.run]]
datasets = ["mnist"]
models = ["classical", "hybrid-full"]
grad_modes = ["paper"]
attacks = ["none", "fgsm", "pgd", "apgd"]
n = {n}
"""


def noop_cell(cell, **kwargs) -> dict:
    """A task body that computes nothing: its record is only a key."""
    return {"key": uuid.uuid4().hex}


def noop(i: int) -> int:
    return i


def model_load_seconds(models: list[str]) -> dict[str, float]:
    """Seconds to load each model from the zoo (what every new worker process pays once per model)."""
    out = {}
    for model in models:
        start = time.perf_counter()
        zoo.load_model("mnist", model, grad_mode="paper")
        out[model] = time.perf_counter() - start
    return out


def overhead(client, folder: Path, tasks: int) -> dict[str, float]:
    """Milliseconds per no-op task: through the grid runner (one results-file write per task) and Dask alone."""
    cell = evaluation.Cell("mnist", "classical", None, "none", None, 1, source="samples")
    jobs = [grid.Job("noop", folder / "noop.json", cell) for _ in range(tasks)]
    start = time.perf_counter()
    grid.run_jobs(client, jobs, evaluate=noop_cell, progress=False)
    runner_ms = 1000 * (time.perf_counter() - start) / tasks
    client.gather([client.submit(noop, -1, pure=False)])
    start = time.perf_counter()
    client.gather([client.submit(noop, i, pure=False) for i in range(tasks)])
    dask_ms = 1000 * (time.perf_counter() - start) / tasks
    return {"grid_runner_ms_per_task": runner_ms, "dask_ms_per_task": dask_ms}


def serial_run(jobs: list[grid.Job], path: Path) -> float:
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    evaluation.run_cells([j.cell for j in jobs], path, progress=False, log=None)
    return time.perf_counter() - start


def engine_run(client, jobs: list[grid.Job]) -> tuple[float, grid.GridSummary]:
    jobs[0].out.unlink(missing_ok=True)
    start = time.perf_counter()
    summary = grid.run_jobs(client, jobs, progress=False)
    return time.perf_counter() - start, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=100, help="points per cell (the samples hold 100 MNIST images)")
    parser.add_argument("--repeats", type=int, default=2, help="serial and engine runs, interleaved (default 2)")
    parser.add_argument("--noop-tasks", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
        return measure(args, Path(tmp))


def measure(args: argparse.Namespace, folder: Path) -> int:
    """Run the benchmark in ``folder``, print the figures (and write them to ``--json``)."""
    (folder / "grid.toml").write_text(GRID.format(n=args.n))
    jobs = grid.plan(grid.load_grid(folder / "grid.toml"), out_dir=folder)
    loads = model_load_seconds(["classical", "hybrid-full"])

    start = time.perf_counter()
    with grid.cluster(workers=args.workers) as client:
        client.run(lambda: __import__("qshield_core.evaluation"))  # the workers are up and have imported torch
        startup_s = time.perf_counter() - start
        serial_s, engine_s = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same load from other work on the machine
            serial_s.append(serial_run(jobs, folder / "serial.json"))
            seconds, summary = engine_run(client, jobs)
            engine_s.append(seconds)
        costs = overhead(client, folder, args.noop_tasks)

    serial = {r["key"]: grid.comparable(r) for r in evaluation.load_results(folder / "serial.json")}
    engine = {r["key"]: grid.comparable(r) for r in evaluation.load_results(jobs[0].out)}
    sizes = [len(json.dumps(r)) for r in evaluation.load_results(jobs[0].out)]
    ratios = [s / e for s, e in zip(serial_s, engine_s, strict=True)]
    figures = {
        "cells": len(jobs), "workers": args.workers, "n": args.n, "load_average_at_end": os.getloadavg()[0],
        "serial_s": serial_s, "engine_s": engine_s, "engine_startup_s": startup_s,
        "speedup": ratios, "speedup_median": statistics.median(ratios),
        "speedup_first_incl_startup": serial_s[0] / (engine_s[0] + startup_s),
        "records_equal": serial == engine, "failed": len(summary.failed),
        "model_load_s": loads, "models_loaded_per_worker": summary.models_loaded,
        "cells_per_worker": summary.cells_per_worker, "record_bytes_mean": statistics.mean(sizes), **costs,
    }
    print(f"{len(jobs)} cells (MNIST samples, n={args.n}), {args.workers} local workers, torch 1 thread each; "
          f"load average {figures['load_average_at_end']:.1f} at the end")
    print("serial " + ", ".join(f"{s:.1f}" for s in serial_s) + " s | engine " + ", ".join(f"{s:.1f}" for s in engine_s)
          + f" s (+ {startup_s:.1f} s cluster start-up, once) | speed-up " + ", ".join(f"{r:.2f}x" for r in ratios)
          + f" (first run with start-up {figures['speedup_first_incl_startup']:.2f}x) | records equal: "
          f"{figures['records_equal']}")
    print(f"per no-op task: {costs['grid_runner_ms_per_task']:.1f} ms through the grid runner, "
          f"{costs['dask_ms_per_task']:.2f} ms through Dask alone | model load: "
          + ", ".join(f"{m} {s:.2f} s" for m, s in loads.items())
          + f" | record {figures['record_bytes_mean'] / 1024:.1f} KiB")
    print(f"models loaded / cells, per worker (last run): {summary.models_loaded} / {summary.cells_per_worker}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if figures["records_equal"] and not summary.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
