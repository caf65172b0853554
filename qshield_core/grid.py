"""Evaluation grids on Dask distributed: a declarative grid file, one task per cell, one writer.

A grid file (TOML, e.g. ``grids/results.toml``) lists *stages*; each writes one results file and
holds *runs*, each a product datasets x models x gradient modes x attacks x eps that
:func:`qshield_core.evaluation.plan_cells` expands into cells, exactly as ``evaluate`` does. Named
sets of eps (``[eps]``) and of models (``[models]``: a run's ``models`` may name a set, e.g. the
seeds of a study's designs) are defined once at the top.

:func:`run_grid` submits every cell that its file does not already hold with today's attack
parameters (:func:`qshield_core.evaluation.is_current`) as one Dask task. A task that raises is
retried ``retries`` times, and a task whose worker process dies is rescheduled on another one
(at most ``retries`` times too); after that it is reported with its error and the others finish.
Every task returns its record to the calling process, which alone writes the results files: each
record is merged into its file under the file's lock (:func:`qshield_core.evaluation.merge_record`), so
two grids, or a grid and ``evaluate``, can fill the same file without losing each other's records.

Models are loaded once per worker process: the evaluation's model cache lives in the worker and
outlives its tasks. Every task runs torch on one thread. Without an address a local cluster is
started and shut down at the end: one single-threaded worker process per core (:func:`cluster`).
With ``address`` (or ``DASK_SCHEDULER_ADDRESS``) a running cluster is used: ``dask scheduler`` on
one machine, and on each machine, from the root of this repository's checkout (with the datasets):
``PYTHONPATH=. DASK_CONFIG=grids/dask.yaml dask worker tcp://HOST:8786 --nworkers auto --nthreads 1``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
import tomllib
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cloudpickle
import dask
import torch
from distributed import Client, LocalCluster, wait
from tqdm.auto import tqdm

from . import evaluation
from .data import get_spec
from .evaluation.resume import ProgressWatch

VOLATILE_FIELDS = evaluation.VOLATILE_FIELDS
comparable = evaluation.comparable
"""Record fields that depend on when, where and how fast a cell ran (and a record without them)."""

DEFAULT_RETRIES = 2
NO_WORKER_GRACE_S = 120.0
"""How long :func:`run_jobs` waits while the cluster has no worker at all before it stops (the cells done are saved)."""
WATCH_INTERVAL_S = 5.0
WORKER_CONFIG = {
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536; any fixed value turns off glibc's adaptive mmap
    # threshold, so each large tensor is mmap'ed and unmapped anew: cells ran ~3x slower. Unset it.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # ... and OMP/MKL/OPENBLAS_NUM_THREADS=1: set when a process starts they change the last bits of
    # torch's float results (an input-gradient norm 0.15955121815 became 0.15955123305), so a worker would
    # not reproduce a serial run. Unset: workers start like `python -m qshield_core evaluate`, and every
    # task still runs torch on one thread (torch.set_num_threads).
    "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": None,
    "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": None,
    "distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS": None,
    # the statistical profiler samples the task thread every 10 ms: cells ran ~1.5x slower with it
    "distributed.worker.profile.enabled": False,
}
"""Dask settings of the local cluster's workers (``grids/dask.yaml`` holds the same for ``dask worker``)."""
_RUN_KEYS = ("datasets", "models", "grad_modes", "attacks", "eps", "n", "steps")
_STAGE_KEYS = ("name", "description", "out", "run", *_RUN_KEYS)
_GRID_KEYS = ("seed", "source", "backend", "eps", "models", "stage")
_SOURCES = ("auto", "test", "samples")


class GridError(ValueError):
    """A grid file that cannot be read or planned (the message names the file and the place)."""


class NoWorkersError(RuntimeError):
    """The cluster has had no worker for longer than the grace period: the run stops, the cells done are saved."""


# --------------------------------------------------------------------------- the grid file


@dataclass(frozen=True)
class Run:
    """One product of the grid: ``plan_cells(datasets, models, grad_modes, attacks, eps, n)``."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    grad_modes: tuple[str, ...]
    attacks: tuple[str, ...]
    eps: dict[str, tuple[float, ...]] | None  # by dataset; None: each dataset's paper eps
    n: int
    steps: int | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    out: Path
    runs: tuple[Run, ...]
    description: str = ""


@dataclass(frozen=True)
class Grid:
    path: Path
    stages: tuple[Stage, ...]
    seed: int = 0
    source: str = "auto"
    backend: str = "fast"


@dataclass(frozen=True)
class Job:
    """A planned cell and the results file of its stage."""

    stage: str
    out: Path
    cell: evaluation.Cell


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and check a grid file (unknown keys, types, dataset names and eps are errors here)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"Grid file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path} is not valid TOML ({err}).") from None
    _check_keys(data, _GRID_KEYS, f"{path}")
    eps_sets = data.get("eps", {})
    if not isinstance(eps_sets, dict):
        raise GridError(f"{path}: [eps] must be a table of named eps sets.")
    model_sets = data.get("models", {})
    if not isinstance(model_sets, dict):
        raise GridError(f"{path}: [models] must be a table of named model lists.")
    sets = {"eps": eps_sets, "models": {k: _strings(v, f"[models] {k}", str(path)) for k, v in model_sets.items()}}
    stages = data.get("stage")
    if not isinstance(stages, list) or not stages:
        raise GridError(f"{path}: no [[stage]] found.")
    parsed = tuple(_stage(raw, i, sets, path) for i, raw in enumerate(stages, 1))
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise GridError(f"{path}: stage names repeat ({', '.join(names)}).")
    source = data.get("source", "auto")
    if source not in _SOURCES:
        raise GridError(f"{path}: source must be one of {', '.join(_SOURCES)}, got {source!r}.")
    return Grid(path, parsed, seed=_int(data.get("seed", 0), "seed", str(path), 0), source=source,
                backend=str(data.get("backend", "fast")))


def _check_keys(table: dict, known: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise GridError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}.")


def _stage(raw, index: int, sets: dict, path: Path) -> Stage:
    where = f"{path}, stage {index}"
    if not isinstance(raw, dict):
        raise GridError(f"{where}: a stage must be a table.")
    _check_keys(raw, _STAGE_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise GridError(f"{where}: needs a name.")
    where = f"{path}, stage {name!r}"
    out = raw.get("out")
    if not isinstance(out, str) or not out:
        raise GridError(f"{where}: needs out (the results file it writes).")
    defaults = {k: raw[k] for k in _RUN_KEYS if k in raw}
    runs = raw.get("run", [{}] if defaults else [])
    if not isinstance(runs, list) or not runs:
        raise GridError(f"{where}: no [[stage.run]] found.")
    parsed = []
    for i, run in enumerate(runs, 1):
        if not isinstance(run, dict):
            raise GridError(f"{where}, run {i}: a run must be a table.")
        _check_keys(run, _RUN_KEYS, f"{where}, run {i}")
        parsed.append(_run({**defaults, **run}, sets, f"{where}, run {i}"))
    return Stage(name, Path(out), tuple(parsed), str(raw.get("description", "")))


def _run(raw: dict, sets: dict, where: str) -> Run:
    for key in ("datasets", "models", "attacks", "n"):
        if key not in raw:
            raise GridError(f"{where}: needs {key}.")
    try:
        datasets = tuple(get_spec(d).name for d in _strings(raw["datasets"], "datasets", where))
    except ValueError as err:
        raise GridError(f"{where}: {err}") from None
    steps = raw.get("steps")
    return Run(datasets, _models(raw["models"], sets["models"], where),
               _strings(raw.get("grad_modes", ["paper"]), "grad_modes", where),
               _strings(raw["attacks"], "attacks", where), _eps_table(raw.get("eps"), datasets, sets["eps"], where),
               _int(raw["n"], "n", where, 1), None if steps is None else _int(steps, "steps", where, 1))


def _strings(value, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise GridError(f"{where}: {key} must be a non-empty list of names, got {value!r}.")
    return tuple(value)


def _models(value, model_sets: dict[str, tuple[str, ...]], where: str) -> tuple[str, ...]:
    """Model names, each name of a set under [models] replaced by the set's models (in order, once each)."""
    names = _strings(value, "models", where)
    return tuple(dict.fromkeys(m for name in names for m in model_sets.get(name, (name,))))


def _int(value, key: str, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise GridError(f"{where}: {key} must be an integer of at least {low}, got {value!r}.")
    return value


def parse_eps(value, where: str = "eps") -> float:
    """An eps as a number, a decimal string (``"0.3"``) or a fraction of 255 (``"8/255"``), as the CLI reads it."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise GridError(f"{where}: not a number or fraction: {value!r}.")
    try:
        return float(Fraction(value.strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise GridError(f"{where}: not a number or fraction: {value!r}.") from None


def _eps_table(value, datasets: tuple[str, ...], eps_sets: dict, where: str) -> dict[str, tuple[float, ...]] | None:
    """eps by dataset, from a list (every dataset), a table by dataset, or the name of a set under [eps]."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in eps_sets:
            raise GridError(f"{where}: eps set {value!r} is not defined under [eps] ({', '.join(eps_sets) or 'none'}).")
        value = eps_sets[value]
    if isinstance(value, list):
        value = dict.fromkeys(datasets, value)
    if not isinstance(value, dict):
        raise GridError(f"{where}: eps must be a list, a table by dataset or the name of an eps set.")
    try:
        by_name = {get_spec(k).name: v for k, v in value.items()}
    except ValueError as err:
        raise GridError(f"{where}: eps: {err}") from None
    missing = [d for d in datasets if d not in by_name]
    if missing:
        raise GridError(f"{where}: eps gives no value for {', '.join(missing)}.")
    table = {}
    for d in datasets:
        values = by_name[d] if isinstance(by_name[d], list) else [by_name[d]]
        table[d] = tuple(parse_eps(v, f"{where}: eps of {d}") for v in values)
    return table


# --------------------------------------------------------------------------- planning


def plan(grid: Grid, stages: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
         models: Sequence[str] | None = None, *, out_dir: str | os.PathLike | None = None, source: str | None = None,
         n: int | None = None, data_root: str | None = None) -> list[Job]:
    """The grid's cells, stage by stage, as ``evaluate`` would plan them (suites expanded, attacks that
    do not apply left out, sources resolved); optionally only some stages, datasets or models, each
    stage's file moved into ``out_dir``, the source or the points per cell overridden."""
    chosen = _chosen_stages(grid, stages)
    wanted_datasets = None if datasets is None else {_dataset(d, grid) for d in datasets}
    if models is not None:
        known = {m for s in grid.stages for r in s.runs for m in r.models}
        unknown = [m for m in models if m not in known]
        if unknown:
            raise GridError(f"{grid.path}: no run has model(s) {', '.join(unknown)} "
                            f"(it has {', '.join(sorted(known))}).")
    if n is not None and n < 1:
        raise GridError(f"n must be at least 1, got {n}.")
    jobs: list[Job] = []
    for stage in chosen:
        out = stage.out if out_dir is None else Path(out_dir) / stage.out.name
        seen: set[evaluation.Cell] = set()
        for i, run in enumerate(stage.runs, 1):
            for cell in _run_cells(grid, run, wanted_datasets, models, source, n, data_root,
                                   f"{grid.path}, stage {stage.name!r}, run {i}"):
                if cell not in seen:
                    seen.add(cell)
                    jobs.append(Job(stage.name, out, cell))
    return jobs


def _chosen_stages(grid: Grid, stages: Sequence[str] | None) -> list[Stage]:
    if stages is None:
        return list(grid.stages)
    by_name = {s.name: s for s in grid.stages}
    unknown = [s for s in stages if s not in by_name]
    if unknown:
        raise GridError(f"{grid.path} has no stage {', '.join(unknown)} (stages: {', '.join(by_name)}).")
    return [by_name[s] for s in dict.fromkeys(stages)]


def _dataset(name: str, grid: Grid) -> str:
    try:
        return get_spec(name).name
    except ValueError as err:
        raise GridError(f"{grid.path}: {err}") from None


def _run_cells(grid: Grid, run: Run, datasets: set[str] | None, models: Sequence[str] | None, source: str | None,
               n: int | None, data_root: str | None, where: str) -> list[evaluation.Cell]:
    run_models = [m for m in run.models if models is None or m in models]
    cells: list[evaluation.Cell] = []
    for dataset in run.datasets:
        if (datasets is not None and dataset not in datasets) or not run_models:
            continue
        try:
            cells += evaluation.plan_cells([dataset], run_models, list(run.grad_modes), list(run.attacks),
                                           None if run.eps is None else list(run.eps[dataset]), n=n or run.n,
                                           seed=grid.seed, backend=grid.backend, steps=run.steps,
                                           source=source or grid.source, data_root=data_root)
        except ValueError as err:
            raise GridError(f"{where}: {err}") from None
    return cells


def pending(jobs: Sequence[Job], replace: bool = False) -> tuple[list[Job], list[Job]]:
    """(jobs to run, jobs already done): done when the stage's file holds the cell's key with the
    attack parameters it would use today (``is_current``); ``replace`` reruns everything."""
    by_out = {out: {r.get("key"): r for r in evaluation.load_results(out)} for out in {j.out for j in jobs}}
    done = [] if replace else [j for j in jobs if _is_done(by_out[j.out].get(j.cell.key), j.cell)]
    done_ids = {id(j) for j in done}
    return [j for j in jobs if id(j) not in done_ids], done


def _is_done(record: dict | None, cell: evaluation.Cell) -> bool:
    return record is not None and evaluation.is_current(record, cell)


# --------------------------------------------------------------------------- the cluster


def local_cores() -> int:
    """The cores this process may run on."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_cluster_options(address: str | None, workers: int | None) -> str | None:
    """The scheduler address to use (``address``, else ``DASK_SCHEDULER_ADDRESS``; None: a local cluster),
    after checking that ``workers`` (the local cluster's size) is not given with one."""
    address = address or dask.config.get("scheduler-address", None)
    if address and workers is not None:
        raise ValueError("--workers sizes a local cluster; with an address the cluster's own workers run the grid.")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    return address or None


@contextlib.contextmanager
def cluster(address: str | None = None, workers: int | None = None, retries: int = DEFAULT_RETRIES) -> Iterator[Client]:
    """A client of the cluster at ``address`` (else ``DASK_SCHEDULER_ADDRESS``), or of a local cluster of
    ``workers`` single-threaded worker processes (default: one per core) that is shut down on exit.

    On the local cluster a task whose worker dies is rescheduled at most ``retries`` times; a remote
    scheduler uses its own ``distributed.scheduler.allowed-failures`` (default 3)."""
    address = check_cluster_options(address, workers)
    if address:
        with _remote_client(address) as client:
            yield client
        return
    workers = local_cores() if workers is None else workers
    saved = dict(os.environ)  # the nannies write their workers' variables into this process's environment
    try:
        with (dask.config.set({**WORKER_CONFIG, "distributed.scheduler.allowed-failures": retries}),
              LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR) as local,
              Client(local) as client):
            yield client
    finally:
        _restore_environ(saved)


def _restore_environ(saved: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    os.environ.update(saved)


@contextlib.contextmanager
def _remote_client(address: str, wait_s: float = 60.0) -> Iterator[Client]:
    try:
        client = Client(address, timeout="20s")
    except OSError as err:
        raise ValueError(f"No Dask scheduler answers at {address} ({err}); start one with `dask scheduler`.") from None
    try:
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except TimeoutError:
            raise ValueError(f"The scheduler at {address} has no worker after {wait_s:.0f} s; start some from the "
                             f"repository root with `PYTHONPATH=. DASK_CONFIG=grids/dask.yaml dask worker {address} "
                             "--nworkers auto --nthreads 1`.") from None
        _check_workers(client, address)
        yield client
    finally:
        client.close()


def _check_workers(client: Client, address: str) -> None:
    """Refuse workers that cannot run this module's tasks; warn about a setting that slows them."""
    reports = client.run(_CHECK)
    broken = {w: r["error"] for w, r in reports.items() if r["error"]}
    if broken:
        worker, error = next(iter(broken.items()))
        raise ValueError(f"{len(broken)} worker(s) at {address} cannot run qshield_core.grid (e.g. {worker}: {error}); "
                         "start them from the repository root with PYTHONPATH=., and restart them after updating it.")
    trims = {r["malloc_trim"] for r in reports.values()} - {None}
    if trims:
        warnings.warn(f"The workers at {address} run with MALLOC_TRIM_THRESHOLD_={trims.pop()}, which slows torch "
                      "about 3x; start them with DASK_CONFIG=grids/dask.yaml.", stacklevel=4)


def start_environ(name: str) -> str | None:
    """The value of environment variable ``name`` when this process started (what glibc read; Dask's
    workers drop some variables from ``os.environ`` later)."""
    try:
        entries = Path("/proc/self/environ").read_bytes().split(b"\0")
    except OSError:
        return os.environ.get(name)
    prefix = name.encode() + b"="
    return next((e[len(prefix):].decode() for e in entries if e.startswith(prefix)), None)


def worker_pids(client: Client) -> dict[str, int]:
    """The process id of every worker, by worker address (each worker asked, also while it runs a task)."""
    return client.run(os.getpid)


# --------------------------------------------------------------------------- tasks


def evaluate_one(cell: evaluation.Cell, **cell_kwargs) -> dict:
    """The default task body: :func:`qshield_core.evaluation.evaluate_cell` of one cell."""
    return evaluation.evaluate_cell(cell.dataset, cell.model, cell.grad_mode, cell.attack, cell.eps, cell.n,
                                    cell.seed, steps=cell.steps, backend=cell.backend, source=cell.source,
                                    **cell_kwargs)


def model_cache_info() -> dict | None:
    """Hits and misses of this process's model cache (the evaluation's ``lru_cache`` of loaded models),
    None where it cannot be found."""
    return evaluation.model_cache_info()


def _opaque_call() -> Callable[[bytes], dict]:
    """A function that calls what its argument holds, pickled: ``func(*args)`` for ``(func, args)``.

    The scheduler unpickles every task it receives; submitted as ``call(cloudpickle.dumps((_task, args)))``,
    a task holds only this function (sent by value: it cannot be imported by name) and bytes, so the
    scheduler needs no qshield_core, and any ``dask scheduler`` of the same Dask version serves."""

    def call(payload: bytes) -> dict:
        import cloudpickle

        func, args = cloudpickle.loads(payload)
        return func(*args)

    return call


_CALL = _opaque_call()


def _worker_check() -> Callable[[], dict]:
    """A check run on each worker, sent by value (it must run where qshield_core does not import)."""

    def check() -> dict:
        try:
            from qshield_core import grid

            return {"error": None, "malloc_trim": grid.start_environ("MALLOC_TRIM_THRESHOLD_")}
        except Exception as err:
            return {"error": f"{type(err).__name__}: {err}", "malloc_trim": None}

    return check


_CHECK = _worker_check()


def _task(cell: evaluation.Cell, evaluate: Callable[..., dict], cell_kwargs: dict) -> dict:
    """What runs on a worker: one cell (torch on one thread: a worker thread is one core's worth), its
    record, and where and how long it ran."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    record = evaluate(cell, **cell_kwargs)
    return {"record": record, "seconds": time.perf_counter() - start,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "model_cache": model_cache_info()}


# --------------------------------------------------------------------------- the run


@dataclass
class GridSummary:
    """What a run did: cells run, skipped (already done) and failed (key: error), and per worker
    process the cells it ran and the models it loaded."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cells_per_worker: dict[str, int] = field(default_factory=dict)
    models_loaded: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class ResultsWriter:
    """The grid's writer of its results files: each record it receives is merged into its stage's file
    (:func:`qshield_core.evaluation.merge_record`: the file re-read and rewritten atomically under its
    lock, the stale record of the same key replaced), so records that another process (a second grid,
    ``evaluate``) wrote to the same file while this grid ran are kept."""

    def __init__(self, outs: Iterable[Path]) -> None:
        self.outs = tuple(dict.fromkeys(outs))

    def add(self, out: Path, record: dict) -> None:
        if out not in self.outs:
            raise KeyError(f"{out} is not one of this grid's results files")
        evaluation.merge_record(out, record)

    @staticmethod
    def keep_aside(out: Path, record: dict) -> Path:
        """Save a record that could not be merged into ``out`` (e.g. the file was edited into invalid JSON
        while the grid ran) as a results file of its own beside it; returns its path."""
        digest = hashlib.sha256(str(record.get("key")).encode()).hexdigest()[:12]
        aside = out.with_name(f"{out.stem}.unmerged-{digest}.json")
        evaluation.save_results(aside, [record])
        return aside


def run_jobs(client: Client, jobs: Sequence[Job], *, retries: int = DEFAULT_RETRIES,
             evaluate: Callable[..., dict] = evaluate_one, progress: bool = True,
             log: Callable[[str], None] | None = None, no_worker_grace_s: float = NO_WORKER_GRACE_S,
             checkpoint_dir: str | None = None, **cell_kwargs) -> GridSummary:
    """Run ``jobs`` as tasks on ``client``'s cluster and write each record to its stage's file as it arrives.

    ``evaluate(cell, **cell_kwargs) -> record`` is the task body (it must be importable or picklable
    on the workers); ``checkpoint_dir``, where the cells keep their finished batches, is passed on to it
    as well, and the log says each batch a running cell finishes. No job is skipped here: see
    :func:`pending`. A killed worker's cell is rerun on another (or on the worker its nanny restarts); a
    cluster left with no worker at all for ``no_worker_grace_s`` (e.g. a worker that stopped answering was
    removed and could not be restarted) raises :class:`NoWorkersError` instead of waiting for ever."""
    summary, start = GridSummary(), time.perf_counter()
    if checkpoint_dir is not None:
        cell_kwargs = {**cell_kwargs, "checkpoint_dir": checkpoint_dir}
    writer = ResultsWriter(j.out for j in jobs)
    run_id = uuid.uuid4().hex[:8]
    futures = {client.submit(_CALL, cloudpickle.dumps((_task, (job.cell, evaluate, cell_kwargs))), pure=False,
                             key=f"qshield-cell-{run_id}-{i}:{job.cell.key}", retries=retries): job
               for i, job in enumerate(jobs)}
    watch = _WorkerWatch(client, no_worker_grace_s)
    batches = None if checkpoint_dir is None else ProgressWatch(checkpoint_dir, keys=(j.cell.key for j in jobs))
    with tqdm(total=len(jobs), desc="grid", unit="cell", disable=not progress) as bar:
        say = log or (bar.write if progress else None)
        while futures:
            for line in batches.news() if batches is not None and say is not None else ():
                say(f"  {line}")
            finished = _wait_some(futures, min(WATCH_INTERVAL_S, max(no_worker_grace_s, 0.1)))
            for future in finished:
                job = futures.pop(future)
                line = _collect(future, job, writer, summary)
                bar.update(1)
                if say is not None:
                    say(f"[{bar.n}/{len(jobs)}] {line}")
            if not finished and not watch.workers_seen():
                client.cancel(list(futures))
                raise NoWorkersError(
                    f"no worker has been connected for {no_worker_grace_s:.0f} s (a worker that stops answering is "
                    f"removed by the scheduler, and one whose restart fails is not replaced); {len(summary.ran)} "
                    f"cell(s) finished in this run are saved, {len(futures)} did not run. Run the same command "
                    "again to resume.")
    summary.seconds = time.perf_counter() - start
    return summary


def _wait_some(futures: Mapping, timeout_s: float) -> list:
    """The futures among ``futures`` that are done within ``timeout_s`` (none when that time runs out)."""
    try:
        return list(wait(list(futures), timeout=timeout_s, return_when="FIRST_COMPLETED").done)
    except TimeoutError:
        return []


class _WorkerWatch:
    """Whether a cluster has had a worker within the last ``grace_s`` seconds."""

    def __init__(self, client: Client, grace_s: float) -> None:
        self.client, self.grace_s = client, grace_s
        self.last_seen = time.monotonic()

    def workers_seen(self) -> bool:
        if self.client.nthreads():
            self.last_seen = time.monotonic()
        return time.monotonic() - self.last_seen < self.grace_s


def _collect(future, job: Job, writer: ResultsWriter, summary: GridSummary) -> str:
    """Take one finished task: write its record, or note its error. Returns its progress line."""
    if future.status != "finished":
        err = future.exception()
        summary.failed[job.cell.key] = f"{type(err).__name__}: {err}"
        future.release()
        return f"FAILED {job.cell.key}: {summary.failed[job.cell.key]}"
    result = future.result()
    future.release()
    try:
        writer.add(job.out, result["record"])
    except (ValueError, OSError) as err:  # the file is unreadable or unwritable: keep the cell's work
        aside = writer.keep_aside(job.out, result["record"])
        summary.failed[job.cell.key] = f"its record could not be merged into {job.out} ({err}); it is kept in {aside}"
        return f"FAILED {job.cell.key}: {summary.failed[job.cell.key]}"
    summary.ran.append(job.cell.key)
    worker = result["worker"]
    summary.cells_per_worker[worker] = summary.cells_per_worker.get(worker, 0) + 1
    if result["model_cache"] is not None:
        summary.models_loaded[worker] = max(summary.models_loaded.get(worker, 0), result["model_cache"]["misses"])
    return f"{job.cell.key}: {result['seconds']:.1f} s on {worker}"


def run_grid(jobs: Sequence[Job], *, address: str | None = None, workers: int | None = None,
             retries: int = DEFAULT_RETRIES, replace: bool = False, limit: int | None = None,
             evaluate: Callable[..., dict] = evaluate_one, progress: bool = True,
             log: Callable[[str], None] | None = None, **cell_kwargs) -> GridSummary:
    """Run the jobs not yet done (:func:`pending`) on a cluster (:func:`cluster`); starts none when
    nothing is left to do. ``cell_kwargs`` go to every cell (data_root, model_dir, command, ...)."""
    todo, done = pending(jobs, replace)
    if limit is not None:
        todo = todo[: max(limit, 0)]
    if not todo:
        return GridSummary(skipped=[j.cell.key for j in done])
    with cluster(address, workers, retries) as client:
        summary = run_jobs(client, todo, retries=retries, evaluate=evaluate, progress=progress, log=log,
                           **cell_kwargs)
    summary.skipped = [j.cell.key for j in done]
    return summary


__all__ = [
    "DEFAULT_RETRIES", "NO_WORKER_GRACE_S", "VOLATILE_FIELDS", "WORKER_CONFIG", "Grid", "GridError", "GridSummary",
    "Job", "NoWorkersError",
    "ResultsWriter", "Run", "Stage", "check_cluster_options", "cluster", "comparable",
    "evaluate_one", "load_grid", "local_cores", "model_cache_info", "parse_eps", "pending", "plan", "run_grid",
    "run_jobs", "start_environ", "worker_pids",
]
