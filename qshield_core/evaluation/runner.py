"""The runner: one function attacks a set of points and returns its record, for the CLI's cells and
the app's sweeps alike.

One *cell* is (dataset, model, gradient mode, attack, epsilon, n, seed, source): a seeded,
class-balanced set of test points, attacked in batches, measured, and written as one record
(:class:`~qshield_core.evaluation.records.Record`). Cells are independent, so a list of them can be
spread over processes or machines and merged.

Seeding: batch i of a cell is attacked inside ``rng.seeded(seed + i)`` and its clean and adversarial
predictions are taken inside ``rng.seeded(seed + i + EVAL_SEED_OFFSET)``: in the stochastic
``paper`` mode (a fresh random projection at every forward pass) the clean and the adversarial
predictions of a batch share one random draw, so an image the attack leaves unchanged keeps its
prediction. Every scope holds the process-wide RNG lock (:mod:`qshield_core.rng`), so results do not
depend on what other threads run.

A randomised model (the paper mode) is judged over several draws of its randomness (AutoAttack's
advice for randomised defences, Croce et al. 2022): the same adversarial images are classified
again under ``draws - 1`` further seeds, and the record gives mean and spread over the draws. Draw
0 is the protocol's own and the one the per-point outcomes keep.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import rng
from ..attacks import ATTACKS, build_from_params, expand_attacks, get_attack, resolve_params, validate_eps
from ..data import get_spec
from ..models import QShieldHybrid, classical_of, input_gradient_norm, is_hybrid_name
from .metrics import attack_metrics, format_interval, format_percent, pack_bits, perturbation_norms, spread
from .passes import DEFAULT_SHOTS, CountingModel, projected_circuit_executions
from .points import EvalPoints, evaluation_points, resolve_source
from .records import RECORD_SCHEMA, Cell, Record, cell_key, is_current, load_results, merge_record
from .resume import BatchCheckpoint, BatchResult, fingerprint

EVAL_SEED_OFFSET = 7919
DRAW_SEED_STRIDE = 1_000_003
"""Draw d of a randomised model's predictions uses the protocol's seed + d x this stride."""
DEFAULT_DRAWS = 5
"""Draws of a randomised model's randomness each cell is judged over (1 for a deterministic model)."""
PROTOCOL_NOTE = (
    "robust accuracy = correct before and after the attack, over all n points; ASR = misclassified after the "
    "attack among the points correct before it; 95 % Wilson intervals; in the stochastic paper mode the clean "
    "and adversarial predictions of a batch share one random draw"
)


class Cancelled(Exception):
    """Raised by the runner when its ``should_stop`` callback says so (between batches)."""


# --------------------------------------------------------------------------- one attack


@dataclass
class AttackOutcome:
    """What one attack on one batch produced and cost (the app's Attack Lab shows this)."""

    attack: str
    params: dict
    labels: torch.Tensor
    adv_images: torch.Tensor
    clean_pred: torch.Tensor
    adv_pred: torch.Tensor
    clean_probs: torch.Tensor
    adv_probs: torch.Tensor
    seconds: float
    seconds_per_image: float
    forwards_per_image: float
    backwards_per_image: float
    surrogate_forwards_per_image: float | None = None
    surrogate_backwards_per_image: float | None = None

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.labels

    @property
    def adv_correct(self) -> torch.Tensor:
        return self.adv_pred == self.labels

    @property
    def flipped(self) -> torch.Tensor:
        """Correct before the attack, wrong after it (per image)."""
        return self.clean_correct & ~self.adv_correct


def is_randomised(model: nn.Module) -> bool:
    """Whether two identical forward passes of ``model`` may differ (the hybrid's paper mode)."""
    inner = getattr(model, "model", model)
    return bool(getattr(inner, "randomised", False))


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Class probabilities, computed inside ``rng.seeded(seed)`` (fixes the paper mode's draw)."""
    with rng.seeded(seed):
        return F.softmax(model(images).float(), dim=-1)


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack_name: str, dataset: str,
               eps: float | None = None, steps: int | None = None, surrogate: nn.Module | None = None, seed: int = 0,
               params: dict | None = None, **overrides) -> AttackOutcome:
    """Attack one batch and measure it: predictions before/after, wall time, counted passes.

    ``surrogate`` is the model the gradient is taken on for transfer and BPDA attacks. The attack
    runs inside ``rng.seeded(seed)`` and each of the clean and adversarial evaluations inside
    ``rng.seeded(seed + EVAL_SEED_OFFSET)``. ``params`` gives fully resolved attack parameters
    (instead of ``eps``, ``steps`` and ``overrides``), e.g. for a check outside the app's eps range.
    Cheap enough for a single image.
    """
    params = params if params is not None else resolve_params(attack_name, dataset, eps, steps, seed, **overrides)
    target = CountingModel(model)
    counted_surrogate = CountingModel(surrogate) if surrogate is not None else None
    attack = build_from_params(attack_name, target, dataset, params, counted_surrogate)
    clean_probs = predict_probs(model, images, seed + EVAL_SEED_OFFSET)
    with rng.seeded(seed):
        start = time.perf_counter()
        adv_images = attack(images, labels).detach()
        seconds = time.perf_counter() - start
    adv_probs = predict_probs(model, adv_images, seed + EVAL_SEED_OFFSET)
    for m in (model, surrogate):
        if m is not None:
            m.zero_grad(set_to_none=True)
    n = max(int(images.shape[0]), 1)
    return AttackOutcome(
        attack=get_attack(attack_name).name, params=params, labels=labels.clone(), adv_images=adv_images,
        clean_pred=clean_probs.argmax(-1), adv_pred=adv_probs.argmax(-1), clean_probs=clean_probs,
        adv_probs=adv_probs, seconds=seconds, seconds_per_image=seconds / n,
        forwards_per_image=target.forward_samples / n, backwards_per_image=target.backward_samples / n,
        surrogate_forwards_per_image=None if counted_surrogate is None else counted_surrogate.forward_samples / n,
        surrogate_backwards_per_image=None if counted_surrogate is None else counted_surrogate.backward_samples / n,
    )


def draw_seed(seed: int, draw: int) -> int:
    """The evaluation seed of draw ``draw`` of a batch whose protocol seed is ``seed``."""
    return seed + draw * DRAW_SEED_STRIDE


# --------------------------------------------------------------------------- one set of points


@dataclass
class _Tally:
    """The attacked batches of a set of points (:class:`BatchResult`, in order), gathered by :func:`attack_points`."""

    batches: list[BatchResult] = field(default_factory=list)

    def per_draw(self, which: str) -> list[torch.Tensor]:
        """The predicted classes of every point, ``"clean"`` or ``"adv"``, one tensor per draw."""
        draws = len(getattr(self.batches[0], which))
        return [torch.cat([getattr(b, which)[d] for b in self.batches]) for d in range(draws)]

    def norm(self, name: str) -> torch.Tensor:
        return torch.cat([getattr(b, name) for b in self.batches])

    def total(self, name: str) -> float | None:
        values = [getattr(b, name) for b in self.batches]
        return None if values[0] is None else sum(values, 0.0)


def _batches(points: EvalPoints, batch_size: int) -> list[int]:
    return list(range(0, len(points.labels), batch_size))


def attack_points(model: nn.Module, points: EvalPoints, attack: str, dataset: str, *, eps: float | None = None,
                  steps: int | None = None, surrogate: nn.Module | None = None, seed: int = 0,
                  batch_size: int = 250, shots: int = DEFAULT_SHOTS, draws: int | None = None,
                  grad_mode: str | None = None, overrides: dict | None = None,
                  on_batch: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, checkpoint: BatchCheckpoint | None = None) -> dict:
    """Attack every point (batch i seeded with ``seed + i``) and measure: metrics with intervals, cost,
    perturbation norms, per-point outcomes and, for a randomised model, the figures over ``draws`` draws.

    ``on_batch(done, total)`` is called after every batch; ``should_stop()`` is asked before each and
    raises :class:`Cancelled` when it returns True. With a ``checkpoint`` (:mod:`.resume`), the batches it
    holds are taken from it instead of attacked again, every new batch is added to it, and it is removed
    once all are done.
    """
    overrides = dict(overrides or {})
    draws = _draws_for(model, draws)
    batches = _batches(points, batch_size)
    tally = _Tally(_resumable(checkpoint, points, batches, batch_size, draws))
    resumed = len(tally.batches)
    for i, start in enumerate(batches):
        if i < resumed:
            if on_batch is not None:
                on_batch(i + 1, len(batches))
            continue
        if should_stop is not None and should_stop():
            raise Cancelled
        x, y = points.images[start:start + batch_size], points.labels[start:start + batch_size]
        out = run_attack(model, x, y, attack, dataset, eps, steps, surrogate, seed + i, **overrides)
        tally.batches.append(_batch_result(model, x, y, out, seed + i + EVAL_SEED_OFFSET, draws))
        if checkpoint is not None and i + 1 < len(batches):
            checkpoint.save(tally.batches, total=len(batches))
        if on_batch is not None:
            on_batch(i + 1, len(batches))
    fields = _attack_fields(tally, points, model, attack, shots, grad_mode)
    if resumed:
        fields["resumed_batches"] = resumed
    if checkpoint is not None:
        checkpoint.remove()
    return fields


def _resumable(checkpoint: BatchCheckpoint | None, points: EvalPoints, batches: list[int], batch_size: int,
               draws: int) -> list[BatchResult]:
    """The checkpoint's batches if they fit this cell (its batch sizes and draws), else none."""
    if checkpoint is None:
        return []
    done = checkpoint.load(points.images.dtype)
    sizes = [min(batch_size, len(points.labels) - start) for start in batches]
    fits = len(done) <= len(batches) and all(
        len(b.clean) == draws == len(b.adv) and all(len(t) == size for t in (*b.clean, *b.adv, b.linf))
        for b, size in zip(done, sizes, strict=False))
    if not fits:
        warnings.warn(f"Batch checkpoint {checkpoint.path} not used (its batches do not fit the cell's batch sizes "
                      f"or draws): the cell {checkpoint.key} starts afresh.", stacklevel=3)
    return done if fits else []


def _draws_for(model: nn.Module, draws: int | None) -> int:
    if not is_randomised(model):
        return 1
    draws = DEFAULT_DRAWS if draws is None else int(draws)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    return draws


def _batch_result(model, x, y, out: AttackOutcome, eval_seed: int, draws: int) -> BatchResult:
    nb = len(y)
    clean, adv = [out.clean_pred], [out.adv_pred]
    for d in range(1, draws):
        clean.append(predict_probs(model, x, draw_seed(eval_seed, d)).argmax(-1))
        adv.append(predict_probs(model, out.adv_images, draw_seed(eval_seed, d)).argmax(-1))
    norms = perturbation_norms(x, out.adv_images)
    surrogate = out.surrogate_forwards_per_image is not None
    return BatchResult(
        clean=clean, adv=adv, linf=norms["linf"], l2=norms["l2"], l0_pixels=norms["l0_pixels"], seconds=out.seconds,
        forwards=out.forwards_per_image * nb, backwards=out.backwards_per_image * nb,
        surrogate_forwards=out.surrogate_forwards_per_image * nb if surrogate else None,
        surrogate_backwards=out.surrogate_backwards_per_image * nb if surrogate else None)


def _draw_fields(clean: list[torch.Tensor], adv: list[torch.Tensor], labels: torch.Tensor) -> dict:
    """Mean and spread over the draws of a randomised model (AutoAttack's advice for randomised defences)."""
    per_draw = [attack_metrics(labels, c, a) for c, a in zip(clean, adv, strict=True)]
    robust_every = torch.ones(len(labels), dtype=torch.bool)
    for c, a in zip(clean, adv, strict=True):
        robust_every &= (c == labels) & (a == labels)
    return {
        "n_draws": len(per_draw),
        "seeding": f"draw d classifies batch i with seed + i + {EVAL_SEED_OFFSET} + d x {DRAW_SEED_STRIDE}; "
                   "draw 0 is the protocol's own (the record's main figures and per-point outcomes)",
        "clean_accuracy": spread([m["clean_accuracy"] for m in per_draw]),
        "robust_accuracy": spread([m["robust_accuracy"] for m in per_draw]),
        "asr": spread([m["asr"] for m in per_draw if m["asr"] is not None]) if all(
            m["asr"] is not None for m in per_draw) else None,
        "robust_every_draw": int(robust_every.sum()) / len(labels),
    }


def _attack_fields(tally: _Tally, points: EvalPoints, model, attack: str, shots: int, grad_mode: str | None) -> dict:
    n = len(points.labels)
    clean, adv = tally.per_draw("clean"), tally.per_draw("adv")
    clean_pred, adv_pred = clean[0], adv[0]
    metrics = attack_metrics(points.labels, clean_pred, adv_pred)
    linf, l2, l0 = tally.norm("linf"), tally.norm("l2"), tally.norm("l0_pixels").float()
    fooled = (clean_pred == points.labels) & (adv_pred != points.labels)
    seconds, fwd, bwd = tally.total("seconds"), tally.total("forwards"), tally.total("backwards")
    s_fwd, s_bwd = tally.total("surrogate_forwards"), tally.total("surrogate_backwards")
    fields = {
        **metrics,
        "seconds_total": seconds, "seconds_per_image": seconds / n,
        "forwards_per_image": fwd / n, "backwards_per_image": bwd / n,
        "surrogate_forwards_per_image": None if s_fwd is None else s_fwd / n,
        "surrogate_backwards_per_image": None if s_bwd is None else s_bwd / n,
        **_circuit_cost(model, attack, (fwd, bwd, s_fwd, s_bwd), n, shots, grad_mode),
        "perturbation": {"linf_max": float(linf.max()), "linf_mean": float(linf.mean()),
                         "l2_mean": float(l2.mean()),
                         "l2_mean_fooled": float(l2[fooled].mean()) if bool(fooled.any()) else None,
                         "l0_pixels_mean": float(l0.mean())},
        "per_point": {"clean_correct": pack_bits(clean_pred == points.labels),
                      "adv_correct": pack_bits(adv_pred == points.labels)},
    }
    if len(clean) > 1:
        fields["draws"] = _draw_fields(clean, adv, points.labels)
    return fields


def _circuit_cost(model, attack: str, passes: tuple, n: int, shots: int, grad_mode: str | None) -> dict:
    """Circuit executions a real QPU would need for the attack's passes ``(fwd, bwd, surrogate fwd, surrogate bwd)``."""
    hybrid = getattr(model, "model", model)
    if not isinstance(hybrid, QShieldHybrid):
        return {"projected_circuit_executions": None}
    fwd, bwd, s_fwd, s_bwd = passes
    n_qubits = hybrid.circuit_config.n_qubits
    cost = {"projected_circuit_executions": projected_circuit_executions(
        fwd / n, bwd / n, n_qubits, shots, gradient_through_circuit=grad_mode == "differentiable")}
    if s_fwd is not None and get_attack(attack).surrogate == "differentiable-twin":
        cost["projected_circuit_executions_surrogate"] = projected_circuit_executions(
            s_fwd / n, s_bwd / n, n_qubits, shots, gradient_through_circuit=True)
    return cost


def clean_points(model: nn.Module, points: EvalPoints, seed: int = 0, batch_size: int = 250) -> dict:
    """Clean accuracy, the mean input-gradient norm and, for a hybrid, the mean fusion weight alpha."""
    preds, grad_sum, alpha_sum = [], 0.0, 0.0
    hybrid = isinstance(getattr(model, "model", model), QShieldHybrid)
    for i, start in enumerate(_batches(points, batch_size)):
        x, y = points.images[start:start + batch_size], points.labels[start:start + batch_size]
        preds.append(predict_probs(model, x, seed + i + EVAL_SEED_OFFSET).argmax(-1))
        with rng.seeded(seed + i):
            grad_sum += input_gradient_norm(model, x, y) * len(y)
        if hybrid:
            with rng.seeded(seed + i), torch.no_grad():
                alpha_sum += float(getattr(model, "model", model).details(x).alpha.sum())
    pred = torch.cat(preds)
    n = len(points.labels)
    out = attack_metrics(points.labels, pred)
    out["input_gradient_norm"] = grad_sum / n
    out["mean_alpha"] = alpha_sum / n if hybrid else None
    out["per_point"] = {"clean_correct": pack_bits(pred == points.labels)}
    return out


# --------------------------------------------------------------------------- records


def _versions() -> dict:
    from .. import __version__

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"qshield": __version__, "python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("torchvision", "torchattacks", "pennylane", "numpy", "scipy")}}


def base_record(key: str, dataset: str, model_name: str, grad_mode: str | None, backend: str, attack: str,
                eps: float | None, params: dict | None, seed: int, points: EvalPoints, card: dict,
                surrogate_info: dict | None, batch_size: int, command: str | None) -> dict:
    """Everything a record says about what was computed, before any metric."""
    aspec = None if attack == "none" else get_attack(attack)
    return {
        "schema": RECORD_SCHEMA, "key": key, "dataset": dataset, "model": model_name, "grad_mode": grad_mode,
        "backend": backend, "attack": attack,
        "attack_display": "clean (no attack)" if aspec is None else aspec.display_name,
        "suite": None if aspec is None else aspec.suite,
        "threat": None if aspec is None else aspec.threat, "access": None if aspec is None else aspec.access,
        "eps": eps, "eps_255": None if eps is None else round(eps * 255, 4), "params": params, "seed": seed,
        "seeding": f"batch i of {batch_size} points: attack seeded with seed + i (also the 'seed' parameter of the "
                   f"attacks that take one), its clean and adversarial evaluations with seed + i + {EVAL_SEED_OFFSET}",
        "n": len(points.labels), "batch_size": batch_size,
        "points": {"source": points.source, "exact": points.exact, "selection": points.selection,
                   "indices_sha256": points.indices_sha256, "kind": points.kind, "indices": list(points.indices)},
        "model_card": {"weights_sha256": card.get("weights_sha256"),
                       "clean_test_accuracy": card.get("clean_test_accuracy"), "n_test": card.get("n_test")},
        "surrogate": surrogate_info, "protocol": PROTOCOL_NOTE, "versions": _versions(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
    }


def evaluate(model: nn.Module, card: dict, points: EvalPoints, dataset: str, model_name: str, grad_mode: str | None,
             attack: str, *, eps: float | None = None, steps: int | None = None, seed: int = 0,
             surrogate: nn.Module | None = None, surrogate_info: dict | None = None, backend: str = "fast",
             batch_size: int = 250, shots: int = DEFAULT_SHOTS, draws: int | None = None,
             overrides: dict | None = None, command: str | None = None,
             on_batch: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None, checkpoint_dir: str | os.PathLike | None = None,
             resume: bool = True) -> Record:
    """The one runner: ``attack`` (or ``"none"``) on ``points`` against a loaded ``model``, as a record.

    The CLI's cells (:func:`evaluate_cell`) and the app's sweeps (``lab.sweep``) both call this.
    ``overrides`` lowers an attack's budget (the app does): the record then says so (``app_budget``)
    and its key carries ``/budget=...``, so it never stands for the preset cell. With ``checkpoint_dir``
    an attack's finished batches are kept there (:mod:`.resume`) and, with ``resume``, a cell interrupted
    earlier goes on from them (the record then says how many in ``resumed_batches``).
    """
    spec = get_spec(dataset)
    attack = attack.strip().lower()
    aspec = None if attack == "none" else get_attack(attack)
    eps = _cell_eps(aspec, eps, spec)
    overrides = dict(overrides or {})
    params = None if aspec is None else resolve_params(attack, spec.name, eps, steps, seed, **overrides)
    key = cell_key(spec.name, model_name, grad_mode, attack, eps, len(points.labels), seed, backend, steps,
                   points.kind)
    if overrides:
        key += "/budget=" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    record = base_record(key, spec.name, model_name, grad_mode, backend, attack, eps, params, seed, points, card,
                         surrogate_info, batch_size, command)
    if overrides:
        record["app_budget"] = overrides
    if aspec is None:
        record.update(clean_points(model, points, seed, batch_size))
    else:
        checkpoint = None if checkpoint_dir is None else BatchCheckpoint(checkpoint_dir, key, fingerprint(
            key=key, weights=card.get("weights_sha256"), surrogate=surrogate_info, points=points.indices_sha256,
            batch_size=batch_size, draws=_draws_for(model, draws), params=params, overrides=overrides, shots=shots,
            versions=_versions()), fresh=not resume)
        record.update(attack_points(model, points, attack, spec.name, eps=eps, steps=steps, surrogate=surrogate,
                                    seed=seed, batch_size=batch_size, shots=shots, draws=draws, grad_mode=grad_mode,
                                    overrides=overrides, on_batch=on_batch, should_stop=should_stop,
                                    checkpoint=checkpoint))
    return record


def _cell_eps(aspec, eps: float | None, spec) -> float | None:
    """The eps a cell runs at: validated, the paper's by default, None for attacks without a bound."""
    if aspec is None or not aspec.uses_eps:
        return None
    return spec.paper_eps if eps is None else validate_eps(eps, spec.name)


def has_finite_shots(dataset: str, model_name: str) -> bool:
    """Whether a model's card describes a circuit estimated from finite shots (randomised in every gradient
    mode); False for the shipped models and for a model without a card."""
    from ..zoo import ModelUnavailableError, is_builtin_name, read_card

    if not is_hybrid_name(model_name) or is_builtin_name(model_name):
        return False
    try:
        circuit = read_card(dataset, model_name).get("circuit") or {}
    except ModelUnavailableError:
        return False
    return circuit.get("shots") is not None


def normalise_grad_mode(model_name: str, grad_mode: str | None) -> str | None:
    """None for the baselines (no gradient modes), the mode (default ``paper``) for hybrids."""
    return None if not is_hybrid_name(model_name) else (grad_mode or "paper")


@functools.lru_cache(maxsize=16)
def _load(dataset: str, model_name: str, grad_mode: str | None, backend: str, model_dir: str | None):
    from ..zoo import load_model

    return load_model(dataset, model_name, grad_mode=grad_mode or "paper", backend=backend,
                      directory=None if model_dir is None else Path(model_dir))


def model_cache_info() -> dict:
    """Hits and misses of this process's cache of loaded models (a grid worker loads each model once)."""
    info = _load.cache_info()
    return {"hits": info.hits, "misses": info.misses}


def evaluate_cell(dataset: str, model_name: str, grad_mode: str | None, attack: str, eps: float | None, n: int,
                  seed: int = 0, *, steps: int | None = None, backend: str = "fast", source: str = "auto",
                  data_root: str | None = None, model_dir: str | os.PathLike | None = None, batch_size: int = 250,
                  shots: int = DEFAULT_SHOTS, draws: int | None = None, progress: bool = False,
                  command: str | None = None, checkpoint_dir: str | os.PathLike | None = None,
                  resume: bool = True) -> Record:
    """Evaluate one cell and return its record (every metric, the exact parameters and provenance).

    ``attack="none"`` measures clean accuracy, the mean input-gradient norm and, for hybrids, the
    mean fusion weight alpha. Models come from the zoo (``model_dir`` overrides ``pretrained/``);
    transfer and BPDA attacks load their surrogate (the classical CNN or the differentiable twin).
    ``source="auto"`` is resolved first, and the record's key says which points were used.
    ``checkpoint_dir`` and ``resume``: see :func:`evaluate` (batch checkpoints, :mod:`.resume`).
    """
    spec = get_spec(dataset)
    grad_mode = normalise_grad_mode(model_name, grad_mode)
    attack = attack.strip().lower()
    aspec = None if attack == "none" else get_attack(attack)
    directory = None if model_dir is None else str(model_dir)
    model, card = _load(spec.name, model_name, grad_mode, backend, directory)
    shots = (card.get("circuit") or {}).get("shots") or shots  # a finite-shot circuit costs its own shots
    surrogate, surrogate_info = None, None
    if aspec is not None and aspec.surrogate is not None:
        s_name, s_mode = ((classical_of(model_name), None) if aspec.surrogate == "classical"
                          else (model_name, "differentiable"))
        surrogate, surrogate_card = _load(spec.name, s_name, s_mode, backend, directory)
        surrogate_info = {"role": aspec.surrogate, "model": s_name, "grad_mode": s_mode,
                          "weights_sha256": surrogate_card.get("weights_sha256")}
    points = evaluation_points(spec.name, n, seed, data_root, source)
    bar = tqdm(total=len(_batches(points, batch_size)), desc=f"{spec.name} {model_name} {attack}",
               disable=not progress, leave=False)
    try:
        return evaluate(model, card, points, spec.name, model_name, grad_mode, attack, eps=eps, steps=steps,
                        seed=seed, surrogate=surrogate, surrogate_info=surrogate_info, backend=backend,
                        batch_size=batch_size, shots=shots, draws=draws, command=command,
                        on_batch=lambda done, total: bar.update(1), checkpoint_dir=checkpoint_dir, resume=resume)
    finally:
        bar.close()


# --------------------------------------------------------------------------- runs of many cells


def plan_cells(datasets: Sequence[str], models: Sequence[str], grad_modes: Sequence[str | None],
               attacks: Sequence[str], eps_values: Sequence[float] | None = None, n: int = 1000, seed: int = 0,
               backend: str = "fast", steps: int | None = None, source: str = "auto",
               only_applicable: bool = True, data_root: str | None = None) -> list[Cell]:
    """All cells of a grid, validated up front (names, eps ranges), suites expanded, sources resolved.

    Epsilon defaults to each dataset's paper value; attacks without an eps bound get one cell.
    The classical CNN and the DNN have no gradient modes (one cell, ``grad_mode=None``). With
    ``only_applicable``, suite members that do not apply (e.g. BPDA on the classical CNN) are left out.
    ``source="auto"`` becomes ``test`` where the dataset is on disk and ``samples`` elsewhere.
    """
    names = expand_attacks(list(attacks))
    cells: list[Cell] = []
    for dataset in datasets:
        spec = get_spec(dataset)
        kind = resolve_source(spec.name, source, data_root)
        eps_list = [validate_eps(e, spec.name) for e in eps_values] if eps_values else [spec.paper_eps]
        for model in models:
            modes = [None] if not is_hybrid_name(model) else list(dict.fromkeys(grad_modes or ["paper"]))
            randomised = has_finite_shots(spec.name, model)
            for mode in modes:
                for attack in names:
                    aspec = None if attack == "none" else ATTACKS[attack]
                    if aspec is not None and only_applicable and not aspec.applies_to(model, mode, randomised):
                        continue
                    for eps in (eps_list if aspec is not None and aspec.uses_eps else [None]):
                        cell = Cell(spec.name, model, mode, attack, eps, n, seed, backend,
                                    steps if aspec is not None and aspec.uses_steps else None, kind)
                        if cell not in cells:
                            cells.append(cell)
    return cells


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def cells_to_run(cells: Sequence[Cell], records: Sequence[dict],
                 replace: bool = False) -> tuple[list[Cell], list[Cell]]:
    """(cells to compute, cells already done): a cell is done when the file has its key with the
    attack parameters it would use today (:func:`is_current`)."""
    by_key = {r.get("key"): r for r in records}
    done = [] if replace else [c for c in cells if c.key in by_key and is_current(by_key[c.key], c)]
    done_keys = {c.key for c in done}
    return [c for c in cells if c.key not in done_keys], done


def run_cell(cell: Cell, **cell_kwargs) -> Record:
    """:func:`evaluate_cell` of a :class:`Cell`."""
    return evaluate_cell(cell.dataset, cell.model, cell.grad_mode, cell.attack, cell.eps, cell.n, cell.seed,
                         steps=cell.steps, backend=cell.backend, source=cell.source, **cell_kwargs)


def run_cells(cells: Iterable[Cell], out_path: str | os.PathLike, *, limit: int | None = None,
              shard: tuple[int, int] | None = None, replace: bool = False, progress: bool = True, log=print,
              **cell_kwargs) -> RunSummary:
    """Evaluate cells and add their records to ``out_path``, resumably.

    Cells whose key is already in the file are skipped unless their recorded attack parameters
    differ from today's presets (then they are run again and replace the stale record);
    ``replace=True`` recomputes every cell. The file is rewritten after every cell.
    ``shard=(i, k)`` keeps every k-th cell starting at i; ``limit`` caps the cells run.
    """
    cells = list(cells)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"Shard {index}/{count} is not valid: need 0 <= i < k.")
        cells = cells[index::count]
    records = load_results(out_path)
    todo, done = cells_to_run(cells, records, replace)
    summary = RunSummary(records=records, skipped=[c.key for c in done])
    if limit is not None:
        todo = todo[: max(limit, 0)]
    for cell in tqdm(todo, desc="cells", disable=not progress):
        record = run_cell(cell, progress=progress, **cell_kwargs)
        summary.records = merge_record(out_path, record)
        summary.ran.append(cell.key)
        if log is not None:
            log(summary_line(record))
    return summary


def summary_line(r: dict) -> str:
    """One line per record for the console."""
    head = f"{r['dataset']} {r['model']}{'/' + r['grad_mode'] if r['grad_mode'] else ''} {r['attack']}"
    if r.get("eps") is not None:
        head += f" eps={r['eps_255']:g}/255"
    text = f"{head}: clean {format_percent(r['clean_accuracy'])}"
    if "robust_accuracy" in r:
        text += (f", robust {format_percent(r['robust_accuracy'])}, ASR {format_percent(r['asr'])} "
                 f"{format_interval(r['asr_ci'])}, "
                 f"{r['seconds_per_image'] * 1000:.1f} ms/img, {r['forwards_per_image']:.1f} fwd + "
                 f"{r['backwards_per_image']:.1f} bwd/img")
        if r.get("draws"):
            ra = r["draws"]["robust_accuracy"]
            text += f", robust over {r['draws']['n_draws']} draws {100 * ra['mean']:.1f} ± {100 * ra['std']:.1f}"
    elif r.get("input_gradient_norm") is not None:
        text += f", |grad| {r['input_gradient_norm']:.3g}"
    return text + f" (n={r['n']})"
