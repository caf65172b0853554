"""Evaluation: attacks with counted cost, robustness metrics with intervals, resumable runs.

One *cell* is (dataset, model, gradient mode, attack, epsilon, n, seed): a seeded, class-balanced
set of test points, attacked in batches, measured, and written as one JSON record. Cells are
independent, so a list of them can be split over processes or machines (``shard``) and merged.

Definitions (the paper's, made explicit):

- clean accuracy: share of the n points the model classifies correctly;
- robust accuracy: share of the n points classified correctly both before and after the attack;
- attack success rate (ASR): among the points classified correctly before the attack, the share
  misclassified after it (so robust accuracy = clean accuracy x (1 - ASR));
- 95 % Wilson score intervals for all three.

In the stochastic ``paper`` mode (a fresh random projection at every forward pass) the clean and
the adversarial predictions of a batch are taken with the same random draw (the generator is
reseeded before each), so an image the attack leaves unchanged keeps its prediction.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attacks import (
    ATTACKS,
    build_from_params,
    expand_attacks,
    get_attack,
    resolve_params,
    validate_eps,
)
from .data import dataset_available, get_spec, list_samples, load_samples, load_split
from .models import QShieldHybrid, input_gradient_norm

SCHEMA = "qshield.results/1"
DEFAULT_SHOTS = 1000
EVAL_SEED_OFFSET = 7919
PROTOCOL_NOTE = (
    "robust accuracy = correct before and after the attack, over all n points; ASR = misclassified after the "
    "attack among the points correct before it; 95 % Wilson intervals; in the stochastic paper mode the clean "
    "and adversarial predictions of a batch share one random draw"
)


# --------------------------------------------------------------------------- counting


class CountingModel(nn.Module):
    """Wraps a model and counts, per sample, the forward passes and the backward passes through it.

    A forward pass of a batch of B adds B to ``forward_samples``. Every time autograd computes
    the gradient of the output (a tensor hook on it), the rows of that gradient that are not all
    zero are added to ``backward_samples``: a full Jacobian (DeepFool) counts one backward pass per
    class, a sample whose output gradient is zero (left out of the loss, as the batched DeepFool
    does with the images it has already fooled) counts none, and so does a forward pass run
    without autograd or never differentiated.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # torchattacks restores this mode on the model after an attack
        self.reset()

    def reset(self) -> None:
        self.forward_samples = 0
        self.backward_samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forward_samples += int(x.shape[0])
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward_samples += int((grad.reshape(grad.shape[0], -1) != 0).any(dim=1).sum())


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


def seed_all(seed: int) -> None:
    """Seed Python, NumPy (One-Pixel's differential evolution) and torch's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Class probabilities, with torch's generator seeded first (fixes the paper mode's draw)."""
    seed_all(seed)
    return F.softmax(model(images).float(), dim=-1)


def perturbation_norms(images: torch.Tensor, adv_images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L-inf and L2 norms of the perturbation and the number of pixels changed (L0)."""
    delta = (adv_images - images).flatten(1)
    changed = (adv_images != images).any(dim=1).flatten(1).sum(1)
    return {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l0_pixels": changed}


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack_name: str, dataset: str,
               eps: float | None = None, steps: int | None = None, surrogate: nn.Module | None = None, seed: int = 0,
               **overrides) -> AttackOutcome:
    """Attack one batch and measure it: predictions before/after, wall time, counted passes.

    ``surrogate`` is the model the gradient is taken on for transfer and BPDA attacks. Torch's
    generator is seeded with ``seed`` before the attack and with ``seed + EVAL_SEED_OFFSET``
    before each of the clean and adversarial evaluations. Cheap enough for a single image.
    """
    params = resolve_params(attack_name, dataset, eps, steps, seed, **overrides)
    target = CountingModel(model)
    counted_surrogate = CountingModel(surrogate) if surrogate is not None else None
    attack = build_from_params(attack_name, target, dataset, params, counted_surrogate)
    clean_probs = predict_probs(model, images, seed + EVAL_SEED_OFFSET)
    seed_all(seed)
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


# --------------------------------------------------------------------------- metrics


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}.")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (max(0.0, centre - half), min(1.0, centre + half))


def difference_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10, 1998) for the difference of two independent
    proportions, a - b, built from their Wilson intervals."""
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    (low_a, high_a), (low_b, high_b) = (wilson_interval(successes_a, trials_a, confidence),
                                        wilson_interval(successes_b, trials_b, confidence))
    d = p_a - p_b
    return (d - math.hypot(p_a - low_a, high_b - p_b), d + math.hypot(high_a - p_a, p_b - low_b))


def attack_metrics(labels: torch.Tensor, clean_pred: torch.Tensor, adv_pred: torch.Tensor | None = None) -> dict:
    """Clean accuracy, robust accuracy and ASR (see the module docstring) with Wilson intervals."""
    labels, clean_pred = torch.as_tensor(labels), torch.as_tensor(clean_pred)
    n = int(labels.numel())
    correct = clean_pred == labels
    k_clean = int(correct.sum())
    out = {"n": n, "n_clean_correct": k_clean, "clean_accuracy": k_clean / n if n else float("nan"),
           "clean_accuracy_ci": list(wilson_interval(k_clean, n))}
    if adv_pred is None:
        return out
    robust = correct & (torch.as_tensor(adv_pred) == labels)
    k_robust = int(robust.sum())
    k_fooled = k_clean - k_robust
    out.update({
        "n_robust": k_robust, "n_fooled": k_fooled,
        "robust_accuracy": k_robust / n if n else float("nan"),
        "robust_accuracy_ci": list(wilson_interval(k_robust, n)),
        "asr": k_fooled / k_clean if k_clean else None,
        "asr_ci": list(wilson_interval(k_fooled, k_clean)) if k_clean else None,
    })
    return out


def projected_circuit_executions(forwards_per_image: float, backwards_per_image: float, n_qubits: int = 4,
                                 shots: int = DEFAULT_SHOTS, gradient_through_circuit: bool = True,
                                 n_circuit_parameters: int | None = None) -> dict:
    """Circuit executions an attacker of a real quantum device would need per image.

    Assumptions (also returned as text):

    - every forward pass of the hybrid runs the circuit once, estimated from ``shots`` shots
      (score-based attacks: one forward per query, so queries x shots);
    - every backward pass through the circuit uses the parameter-shift rule: 2 shifted circuits per
      gate parameter, with 3n encoding angles (RX, RY, RZ per qubit) as the parameters. That is an
      upper bound: with C < 3n classes, 3n - C of the angles are constant zeros an attacker can skip;
    - in the ``paper`` gradient mode no gradient goes through the circuit (the quantum branch is
      cut from autograd), so backward passes cost no circuit runs (``gradient_through_circuit=False``);
    - a 4-qubit circuit is easy to simulate classically: a white-box attacker who knows the circuit
      needs none of these runs. This counts what the paper's "attacker cost" argument would require.
    """
    params = 3 * n_qubits if n_circuit_parameters is None else n_circuit_parameters
    per_backward = 2 * params if gradient_through_circuit else 0
    circuits = forwards_per_image + backwards_per_image * per_backward
    return {
        "circuit_evaluations_per_image": circuits,
        "shots_per_image": circuits * shots,
        "shots": shots,
        "circuit_parameters": params,
        "gradient_through_circuit": gradient_through_circuit,
        "assumptions": (f"1 circuit estimate of {shots} shots per forward pass; "
                        + (f"parameter-shift: 2 x {params} circuit parameters (3n angles, an upper bound) "
                           "estimates per backward pass; " if gradient_through_circuit else
                           "no circuit runs per backward pass (paper mode: no gradient through the circuit); ")
                        + "a classical simulation of the circuit, open to any white-box attacker, needs none"),
    }


# --------------------------------------------------------------------------- evaluation points


@dataclass
class EvalPoints:
    """The images a cell is evaluated on, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    source: str
    exact: bool
    selection: str

    @property
    def indices_sha256(self) -> str:
        return hashlib.sha256(json.dumps([self.source, self.indices]).encode()).hexdigest()


def balanced_indices(labels: torch.Tensor, n: int, num_classes: int, seed: int) -> list[int]:
    """A seeded subset of ``n`` indices with (as nearly as possible) n / C points per class, sorted."""
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


@functools.lru_cache(maxsize=4)
def _test_split(dataset: str, data_root: str | None):
    return load_split(dataset, "test", data_root)


def evaluation_points(dataset: str, n: int, seed: int = 0, data_root: str | None = None,
                      source: str = "auto") -> EvalPoints:
    """A seeded class-balanced subset of the test split (``source="test"``), of the shipped samples
    (``"samples"``), or of the test split when its files are present and the samples otherwise (``"auto"``)."""
    spec = get_spec(dataset)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if source not in ("auto", "test", "samples"):
        raise ValueError(f"Unknown source {source!r}; choose auto, test or samples.")
    if source == "test" or (source == "auto" and dataset_available(spec.name, data_root)):
        split = _test_split(spec.name, data_root)
        idx = balanced_indices(split.labels, n, spec.num_classes, seed)
        images = split.images[idx].float().div_(255.0)
        return EvalPoints(images, split.labels[idx].clone(), idx, f"{split.source}, test split", split.exact,
                          f"class-balanced seeded subset (seed {seed}) of {len(split)} test images")
    images, labels = load_samples(spec.name)
    idx = balanced_indices(labels, n, spec.num_classes, seed)
    samples = list_samples(spec.name)
    test_indices = [samples[i].index for i in idx]
    return EvalPoints(images[idx], labels[idx], test_indices, "assets/samples (shipped test images)",
                      spec.name != "cifar10",
                      f"class-balanced seeded subset (seed {seed}) of {len(labels)} shipped samples; "
                      "indices are test-split indices")


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One independent unit of evaluation."""

    dataset: str
    model: str
    grad_mode: str | None
    attack: str
    eps: float | None
    n: int
    seed: int = 0
    backend: str = "fast"
    steps: int | None = None
    source: str = "auto"

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


def cell_key(dataset: str, model: str, grad_mode: str | None, attack: str, eps: float | None, n: int, seed: int,
             backend: str = "fast", steps: int | None = None, source: str = "auto") -> str:
    """The identity of a cell in a results file (resuming skips keys already there)."""
    eps_text = "-" if eps is None else f"{eps:.6f}"
    return (f"{dataset}/{model}/{grad_mode or '-'}/{attack}/eps={eps_text}/steps={steps or 'preset'}"
            f"/n={n}/seed={seed}/{backend}/{source}")


def is_preset_budget(record: dict) -> bool:
    """Whether a record ran its attack's preset budget (no ``--steps`` override in its cell key)."""
    return "/steps=preset/" in record.get("key", "/steps=preset/")


def normalise_grad_mode(model_name: str, grad_mode: str | None) -> str | None:
    """None for the classical CNN (no gradient modes), the mode (default ``paper``) for hybrids."""
    return None if model_name == "classical" else (grad_mode or "paper")


@functools.lru_cache(maxsize=16)
def _load(dataset: str, model_name: str, grad_mode: str | None, backend: str, model_dir: str | None):
    from .zoo import load_model

    return load_model(dataset, model_name, grad_mode=grad_mode or "paper", backend=backend,
                      directory=None if model_dir is None else Path(model_dir))


def _versions() -> dict:
    import pennylane
    import scipy
    import torchattacks
    import torchvision

    from . import __version__

    return {"qshield": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "torchattacks": torchattacks.__version__,
            "pennylane": pennylane.__version__, "numpy": np.__version__, "scipy": scipy.__version__}


def _bits(mask: torch.Tensor) -> str:
    return np.packbits(mask.cpu().numpy().astype(np.uint8)).tobytes().hex()


def unpack_bits(hex_text: str, n: int) -> np.ndarray:
    """Inverse of the per-point bit strings stored in records (``per_point``)."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8))[:n].astype(bool)


def evaluate_cell(dataset: str, model_name: str, grad_mode: str | None, attack: str, eps: float | None, n: int,
                  seed: int = 0, *, steps: int | None = None, backend: str = "fast", source: str = "auto",
                  data_root: str | None = None, model_dir: str | os.PathLike | None = None, batch_size: int = 250,
                  shots: int = DEFAULT_SHOTS, progress: bool = False, command: str | None = None) -> dict:
    """Evaluate one cell and return its record (every metric, the exact parameters and provenance).

    ``attack="none"`` measures clean accuracy, the mean input-gradient norm and, for hybrids, the
    mean fusion weight alpha. Models come from the zoo (``model_dir`` overrides ``pretrained/``);
    transfer and BPDA attacks load their surrogate (the classical CNN or the differentiable twin).
    """
    spec = get_spec(dataset)
    grad_mode = normalise_grad_mode(model_name, grad_mode)
    attack = attack.strip().lower()
    aspec = None if attack == "none" else get_attack(attack)
    if eps is not None:
        eps = validate_eps(eps, spec.name)
    if aspec is not None and aspec.uses_eps and eps is None:
        eps = spec.paper_eps
    if aspec is None or not aspec.uses_eps:
        eps = None
    params = None if aspec is None else resolve_params(attack, spec.name, eps, steps, seed)
    key = cell_key(spec.name, model_name, grad_mode, attack, eps, n, seed, backend, steps, source)
    directory = None if model_dir is None else str(model_dir)
    model, card = _load(spec.name, model_name, grad_mode, backend, directory)
    surrogate, surrogate_card, surrogate_info = None, None, None
    if aspec is not None and aspec.surrogate is not None:
        s_name, s_mode = ("classical", None) if aspec.surrogate == "classical" else (model_name, "differentiable")
        surrogate, surrogate_card = _load(spec.name, s_name, s_mode, backend, directory)
        surrogate_info = {"role": aspec.surrogate, "model": s_name, "grad_mode": s_mode,
                          "weights_sha256": surrogate_card.get("weights_sha256")}
    points = evaluation_points(spec.name, n, seed, data_root, source)
    batches = range(0, len(points.labels), batch_size)
    bar = tqdm(batches, desc=key, disable=not progress, leave=False)
    record = _base_record(key, spec.name, model_name, grad_mode, backend, attack, aspec, eps, params, seed, points,
                          card, surrogate_info, batch_size, command)
    if aspec is None:
        record.update(_clean_cell(model, points, seed, bar, batch_size))
    else:
        record.update(_attack_cell(model, surrogate, points, attack, spec.name, eps, steps, seed, bar, batch_size,
                                   shots, isinstance(model, QShieldHybrid), grad_mode))
    return record


def _base_record(key, dataset, model_name, grad_mode, backend, attack, aspec, eps, params, seed, points: EvalPoints,
                 card, surrogate_info, batch_size, command) -> dict:
    return {
        "schema": SCHEMA, "key": key, "dataset": dataset, "model": model_name, "grad_mode": grad_mode,
        "backend": backend, "attack": attack,
        "attack_display": "clean (no attack)" if aspec is None else aspec.display_name,
        "suite": None if aspec is None else aspec.suite,
        "threat": None if aspec is None else aspec.threat, "access": None if aspec is None else aspec.access,
        "eps": eps, "eps_255": None if eps is None else round(eps * 255, 4), "params": params, "seed": seed,
        "seeding": f"batch i of {batch_size} points: attack seeded with seed + i (also the 'seed' parameter of the "
                   f"attacks that take one), its clean and adversarial evaluations with seed + i + {EVAL_SEED_OFFSET}",
        "n": len(points.labels), "batch_size": batch_size,
        "points": {"source": points.source, "exact": points.exact, "selection": points.selection,
                   "indices_sha256": points.indices_sha256},
        "model_card": {"weights_sha256": card.get("weights_sha256"),
                       "clean_test_accuracy": card.get("clean_test_accuracy"), "n_test": card.get("n_test")},
        "surrogate": surrogate_info, "protocol": PROTOCOL_NOTE, "versions": _versions(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
    }


def _clean_cell(model, points: EvalPoints, seed: int, bar, batch_size: int) -> dict:
    preds, grad_sum, alpha_sum = [], 0.0, 0.0
    hybrid = isinstance(model, QShieldHybrid)
    for i, start in enumerate(bar):
        x, y = points.images[start:start + batch_size], points.labels[start:start + batch_size]
        preds.append(predict_probs(model, x, seed + i + EVAL_SEED_OFFSET).argmax(-1))
        seed_all(seed + i)
        grad_sum += input_gradient_norm(model, x, y) * len(y)
        if hybrid:
            seed_all(seed + i)
            with torch.no_grad():
                alpha_sum += float(model.details(x).alpha.sum())
    pred = torch.cat(preds)
    n = len(points.labels)
    out = attack_metrics(points.labels, pred)
    out["input_gradient_norm"] = grad_sum / n
    out["mean_alpha"] = alpha_sum / n if hybrid else None
    out["per_point"] = {"clean_correct": _bits(pred == points.labels)}
    return out


def _attack_cell(model, surrogate, points: EvalPoints, attack, dataset, eps, steps, seed, bar, batch_size, shots,
                 hybrid: bool, grad_mode: str | None) -> dict:
    clean, adv, norms = [], [], []
    seconds = fwd = bwd = 0.0
    s_fwd = s_bwd = None if surrogate is None else 0.0
    for i, start in enumerate(bar):
        x, y = points.images[start:start + batch_size], points.labels[start:start + batch_size]
        out = run_attack(model, x, y, attack, dataset, eps, steps, surrogate, seed + i)  # batch i: seed + i
        nb = len(y)
        clean.append(out.clean_pred)
        adv.append(out.adv_pred)
        norms.append(perturbation_norms(x, out.adv_images))
        seconds += out.seconds
        fwd += out.forwards_per_image * nb
        bwd += out.backwards_per_image * nb
        if surrogate is not None:
            s_fwd += out.surrogate_forwards_per_image * nb
            s_bwd += out.surrogate_backwards_per_image * nb
    n = len(points.labels)
    clean_pred, adv_pred = torch.cat(clean), torch.cat(adv)
    metrics = attack_metrics(points.labels, clean_pred, adv_pred)
    linf = torch.cat([m["linf"] for m in norms])
    l2 = torch.cat([m["l2"] for m in norms])
    l0 = torch.cat([m["l0_pixels"] for m in norms]).float()
    fooled = (clean_pred == points.labels) & (adv_pred != points.labels)
    cost = {"seconds_total": seconds, "seconds_per_image": seconds / n, "forwards_per_image": fwd / n,
            "backwards_per_image": bwd / n,
            "surrogate_forwards_per_image": None if s_fwd is None else s_fwd / n,
            "surrogate_backwards_per_image": None if s_bwd is None else s_bwd / n}
    if hybrid:
        n_qubits = model.circuit_config.n_qubits
        cost["projected_circuit_executions"] = projected_circuit_executions(
            fwd / n, bwd / n, n_qubits, shots, gradient_through_circuit=grad_mode == "differentiable")
        if s_fwd is not None and get_attack(attack).surrogate == "differentiable-twin":
            cost["projected_circuit_executions_surrogate"] = projected_circuit_executions(
                s_fwd / n, s_bwd / n, n_qubits, shots, gradient_through_circuit=True)
    else:
        cost["projected_circuit_executions"] = None
    return {
        **metrics, **cost,
        "perturbation": {"linf_max": float(linf.max()), "linf_mean": float(linf.mean()),
                         "l2_mean": float(l2.mean()),
                         "l2_mean_fooled": float(l2[fooled].mean()) if bool(fooled.any()) else None,
                         "l0_pixels_mean": float(l0.mean())},
        "per_point": {"clean_correct": _bits(clean_pred == points.labels),
                      "adv_correct": _bits(adv_pred == points.labels)},
    }


# --------------------------------------------------------------------------- runs of many cells


def plan_cells(datasets: Sequence[str], models: Sequence[str], grad_modes: Sequence[str | None],
               attacks: Sequence[str], eps_values: Sequence[float] | None = None, n: int = 1000, seed: int = 0,
               backend: str = "fast", steps: int | None = None, source: str = "auto",
               only_applicable: bool = True) -> list[Cell]:
    """All cells of a grid, validated up front (names, eps ranges), suites expanded.

    Epsilon defaults to each dataset's paper value; attacks without an eps bound get one cell.
    The classical model has no gradient modes (one cell, ``grad_mode=None``). With
    ``only_applicable``, suite members that do not apply (e.g. BPDA on the classical CNN) are left out.
    """
    names = expand_attacks(list(attacks))
    cells: list[Cell] = []
    for dataset in datasets:
        spec = get_spec(dataset)
        eps_list = [validate_eps(e, spec.name) for e in eps_values] if eps_values else [spec.paper_eps]
        for model in models:
            modes = [None] if model == "classical" else list(dict.fromkeys(grad_modes or ["paper"]))
            for mode in modes:
                for attack in names:
                    aspec = None if attack == "none" else ATTACKS[attack]
                    if aspec is not None and only_applicable and not aspec.applies_to(model, mode):
                        continue
                    for eps in (eps_list if aspec is not None and aspec.uses_eps else [None]):
                        cell = Cell(spec.name, model, mode, attack, eps, n, seed, backend,
                                    steps if aspec is not None and aspec.uses_steps else None, source)
                        if cell not in cells:
                            cells.append(cell)
    return cells


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


def records_of(data) -> list | None:
    """The records of a parsed results file (a list, or ``{"records": [...]}``); None for other JSON."""
    records = data.get("records") if isinstance(data, dict) else data
    return records if isinstance(records, list) else None


def save_results(path: str | os.PathLike, records: list[dict]) -> None:
    """Write the records atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, "records": records}, indent=1) + "\n")
    os.replace(tmp, path)


def merge_record(path: str | os.PathLike, record: dict) -> list[dict]:
    """Add ``record`` to the results file (replacing a record with its key); returns all records.

    The file is re-read and rewritten under an exclusive lock (``fcntl.flock`` on ``<file>.lock``),
    so several processes on one machine can fill the same file with their cells.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_results(path)
        at = next((i for i, r in enumerate(records) if r.get("key") == record.get("key")), None)
        if at is None:
            records.append(record)
        else:
            records[at] = record
        save_results(path, records)
    return records


@dataclass
class RunSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)


def _recorded(records: list[dict], cells: list[Cell]) -> list[tuple[dict, Cell]]:
    """The (record, cell) pairs of the cells that already have a record."""
    by_key = {r.get("key"): r for r in records}
    return [(by_key[c.key], c) for c in cells if c.key in by_key]


def run_cells(cells: Iterable[Cell], out_path: str | os.PathLike, *, limit: int | None = None,
              shard: tuple[int, int] | None = None, replace: bool = False, progress: bool = True, log=print,
              **cell_kwargs) -> RunSummary:
    """Evaluate cells and append their records to ``out_path``, resumably.

    Cells whose key is already in the file are skipped unless their recorded attack parameters
    differ from today's presets (then they are run again and replace the stale record);
    ``replace=True`` recomputes every cell. The file is rewritten after every cell.
    ``shard=(i, k)`` keeps every k-th cell starting at i (to spread a grid over
    machines: give each shard its own file and merge them with ``table``); ``limit`` caps the
    cells run.
    """
    cells = list(cells)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"Shard {index}/{count} is not valid: need 0 <= i < k.")
        cells = cells[index::count]
    records = load_results(out_path)
    done = {r.get("key") for r, c in _recorded(records, cells) if is_current(r, c)}
    summary = RunSummary(records=records)
    todo = cells if replace else [c for c in cells if c.key not in done]
    summary.skipped = [] if replace else [c.key for c in cells if c.key in done]
    if limit is not None:
        todo = todo[: max(limit, 0)]
    for cell in tqdm(todo, desc="cells", disable=not progress):
        record = evaluate_cell(cell.dataset, cell.model, cell.grad_mode, cell.attack, cell.eps, cell.n, cell.seed,
                               steps=cell.steps, backend=cell.backend, source=cell.source, progress=progress,
                               **cell_kwargs)
        summary.records = merge_record(out_path, record)
        summary.ran.append(cell.key)
        if log is not None:
            log(summary_line(record))
    return summary


def format_percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals ("n/a" when missing)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def format_interval(ci: Sequence[float] | None) -> str:
    """A 95 % interval as "[lo, hi]" in percent ("" when missing)."""
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


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
    elif r.get("input_gradient_norm") is not None:
        text += f", |grad| {r['input_gradient_norm']:.3g}"
    return text + f" (n={r['n']})"


__all__ = [
    "AttackOutcome", "Cell", "CountingModel", "EvalPoints", "RunSummary", "attack_metrics", "balanced_indices",
    "cell_key", "difference_interval", "evaluate_cell", "evaluation_points", "format_interval", "format_percent",
    "is_current", "is_preset_budget", "load_results", "merge_record", "perturbation_norms", "plan_cells",
    "projected_circuit_executions", "records_of", "run_attack", "run_cells", "save_results", "seed_all",
    "unpack_bits", "wilson_interval",
]
