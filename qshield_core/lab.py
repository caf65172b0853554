"""The orchestration behind the app's pages (and the CLI's demo): no Streamlit here.

Each function takes loaded models and plain inputs, calls the library (zoo, attacks,
evaluation, quantum), and returns plain dataclasses of NumPy arrays and numbers that a page
only has to lay out:

- :func:`compare_attack`: one image, one attack, several models side by side (Attack Lab).
- :func:`quantum_view`, :func:`noise_sweep`: what the circuit does with one image (Quantum Circuit).
- :func:`sweep`: a fresh epsilon sweep on N shipped images, with progress and cancellation
  (Robustness Explorer, Attacker Cost);
- :func:`load_results`, :func:`records_frame`, :func:`cost_frame` and :func:`adaptive_summary`
  for the committed results (``results/*.json``).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import evaluation, report, rng, studies, zoo
from .attacks import ATTACKS, EPS_RANGE, attack_params, get_attack
from .data import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, REPO_ROOT, Sample, get_spec, list_samples, load_sample_image
from .evaluation import (
    EVAL_SEED_OFFSET,
    evaluation_points,
    perturbation_norms,
    predict_probs,
    run_attack,
)
from .models import QShieldHybrid, classical_of, is_hybrid_name
from .noise import NoiseModel
from .quantum import CircuitConfig, QuantumCircuitLayer

RESULTS_DIR = REPO_ROOT / "results"


# --------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    """A shipped model ready for inference, or the reason it is unavailable."""

    dataset: str
    name: str
    grad_mode: str | None
    model: nn.Module | None
    card: dict
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.model is not None

    @property
    def label(self) -> str:
        return self.name if self.grad_mode is None else f"{self.name} ({self.grad_mode})"


def load(dataset: str, model_name: str, grad_mode: str = "paper", noise: NoiseModel | None = None) -> LoadedModel:
    """Load a shipped model for read-only use: eval mode, fast backend, parameters frozen.

    Freezing the parameters lets attacks skip weight gradients (they only need input
    gradients) and guarantees that one session's attack cannot change a shared model.
    Raises :class:`~qshield_core.zoo.ModelUnavailableError` when the files are missing or tampered.
    """
    model, card = zoo.load_model(dataset, model_name, grad_mode=grad_mode, backend="fast", noise=noise)
    model.requires_grad_(False)
    warm_up(model, get_spec(dataset).input_shape)
    is_hybrid = isinstance(model, QShieldHybrid)
    return LoadedModel(get_spec(dataset).name, model_name, grad_mode if is_hybrid else None, model, card)


def warm_up(model: torch.nn.Module, input_shape: tuple[int, ...]) -> None:
    """One forward and backward pass to the input on one grey image, so that the first attack a page times
    measures the model, not the one-off set-up of its first call (kernel selection for the batch-1 shapes,
    the hybrid's fused-head constants). Seeded, so it draws nothing from the global generators."""
    x = torch.full((1, *input_shape), 0.5, requires_grad=True)
    with rng.seeded(0):
        model(x).sum().backward()


# --------------------------------------------------------------------------- samples


def sample_table(dataset: str) -> list[dict]:
    """The shipped samples of ``dataset`` as plain dicts, with a readable ``title``."""
    spec = get_spec(dataset)
    return [dict(file=s.file, dataset=s.dataset, split=s.split, index=s.index, label=s.label,
                 class_name=spec.class_names[s.label],
                 title=f"{spec.class_names[s.label]} · {s.split} #{s.index}")
            for s in list_samples(dataset)]


def sample_image(entry: Mapping) -> torch.Tensor:
    """The (C, H, W) image of an entry of :func:`sample_table`."""
    return load_sample_image(Sample(**{k: entry[k] for k in ("file", "dataset", "split", "index", "label")}))


# --------------------------------------------------------------------------- progress


class Progress:
    """A thread-safe progress counter that a background job updates and a page reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._total = 1
        self._message = "starting"

    def update(self, done: int, total: int, message: str = "") -> None:
        with self._lock:
            self._done, self._total, self._message = done, max(total, 1), message

    def snapshot(self) -> tuple[float, str]:
        """(fraction done in [0, 1], message)."""
        with self._lock:
            return min(self._done / self._total, 1.0), self._message


# --------------------------------------------------------------------------- quantum circuit


@dataclass
class QuantumView:
    """One image through a hybrid: the CNN, the encoding, the circuit and the fusion."""

    config: CircuitConfig
    angles: np.ndarray
    basis_probs: np.ndarray
    quantum_probs: np.ndarray
    cnn_probs: np.ndarray
    fused_probs: np.ndarray
    alpha: float

    @property
    def prediction(self) -> int:
        return int(self.fused_probs.argmax())

    @property
    def cnn_prediction(self) -> int:
        return int(self.cnn_probs.argmax())

    @property
    def quantum_prediction(self) -> int:
        return int(self.quantum_probs.argmax())


def quantum_view(model: QShieldHybrid, image: torch.Tensor, seed: int = 0) -> QuantumView:
    """Run ``image`` (C, H, W) through ``model.details``; ``seed`` fixes the paper mode's projection draw."""
    with torch.no_grad(), rng.seeded(seed):
        out = model.details(image.unsqueeze(0))
    return QuantumView(
        config=model.circuit_config,
        angles=out.angles[0].double().numpy(),
        basis_probs=out.basis_probs[0].double().numpy(),
        quantum_probs=out.quantum_probs[0].double().numpy(),
        cnn_probs=torch.softmax(out.cnn_logits[0].double(), -1).numpy(),
        fused_probs=out.log_probs[0].double().exp().numpy(),
        alpha=float(out.alpha[0]),
    )


def circuit_probabilities(config: CircuitConfig, angles: np.ndarray, noise: NoiseModel,
                          weights: torch.Tensor | None = None) -> np.ndarray:
    """The 2^n basis-state probabilities of ``config`` under ``noise`` for one set of angles.

    ``weights``: a trained circuit's layer weights (a design with trainable layers, ``model.quantum.weights``);
    without them such a circuit runs with freshly initialised ones.
    """
    with rng.seeded(0):  # a layer with trainable gates draws its initial weights from torch's global generator
        layer = QuantumCircuitLayer(config.with_noise(noise), backend="fast")
    with torch.no_grad():
        if weights is not None and layer.weights is not None:
            layer.weights.copy_(torch.as_tensor(weights))
        return layer(torch.as_tensor(angles, dtype=torch.float64).unsqueeze(0))[0].numpy()


def noiseless_probabilities(config: CircuitConfig, angles: np.ndarray, weights: torch.Tensor | None = None
                            ) -> np.ndarray:
    """The same circuit without any noise: no noise model, no device noise, the exact distribution (no shots)."""
    clean = replace(config, device=None, shots=None)
    return circuit_probabilities(clean, angles, NoiseModel(kind="none", p=0.0), weights)


def class_distribution(basis_probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Truncate the basis distribution to the class count and renormalise (as the hybrid does)."""
    head = np.asarray(basis_probs, dtype=np.float64)[..., :num_classes]
    return head / np.clip(head.sum(-1, keepdims=True), 1e-12, None)


def noise_sweep(config: CircuitConfig, angles: np.ndarray, kind: str, strengths: Sequence[float],
                readout: float = 0.0, weights: torch.Tensor | None = None) -> np.ndarray:
    """Basis-state probabilities (len(strengths), 2^n) of the same angles under growing noise ``p``."""
    return np.stack([circuit_probabilities(config, angles, NoiseModel(kind=kind, p=float(p), readout=readout),
                                           weights) for p in strengths])


_DRAW_LOCK = threading.Lock()


def circuit_png(config: CircuitConfig, angles: np.ndarray | None = None, dpi: int = 90) -> bytes:
    """PennyLane's own drawing (``qml.draw_mpl``) of ``config`` as PNG bytes.

    Matplotlib's pyplot is not thread-safe, so concurrent sessions draw one at a time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .quantum import draw_figure

    with _DRAW_LOCK:
        fig = draw_figure(config, None if angles is None else torch.as_tensor(angles, dtype=torch.float64))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
    return buffer.getvalue()


# --------------------------------------------------------------------------- model cards


def model_cards_frame(directory: Path | None = None) -> pd.DataFrame:
    """One row per shipped model card (read, not verified): the figures the cards record."""
    rows = []
    for dataset in ("mnist", "organamnist", "cifar10"):
        for name in zoo.available_models(dataset, directory):
            try:
                card = zoo.read_card(dataset, name, directory)
            except zoo.ModelUnavailableError:
                continue
            accuracy = card.get("clean_test_accuracy")
            rows.append({
                "dataset": get_spec(dataset).display_name,
                "model": name,
                "clean test accuracy (%)": np.nan if accuracy is None else round(100 * accuracy, 2),
                "n test": card.get("n_test"),
                "parameters": card.get("parameter_count", card.get("parameters")),
                "mean α (test)": card.get("mean_alpha_test", np.nan),
                "train seconds": card.get("train_seconds"),
                "data": (card.get("data") or {}).get("source", ""),
            })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- attacks


class InferenceOnly(nn.Module):
    """A shared model behind a wrapper that stays in eval mode whatever a caller asks.

    torchattacks switches the model it attacks between train and eval mode; a model shared by
    every session of the app must never run a BatchNorm layer in training mode, so ``train()``
    on this wrapper does nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        super().train(False)

    def train(self, mode: bool = True) -> InferenceOnly:
        return self  # ``mode`` is ignored on purpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


UPLOAD_LIMITS = f"{MAX_UPLOAD_BYTES // (1024 * 1024)} MB and {MAX_UPLOAD_PIXELS:,} pixels"

APP_MAX_STEPS = {"n_queries": 2000}
"""Largest steps (or queries) the app's slider offers; iterations otherwise stop at 200."""

APP_BUDGET: dict[str, dict] = {
    "pgd100": {"steps": 50, "n_restarts": 1},
    "apgd-ce": {"steps": 50},
    "apgd-dlr": {"steps": 50},
    "autoattack": {"steps": 20, "n_queries": 500},
    "autoattack-rand": {"steps": 20, "eot_iter": 4},
    "eot-pgd": {"steps": 20, "eot_iter": 5},
    "bpda": {"steps": 40},
    "transfer-classical": {"steps": 50},
    "square5000": {"n_queries": 2000},
}
"""Budgets the app lowers so that one click on one image stays within a few seconds on 2 CPU cores.
The committed results and the CLI use the full presets; the page says when a budget was lowered."""


@dataclass(frozen=True)
class AttackChoice:
    """What a page needs to offer an attack: its name, its knobs and their ranges."""

    name: str
    display_name: str
    description: str
    threat: str
    access: str
    suite: str
    uses_eps: bool
    uses_steps: bool
    steps_label: str
    default_eps: float | None
    default_steps: int | None
    max_steps: int
    eps_range: tuple[float, float]
    budget: dict


def attack_choices(dataset: str) -> list[AttackChoice]:
    """Every registered attack with its preset for ``dataset`` (paper suite first)."""
    spec = get_spec(dataset)
    out = []
    for name, aspec in ATTACKS.items():
        preset = attack_params(name, spec.name)
        steps_param = aspec.steps_param
        default_steps = preset.get(steps_param) if steps_param else None
        ceiling = APP_MAX_STEPS.get(steps_param or "", 200)
        budget = APP_BUDGET.get(name, {})
        if steps_param in budget:
            default_steps = min(default_steps, budget[steps_param])
        out.append(AttackChoice(
            name=name, display_name=aspec.display_name, description=aspec.description, threat=aspec.threat,
            access=aspec.access, suite=aspec.suite, uses_eps=aspec.uses_eps,
            uses_steps=aspec.uses_steps and steps_param is not None,
            steps_label="queries" if steps_param == "n_queries" else "steps",
            default_eps=spec.paper_eps if aspec.uses_eps else None, default_steps=default_steps,
            max_steps=max(ceiling, default_steps or 1), eps_range=EPS_RANGE[spec.name], budget=budget,
        ))
    return out


FLIPPED, HELD, WRONG_BEFORE, CHANGED, UNCHANGED = "flipped", "held", "wrong before", "changed", "unchanged"
VERDICTS = (FLIPPED, HELD, WRONG_BEFORE, CHANGED, UNCHANGED)
"""What an attack did to one image, the one meaning used by the app's badge, the CLI demo and the handout."""


def attack_verdict(label: int | None, clean_pred: int, adv_pred: int) -> str:
    """The verdict on one attacked image, defined once (as the ASR counts it: ``evaluation.attack_metrics``).

    ``flipped``: correct before the attack, wrong after it. ``held``: correct before and after.
    ``wrong before``: the model was already wrong before the attack (the attack gets no credit).
    With an unknown true class (a drawing, a photo) only the honest comparison with the clean answer is
    left: ``changed`` or ``unchanged``.
    """
    if label is None:
        return CHANGED if adv_pred != clean_pred else UNCHANGED
    if clean_pred != label:
        return WRONG_BEFORE
    return HELD if adv_pred == label else FLIPPED


@dataclass
class ModelAttack:
    """One model's side of the Attack Lab: before, after, the perturbation and the attacker's cost."""

    key: str
    model_name: str
    grad_mode: str | None
    label: int | None
    image: np.ndarray
    adv_image: np.ndarray
    clean_probs: np.ndarray
    adv_probs: np.ndarray
    linf: float
    l2: float
    seconds: float
    forwards: float
    backwards: float
    surrogate_forwards: float | None
    surrogate_backwards: float | None
    gradient_source: str
    params: dict

    @property
    def perturbation(self) -> np.ndarray:
        return self.adv_image - self.image

    @property
    def clean_pred(self) -> int:
        return int(self.clean_probs.argmax())

    @property
    def adv_pred(self) -> int:
        return int(self.adv_probs.argmax())

    @property
    def flipped(self) -> bool:
        """Correct before the attack, wrong after it (False when the true class is unknown)."""
        return self.verdict == FLIPPED

    @property
    def changed(self) -> bool:
        """The attack changed the model's answer (whatever the true class)."""
        return self.adv_pred != self.clean_pred

    @property
    def verdict(self) -> str:
        """One of :data:`VERDICTS`, by :func:`attack_verdict`."""
        return attack_verdict(self.label, self.clean_pred, self.adv_pred)

    @property
    def clean_correct(self) -> bool | None:
        return None if self.label is None else self.clean_pred == self.label


@dataclass
class Notice:
    """Something a page should tell the user (a budget cap, a conversion, a caveat)."""

    level: str
    text: str


@dataclass
class Comparison:
    """The Attack Lab's result: one :class:`ModelAttack` per model, and what the page should say."""

    dataset: str
    attack: str
    display_name: str
    eps: float | None
    steps: int | None
    outcomes: dict[str, ModelAttack]
    notices: list[Notice]


def budget_notice(attack: str, dataset: str, budget: Mapping) -> str:
    """A sentence saying how the app lowers ``attack``'s preset budget (e.g. ``steps=40 (preset 100)``)."""
    preset = attack_params(attack, dataset)
    shown = ", ".join(f"{k}={v} (preset {preset.get(k)})" for k, v in budget.items())
    return (f"To keep one click within seconds, the app runs {get_attack(attack).display_name} with a smaller "
            f"budget: {shown}. The committed results and the CLI use the full preset.")


def needs_twin(attack: str) -> bool:
    """Whether ``attack`` takes its gradients on the hybrid's differentiable twin (BPDA)."""
    return get_attack(attack).surrogate == "differentiable-twin"


def surrogate_for(attack: str, loaded: LoadedModel, twin: LoadedModel | None, classical: LoadedModel | None
                  ) -> tuple[nn.Module | None, str]:
    """The model an attack takes its gradient on for ``loaded``, and a sentence saying which.

    BPDA uses the hybrid's differentiable twin; on a model that is already differentiable
    (the CNN, a differentiable-mode hybrid) it reduces to white-box PGD on the model itself.
    Transfer uses the classical CNN; on the CNN itself it is white-box PGD.
    """
    aspec = get_attack(attack)
    if aspec.surrogate == "differentiable-twin":
        if loaded.grad_mode == "paper":
            if twin is None or not twin.available:
                raise zoo.ModelUnavailableError(f"BPDA needs {loaded.name} in differentiable mode (unavailable).")
            return InferenceOnly(twin.model), f"BPDA: values from {loaded.label}, gradients from {twin.label}"
        return InferenceOnly(loaded.model), "already differentiable: BPDA is white-box PGD on this model"
    if aspec.surrogate == "classical":
        if classical is None or not classical.available:
            raise zoo.ModelUnavailableError("Transfer needs the classical CNN, which is unavailable.")
        source = "white-box on this model (it is the transfer source)" if loaded.name == "classical" else (
            "transferred from the classical CNN (this model is never queried)")
        return InferenceOnly(classical.model), source
    return None, ""


def compare_attack(dataset: str, image: torch.Tensor, label: int | None, attack: str,
                   models: Mapping[str, LoadedModel], *, eps: float | None = None, steps: int | None = None,
                   twin: LoadedModel | None = None, classical: LoadedModel | None = None, seed: int = 0,
                   app_budget: bool = True) -> Comparison:
    """Run ``attack`` on one image (C, H, W) against every model in ``models`` (unavailable ones skipped).

    With an unknown ``label`` each model is attacked away from its own clean prediction.
    ``app_budget`` lowers the slowest presets (:data:`APP_BUDGET`) and says so in the notices.
    """
    spec = get_spec(dataset)
    aspec = get_attack(attack)
    x = image.detach().float().reshape(1, *spec.input_shape)
    budget = dict(APP_BUDGET.get(aspec.name, {})) if app_budget else {}
    overrides = dict(budget)
    if aspec.steps_param in overrides:  # the steps knob goes through ``steps``, the caller's value first
        budget_steps = overrides.pop(aspec.steps_param)
        steps = budget_steps if steps is None else steps
    notices = [Notice("info", budget_notice(aspec.name, spec.name, budget))] if budget else []
    if label is None:
        notices.append(Notice("info", "True class unknown: each model is attacked away from its own prediction."))
    outcomes = {}
    for key, loaded in models.items():
        if not loaded.available:
            continue
        model = InferenceOnly(loaded.model)
        surrogate, source = surrogate_for(aspec.name, loaded, twin, classical)
        target = torch.tensor([label]) if label is not None else predict_probs(model, x, seed + EVAL_SEED_OFFSET
                                                                               ).argmax(-1)
        out = run_attack(model, x, target, aspec.name, spec.name, eps=eps, steps=steps, surrogate=surrogate, seed=seed,
                         **overrides)
        norms = perturbation_norms(x, out.adv_images)
        outcomes[key] = ModelAttack(
            key=key, model_name=loaded.name, grad_mode=loaded.grad_mode, label=label, image=x[0].numpy(),
            adv_image=out.adv_images[0].numpy(), clean_probs=out.clean_probs[0].double().numpy(),
            adv_probs=out.adv_probs[0].double().numpy(), linf=float(norms["linf"][0]), l2=float(norms["l2"][0]),
            seconds=out.seconds, forwards=out.forwards_per_image, backwards=out.backwards_per_image,
            surrogate_forwards=out.surrogate_forwards_per_image,
            surrogate_backwards=out.surrogate_backwards_per_image, gradient_source=source, params=out.params,
        )
    if aspec.stochastic_only:
        notices.append(Notice("caption", f"{aspec.display_name} averages over random draws: it targets the paper "
                                         "mode's random projection; on a deterministic model it is plain PGD at a "
                                         "higher price."))
    return Comparison(spec.name, aspec.name, aspec.display_name, eps, steps, outcomes, notices)


# --------------------------------------------------------------------------- sweeps


@dataclass
class Sweep:
    """A fresh sweep's records, ready for :func:`records_frame`."""

    records: list[dict] = field(default_factory=list)
    cancelled: bool = False


def sweep(dataset: str, models: Mapping[str, LoadedModel], attacks: Sequence[str], eps_values: Sequence[float], n: int,
          *, twin: LoadedModel | None = None, classical: LoadedModel | None = None, seed: int = 0,
          progress: Progress | None = None, cancel: threading.Event | None = None, app_budget: bool = True,
          batch_size: int = 64, draws: int | None = None) -> Sweep:
    """Attack ``n`` shipped samples (class-balanced, seeded) with every attack and epsilon, per model.

    Every record comes from the evaluation engine's one runner (:func:`qshield_core.evaluation.evaluate`),
    so it carries the same key, per-point outcomes, cost fields and multi-draw figures as a CLI cell
    on the shipped samples; with ``app_budget`` the key and the record say which budget was lowered.
    ``progress`` is updated after every batch; setting ``cancel`` stops after the current batch.
    """
    spec = get_spec(dataset)
    points = evaluation_points(spec.name, n, seed, source="samples")
    jobs = [(key, get_attack(a), eps) for key, loaded in models.items() if loaded.available for a in attacks
            for eps in (eps_values if get_attack(a).uses_eps else [None])]
    per_job = -(-len(points.labels) // batch_size)
    total = max(len(jobs) * per_job, 1)
    result = Sweep()
    for j, (key, aspec, eps) in enumerate(jobs):
        loaded = models[key]
        budget = dict(APP_BUDGET.get(aspec.name, {})) if app_budget else {}
        steps = budget.pop(aspec.steps_param, None) if aspec.steps_param else None
        surrogate, source = surrogate_for(aspec.name, loaded, twin, classical)
        eps_text = "" if eps is None else f", ε = {eps * 255:.1f}/255"
        message = f"{loaded.label} · {aspec.display_name}{eps_text}"
        if progress is not None:
            progress.update(j * per_job, total, message)

        def on_batch(done: int, _total: int, j=j, message=message) -> None:
            if progress is not None:
                progress.update(j * per_job + done, total, message)

        try:
            record = evaluation.evaluate(
                InferenceOnly(loaded.model), loaded.card, points, spec.name, loaded.name, loaded.grad_mode,
                aspec.name, eps=eps, steps=steps, seed=seed, surrogate=surrogate, batch_size=batch_size, draws=draws,
                overrides=budget, command=None, on_batch=on_batch,
                should_stop=None if cancel is None else cancel.is_set)
        except evaluation.Cancelled:
            result.cancelled = True
            return result
        result.records.append(dict(record, gradient_source=source, source_file="fresh sweep (this session)"))
    if progress is not None:
        progress.update(total, total, "done")
    return result


# --------------------------------------------------------------------------- result frames


STUDY_FILES = tuple(study.results_file for study in studies.STUDIES.values())
"""Results of the studies (their own models, their own points and n): shown by their own tables, not merged
into the shipped models' cells, where a study's n = 500 CNN cell would stand for the CNN beside hybrids measured
on 200 points."""
STUDY_SCRIPTS = tuple(study.script for study in studies.STUDIES.values())
"""The scripts that run them (train, evaluate, tables; resumable)."""


STUDY_DATASETS = ("mnist", "organamnist")
"""The datasets the studies run on (grids/design-study.toml, advtrain.toml, seed-study.toml)."""
STUDY_COLUMNS = ("model", "mode", "seeds", "above the CNN?", "AutoAttack robust %", "worst case robust %",
                 "clean %", "PGD-10 ASR %", "transfer robust %", "worst case - CNN, per seed (points) [95 %]")
"""The columns of :data:`qshield_core.studies.HEADER`, the verdict first after the model (the app's order)."""


@dataclass(frozen=True)
class StudyTable:
    """One committed study's table for one dataset, as the README shows it (:mod:`qshield_core.studies`)."""

    study: str
    title: str
    caption: str
    """The dataset, eps and n, in Markdown."""
    frame: pd.DataFrame
    """One row per model (:data:`STUDY_COLUMNS`)."""
    legend: str
    command: str
    note: str = ""
    """A finding beside the table (the seed study's ordering check), in Markdown."""


def study_tables(dataset: str, directory: Path | None = None) -> tuple[list[StudyTable], list[str]]:
    """Each study's table for ``dataset`` (:data:`qshield_core.studies.STUDIES`) from its committed results file
    (a study without records for it is left out), and the problems met reading them."""
    directory = Path(directory or RESULTS_DIR)
    tables, problems = [], []
    for study in studies.STUDIES.values():
        options, path = study.row_options(dataset), directory / study.results_file
        if options is None or not path.is_file():
            continue
        try:
            records = evaluation.load_results(path)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(f"Results file {study.results_file} could not be read ({err}).")
            continue
        table = studies.study_rows(records, dataset, **options)
        if table is None:
            continue
        note = study.note(table.results) if study.note else ""
        tables.append(_study_table(study, study.title, table.title, table, note))
        for heading, caption, more in study.more_tables(records, dataset) if study.more_tables else ():
            extra = studies.study_rows(records, dataset, **more)
            if extra is not None:
                tables.append(_study_table(study, heading, f"{caption}. {extra.title}", extra))
    return tables, problems


def _study_table(study: studies.Study, title: str, caption: str, table: studies.StudyRows,
                 note: str = "") -> StudyTable:
    frame = pd.DataFrame(table.rows, columns=studies.HEADER)[list(STUDY_COLUMNS)]
    frame = frame.replace(r"\*\*", "", regex=True)  # the README's bold: a data frame shows Markdown as typed
    return StudyTable(study.name, title, caption, frame, study.legend(), study.command, note)


def result_files(directory: Path | None = None) -> list[Path]:
    """The JSON result files of the shipped models under ``results/`` (sorted; :data:`STUDY_FILES` left out)."""
    directory = Path(directory or RESULTS_DIR)
    return sorted(p for p in directory.glob("*.json") if p.name not in STUDY_FILES) if directory.is_dir() else []


def load_results(directory: Path | None = None) -> tuple[list[dict], list[str]]:
    """All evaluation records under ``results/`` (tagged with their file) and the problems met.

    Only files in the evaluation's format (a list of records, or ``{"records": [...]}``) are read;
    other JSON files there (e.g. benchmark outputs) are not results and are passed over.
    """
    records, problems = [], []
    for path in result_files(directory):
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"Results file {path.name} could not be read ({err}).")
            continue
        rows = evaluation.records_of(data) or []
        records.extend(dict(r, source_file=path.name) for r in rows if isinstance(r, dict) and "attack" in r)
    return records, problems


def model_label(model: str, grad_mode: str | None) -> str:
    return model if not grad_mode else f"{model} ({grad_mode})"


def records_frame(records: Sequence[dict], dataset: str | None = None) -> pd.DataFrame:
    """Attack records as a flat frame for the curves: one row per (model, mode, attack, eps).

    Where several records share that identity, :func:`qshield_core.evaluation.select_record` picks one.
    """
    chosen = evaluation.select_records(
        r for r in records
        if r.get("eps") is not None and "robust_accuracy" in r and not (dataset and r.get("dataset") != dataset))
    out = []
    for r in chosen.values():
        asr_ci = r.get("asr_ci") or [np.nan, np.nan]
        ra_ci = r.get("robust_accuracy_ci") or [np.nan, np.nan]
        label = model_label(r["model"], r.get("grad_mode"))
        display = r.get("attack_display") or ATTACKS[r["attack"]].display_name
        out.append({
            "series": f"{label} · {display}", "dataset": r["dataset"], "model": r["model"],
            "grad_mode": r.get("grad_mode"), "attack": r["attack"], "attack_display": display, "eps": float(r["eps"]),
            "eps_255": round(float(r["eps"]) * 255, 2), "n": r.get("n"),
            "clean_accuracy": r.get("clean_accuracy"),
            "robust_accuracy": r["robust_accuracy"], "robust_accuracy_low": ra_ci[0], "robust_accuracy_high": ra_ci[1],
            "asr": np.nan if r.get("asr") is None else r["asr"], "asr_low": asr_ci[0], "asr_high": asr_ci[1],
            "source_file": r.get("source_file", ""),
        })
    columns = ["series", "dataset", "model", "grad_mode", "attack", "attack_display", "eps", "eps_255", "n",
               "clean_accuracy", "robust_accuracy", "robust_accuracy_low", "robust_accuracy_high", "asr", "asr_low",
               "asr_high", "source_file"]
    return pd.DataFrame(out, columns=columns).sort_values(["series", "eps"]).reset_index(drop=True)


def paper_reference_frame(dataset: str) -> pd.DataFrame:
    """The paper's published ASR at its epsilon (hybrids in the paper's mode), as curve points."""
    paper = report.load_paper_results()
    columns = ["series", "model", "attack", "eps", "value"]
    if paper is None:
        return pd.DataFrame(columns=columns)
    spec = get_spec(dataset)
    rows = []
    for (d, model, attack), asr in report.paper_asr(paper).items():
        if d != spec.name:
            continue
        mode = None if not is_hybrid_name(model) else "paper"
        attack_name = ATTACKS[attack]
        eps = spec.paper_eps if attack_name.uses_eps else None
        if eps is not None:
            rows.append({"series": f"{model_label(model, mode)} · {attack_name.display_name}", "model": model,
                         "attack": attack, "eps": eps, "value": asr})
    return pd.DataFrame(rows, columns=columns)


def paper_asr_table(dataset: str) -> pd.DataFrame:
    """The paper's ASR table (%) for one dataset: models by attacks, as published."""
    paper = report.load_paper_results()
    if paper is None:
        return pd.DataFrame()
    spec = get_spec(dataset)
    table = {}
    for (d, model, attack), asr in report.paper_asr(paper).items():
        if d == spec.name:
            table.setdefault(model, {})[ATTACKS[attack].display_name] = round(100 * asr, 2)
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("model").reset_index()


def cost_frame(records: Sequence[dict], dataset: str) -> pd.DataFrame:
    """Hybrid over classical cost per attack (same attack, epsilon and budget), with projected circuit runs.

    The time ratio splits into two factors: ``passes_ratio`` (how many more forward + backward passes the
    attack needed: a property of the model, for attacks that stop once they succeed) times
    ``per_pass_ratio`` (how much dearer one pass is: the simulator). Transfer attacks, which never
    query the target, have no passes ratio.
    """
    frame_rows = []
    paper = report.load_paper_results()
    paper_seconds = report.paper_attack_seconds(paper) if paper else {}
    chosen = evaluation.select_records(
        r for r in records
        if r.get("dataset") == dataset and "seconds_per_image" in r and r.get("attack") not in (None, "none"))
    for (_, model, mode, attack, eps), hyb in chosen.items():
        if not is_hybrid_name(model):
            continue
        cnn = chosen.get((dataset, classical_of(model), None, attack, eps))
        preset = evaluation.is_preset_budget(hyb)
        if cnn is None or evaluation.is_preset_budget(cnn) != preset:
            continue
        proj = hyb.get("projected_circuit_executions") or {}
        p_cnn, p_hyb = paper_seconds.get((dataset, "classical", attack)), paper_seconds.get((dataset, model, attack))
        passes_cnn = cnn["forwards_per_image"] + cnn["backwards_per_image"]
        passes_hyb = hyb["forwards_per_image"] + hyb["backwards_per_image"]
        passes_ratio = passes_hyb / passes_cnn if passes_cnn > 0 and passes_hyb > 0 else None
        seconds_ratio = hyb["seconds_per_image"] / max(cnn["seconds_per_image"], 1e-12)
        frame_rows.append({
            "attack": ATTACKS[attack].display_name, "series": model_label(model, mode), "model": model,
            "label": ATTACKS[attack].display_name + ("" if eps is None else f" ({eps * 255:.3g}/255)"),
            "grad_mode": mode, "eps_255": None if eps is None else round(eps * 255, 2), "preset budget": preset,
            "classical ms/img": 1000 * cnn["seconds_per_image"], "hybrid ms/img": 1000 * hyb["seconds_per_image"],
            "seconds_ratio": seconds_ratio, "passes_ratio": passes_ratio,
            "per_pass_ratio": None if passes_ratio is None else seconds_ratio / passes_ratio,
            "classical fwd/img": cnn["forwards_per_image"], "classical bwd/img": cnn["backwards_per_image"],
            "hybrid fwd/img": hyb["forwards_per_image"], "hybrid bwd/img": hyb["backwards_per_image"],
            "circuit runs/img": proj.get("circuit_evaluations_per_image"), "shots/img": proj.get("shots_per_image"),
            "paper hybrid/CNN time": None if not (p_cnn and p_hyb) else p_hyb / p_cnn,
            "n": min(hyb.get("n", 0), cnn.get("n", 0)), "source": hyb.get("source_file", ""),
        })
    return pd.DataFrame(frame_rows)


def circuit_cost_assumptions(shots: int = evaluation.DEFAULT_SHOTS) -> dict[str, str]:
    """The stated assumptions of :func:`~qshield_core.evaluation.projected_circuit_executions`, per mode."""
    return {mode: evaluation.projected_circuit_executions(
        1, 1, shots=shots, gradient_through_circuit=mode == "differentiable")["assumptions"]
        for mode in ("paper", "differentiable")}


# --------------------------------------------------------------------------- adaptive summary


@dataclass
class AdaptiveSummary:
    """The About page's digest of the adaptive results: a table and plain-language findings."""

    source: str
    table: pd.DataFrame
    findings: list[str]


def adaptive_summary(directory: Path | None = None) -> AdaptiveSummary | None:
    """Per hybrid (paper mode), the paper-protocol PGD ASR against the strongest adaptive attack's ASR.

    None when no adaptive records are committed. Numbers come only from the results files.
    """
    records, _ = load_results(directory)
    adaptive = [r for r in records if r.get("suite") == "adaptive" and r.get("asr") is not None]
    if not adaptive:
        return None
    rows, findings = [], []
    groups = sorted({(r["dataset"], r["model"], r.get("grad_mode")) for r in adaptive})
    for dataset, model, mode in groups:
        spec = get_spec(dataset)
        mine = [r for r in records if r.get("dataset") == dataset and r.get("model") == model
                and r.get("grad_mode") == mode]
        pgd, _, strongest = report.strongest_attacks(mine, dataset)
        if strongest is None:
            continue
        rows.append({
            "dataset": spec.display_name, "model": model_label(model, mode), "ε": f"{spec.paper_eps * 255:.0f}/255",
            "paper-protocol PGD ASR (%)": np.nan if pgd is None else round(100 * pgd["asr"], 1),
            "strongest adaptive attack": strongest.get("attack_display", strongest["attack"]),
            "its ASR (%)": round(100 * strongest["asr"], 1),
            "95 % interval": evaluation.format_interval(strongest.get("asr_ci")), "n": strongest.get("n"),
        })
        if pgd is not None:
            findings.append(
                f"{spec.display_name}, {model_label(model, mode)}: PGD as in the paper fools "
                f"{100 * pgd['asr']:.1f} % of the correctly classified images; "
                f"{strongest.get('attack_display', strongest['attack'])} fools {100 * strongest['asr']:.1f} % "
                f"{evaluation.format_interval(strongest.get('asr_ci'))}.")
    sources = sorted({r["source_file"] for r in adaptive})
    return AdaptiveSummary(", ".join(f"results/{s}" for s in sources), pd.DataFrame(rows), findings)


REPRODUCE_COMMANDS = """\
make test                                  # set up .venv, lint, run every test (browser tests included)
bash scripts/train_all.sh                  # retrain every shipped model: pretrained/*.safetensors + *.json cards
python -m qshield_core info                # the shipped models and their model-card figures
bash scripts/run_results.sh                # results/paper-reproduction.json, adaptive.json, sanity.json + tables
                                           # (resumable; STAGES, DATASETS, N, ... limit it: see the script)
python -m qshield_core evaluate --dataset mnist --model classical hybrid-full --attack pgd \\
    --eps 8/255 32/255 --n 1000 --json results/my-cells.json       # any single cell or sweep
python -m qshield_core table results/*.json   # Markdown tables of any results files
python bench/bench_app.py                  # this app's responsiveness (first page, one attack)
"""


def recorded_commands(records: Sequence[dict]) -> list[str]:
    """The distinct commands that produced the given records (each record stores its own)."""
    return sorted({r["command"] for r in records if r.get("command")})


# --------------------------------------------------------------------------- claim cards

CLAIMS_FILE_NAME = "claims.json"
CLAIMS_COMMAND = ("python -m qshield_core claims results/paper-reproduction.json results/adaptive.json "
                  "results/sanity.json --out results/claims.json --markdown results/claims.md --readme README.md")
CLAIMS_EXPLAINED = """\
- **Paper-protocol PGD** and **AutoAttack**: robust accuracy (correct before and after the attack) with its 95 %
  Wilson interval and n. For a randomised model (the paper mode redraws its projection at every call) the
  adversarial images are also judged over 5 draws of the randomness: mean ± standard deviation.
- **Worst case over attacks**: a point counts as robust only if it survives every attack run on it, over the points
  that every attack saw (the seeded subsets are nested, so n is the smallest cell's).
- **Masking audit** (after AutoAttack's own checks and RobustBench's admission rules): *randomised forward pass*
  (two identical calls differ), *branch cut from the input gradient* (the quantum branch has zero input gradient),
  *zero input gradients*, *robust accuracy at eps = 1* (ART's security-curve check: with an unbounded budget every
  point must fall), *gradient-free or transfer attack beats white-box ones* and *EOT gains over the plain attack*
  (both compared on the same points, beyond sampling noise). The live checks run on 30 shipped samples.
"""


def load_claim_cards(path: Path | None = None) -> tuple[list[dict], str | None]:
    """The committed claim cards, and the problem met reading them (None when fine or absent)."""
    from .audit import load_claims

    try:
        return load_claims(path or RESULTS_DIR / CLAIMS_FILE_NAME), None
    except (OSError, ValueError, KeyError) as err:
        return [], f"The claim cards could not be read ({err})."


@dataclass
class ClaimCardView:
    """What the Claims page shows of one card: a title, four headline figures, the verdict, the flags."""

    title: str
    figures: list[tuple[str, str, str]]
    admitted: bool
    reasons: list[str]
    flags: pd.DataFrame


def _claim_figure(entry: dict | None) -> str:
    if not entry:
        return "–"
    text = f"{100 * entry['robust_accuracy']:.1f} %"
    draws = entry.get("draws")
    if draws:
        text += f" (±{100 * draws['robust_accuracy']['std']:.1f})"
    return text


def _claim_help(entry: dict | None, what: str) -> str:
    if not entry:
        return f"No {what} record committed."
    text = f"{what}: 95 % interval {evaluation.format_interval(entry['robust_accuracy_ci'])}, n = {entry['n']}"
    draws = entry.get("draws")
    if draws:
        spread = draws["robust_accuracy"]
        text += (f"; over {draws['n_draws']} draws of the randomness: mean {100 * spread['mean']:.1f} %, "
                 f"range {100 * spread['min']:.1f}-{100 * spread['max']:.1f} %")
    return text


def claim_card_view(card: dict) -> ClaimCardView:
    """Arrange one committed claim card for the page (no computation)."""
    spec = get_spec(card["dataset"])
    clean = card.get("clean_accuracy")
    worst = card.get("worst_case")
    aa = card.get("autoattack")
    figures = [
        ("clean accuracy", "–" if not clean else f"{100 * clean['accuracy']:.1f} %",
         "No clean record." if not clean else f"n = {clean['n']}, 95 % interval "
         f"{evaluation.format_interval(clean['ci'])}"),
        ("paper-protocol PGD", _claim_figure(card.get("paper_protocol")),
         _claim_help(card.get("paper_protocol"), "PGD-10 as the paper runs it")),
        ("AutoAttack" + (" (rand)" if aa and aa["attack"] == "autoattack-rand" else ""), _claim_figure(aa),
         _claim_help(aa, "AutoAttack")),
        ("worst case over attacks", _claim_figure(worst),
         "No per-point records." if not worst else _claim_help(worst, f"{len(worst['attacks'])} attacks") + "."),
    ]
    flags = pd.DataFrame([{"check": f["title"], "result": {True: "raised", False: "clear", None: "not measured"}[
        f["raised"]], "evidence": f["evidence"], "what it means": f["advice"] or "–"} for f in card["flags"]])
    label = model_label(card["model"], card.get("grad_mode"))
    title = f"{spec.display_name} · {label} · ε = {card['eps'] * 255:.0f}/255"
    return ClaimCardView(title, figures, card["robustbench_admissible"], card["admission_reasons"], flags)
