"""Training: seeded, resumable, with progress bars; writes weights and a model card.

Random state. A training run is a pure function of its :class:`TrainConfig`: the same config gives
bit-identical weights whatever else runs in the process (the app trains in a thread while other
threads attack). No step draws from torch's process-wide generator:

- data order and augmentation draw from one ``torch.Generator`` seeded with ``cfg.seed``, carried
  across epochs and saved in the checkpoint;
- weights are initialised by :func:`init_weights` from a generator seeded with ``cfg.seed``, which
  re-draws torch's default initialisation in construction order (so the values equal those of
  ``torch.manual_seed(cfg.seed)`` then construction, the recipe of the shipped models). The model is
  still constructed, and the ``init_from`` model loaded, inside ``rng.seeded(cfg.seed)``: their
  constructors draw from the global generator, and the scope keeps those draws from shifting the
  global stream under another thread's seeded scope;
- each forward pass of step k runs inside its own ``rng.seeded(step seed)`` scope, whose generator
  (:func:`qshield_core.rng.generator`) feeds the paper mode's random projection and the dropout
  masks (:class:`GeneratorDropout` stands in for ``nn.Dropout`` during training, as ``nn.Dropout``
  can only draw from the global generator). Step seeds are a hash of (``cfg.seed``, k), so a resumed
  run draws what an uninterrupted one does;
- the card's paper-mode accuracy is measured batch by batch inside seeded scopes too.

The recipes are those of the shipped models, and so are the data order and the initial weights;
the shipped weights were trained before this scheme, with dropout masks and projections drawn from
the global stream, so a retrain gives equally good but not bit-identical weights.

Why one scope per forward pass and not one per run: the scope holds the process-wide RNG lock,
and a run-long hold would stop every attack in the app for the run's duration. A forward pass
holds it for milliseconds to a few tenths of a second (the backward pass and the optimiser step
draw nothing and run outside it); the price is that a step waits while another thread's scope (an
attack batch) holds the lock. Because
the forward draws only from the scope's own generator, a thread that draws from torch's global
generator without the lock cannot change a training run either.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import rng
from .adversarial_training import AdversarialConfig, perturb, robustness_check
from .data import (
    SAMPLES_INDEX,
    DatasetSpec,
    ImageSplit,
    data_checksum,
    get_spec,
    list_samples,
    load_samples,
    load_split,
)
from .hashing import file_digest, files_digest
from .models import (
    GRAD_MODES,
    MODEL_NAMES,
    QShieldHybrid,
    build_model,
    classical_of,
    count_parameters,
    extra_epoch_source,
    is_hybrid_name,
    split_backbone,
    split_variant,
)
from .quantum import CircuitConfig, QuantumCircuitLayer
from .resnet import card_fields as resnet_card_fields
from .resnet import describe as describe_resnet
from .zoo import (
    ModelFiles,
    default_directory,
    is_builtin_name,
    load_weights_into,
    model_files,
    read_card,
    save_model,
)

CHECKPOINT_DIR = Path("checkpoints")
DATA_SOURCES = ("dataset", "samples")
EXTRA_KEYS = {"data": "where the images come from: 'dataset' (default, the full splits) or 'samples' (the shipped "
                      "samples, train split = test split: a smoke run in seconds, for tests, not a model to ship)",
              "design": "the circuit design's name, description and source file (models trained from a design; "
                        "recorded in the card)"}
_STEP, _EVAL = 1, 2  # purposes of derived seeds


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the model card).

    ``extra`` holds options outside the recipe; its keys are those of :data:`EXTRA_KEYS`.
    ``gaussian_sigma`` > 0 adds N(0, sigma^2) noise to every training input (after augmentation, not clipped):
    the base classifier of randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019, section 4).
    ``init_dir`` is where ``init_from`` is read (default: the output directory when it holds that model, else
    found by name: pretrained/, then the user models).
    ``circuit`` is a hybrid's whole circuit design (``CircuitConfig.to_dict``; None: the paper's circuit
    for the model name), required for a ``hybrid-<design name>`` model. ``grad_mode`` is the hybrid's
    gradient mode during training: ``paper`` (the shipped recipe: no gradient through the circuit) or
    ``differentiable`` (needed for trainable circuit layers to learn). ``adversarial`` (an
    :class:`~qshield_core.adversarial_training.AdversarialConfig` as a dict) trains on adversarial examples of
    every batch; such a model is a variant of a shipped name (``classical@fgsm-at``), never the shipped one.
    ``recipe`` names the recipe the run started from (:data:`RECIPE_NAMES`); any but ``shipped`` also needs a
    variant name. ``scratch`` (:data:`SCRATCH_RECIPE`) trains with Adam at a constant rate over every parameter.
    """

    dataset: str
    model: str
    epochs: int
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    augment: str = "crop"
    init_from: str | None = None
    cnn_lr_scale: float = 1.0
    gaussian_sigma: float = 0.0
    init_dir: str | None = None
    extra: dict = field(default_factory=dict)
    circuit: dict | None = None
    grad_mode: str = "paper"
    adversarial: dict | None = None
    recipe: str = "shipped"

    def __post_init__(self) -> None:
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {', '.join(GRAD_MODES)} (got {self.grad_mode!r}).")
        if self.circuit is not None:
            self.circuit = json.loads(json.dumps(self.circuit))  # JSON-normal (lists, not tuples), as the card
            if not is_hybrid_name(self.model):
                raise ValueError(f"A circuit design needs a hybrid model, not {self.model!r}.")
            CircuitConfig.from_dict(self.circuit)
        elif self.model.startswith("hybrid-") and not is_builtin_name(split_variant(self.model)[0]):
            raise ValueError(f"Model {self.model!r} is a circuit design's name: give its circuit "
                             "(TrainConfig.circuit).")
        if self.recipe not in RECIPE_NAMES:
            raise ValueError(f"Unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPE_NAMES)}.")
        if self.adversarial is not None:
            self.adversarial = AdversarialConfig.from_dict(self.adversarial).to_dict()
            if split_variant(self.model)[1] is None:
                raise ValueError(f"An adversarially trained model needs a variant name, e.g. {self.model}@fgsm-at, "
                                 f"not the shipped name {self.model!r}.")
        if self.recipe != "shipped" and split_variant(self.model)[1] is None:
            raise ValueError(f"The {self.recipe} recipe needs a variant name, e.g. {self.model}@{self.recipe}-s0, not "
                             f"the shipped name {self.model!r} (its recipe is the shipped one).")
        if split_backbone(self.model)[0] is not None and split_variant(self.model)[0] not in MODEL_NAMES:
            raise ValueError(f"Model {self.model!r}: on a backbone this project trains only "
                             f"{', '.join(m for m in MODEL_NAMES if split_backbone(m)[0])}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be at least 1 (got {self.epochs}, {self.batch_size}).")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer (got {self.seed!r}).")
        unknown = sorted(set(self.extra) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"Unknown TrainConfig.extra keys {unknown}; known: {', '.join(EXTRA_KEYS)}.")
        if not 0.0 <= self.gaussian_sigma <= 2.0:
            raise ValueError(f"gaussian_sigma must lie in [0, 2] (got {self.gaussian_sigma}).")
        if self.extra.get("data", "dataset") not in DATA_SOURCES:
            raise ValueError(f"extra['data'] must be one of {', '.join(DATA_SOURCES)} (got {self.extra['data']!r}).")


# Recipes chosen to fit a 2-core CPU budget; see README "Training".
DNN_RECIPE = dict(epochs=10, batch_size=128, lr=1e-3, weight_decay=1e-4, augment="none")
"""The paper's DNN recipe as its notebook runs it: Adam at a constant 1e-3, weight decay 1e-4, batch 128,
10 epochs, no augmentation (:func:`make_optimizer`)."""
RECIPES: dict[tuple[str, str], dict] = {
    ("mnist", "classical"): dict(epochs=5, lr=0.1, augment="shift2"),
    ("organamnist", "classical"): dict(epochs=10, lr=0.1, augment="shift2"),
    ("cifar10", "classical"): dict(epochs=16, lr=0.2, label_smoothing=0.1, augment="crop4-flip"),
    **{(d, "dnn"): DNN_RECIPE for d in ("mnist", "organamnist", "cifar10")},
    **{(d, "resnet18"): dict(DNN_RECIPE, epochs=e) for d, e in (("mnist", 2), ("organamnist", 3), ("cifar10", 2))},
}
"""The paper's ResNet-18 trains by its DNN's recipe (one ``train_model`` for both in its notebook), with fewer than
its 10 epochs: each sized to about 40 min on one core of this loaded 2-core machine (``bench/bench_resnet18.py``:
1.2-3.3 s a step of 128 with the load, median 2.5 s; README "The paper's ResNet-18, trained from scratch")."""
HYBRID_RECIPE = dict(epochs=1, lr=1e-3, weight_decay=1e-4, cnn_lr_scale=0.1)
ADVERSARIAL_RECIPE = dict(epochs=3, lr=0.02)
"""Adversarial training of a classical model: fine-tuned from the shipped one (SGD with a one-cycle schedule, as it
was trained, at a fifth of its peak rate), 3 epochs on adversarial examples: sized to this machine, far shorter
than Madry et al.'s runs (README "Adversarial training"). Its hybrid then takes the hybrid recipe from it."""
SCRATCH_RECIPE = dict(epochs=2, batch_size=128, lr=1e-3, weight_decay=1e-4, augment="none", init_from=None,
                      cnn_lr_scale=1.0, recipe="scratch")
"""The paper's recipe from scratch for any model, hybrids included (its notebook: Adam at a constant 1e-3, weight
decay 1e-4, batch 128, no augmentation; no model to start from): the seed study's (issue 14), with 2 epochs sized
to this machine instead of the paper's 10 (README "The seed study")."""
EXTRA_EPOCH_RECIPE = dict(HYBRID_RECIPE, recipe="extra-epoch")
"""A classical model fine-tuned as :data:`HYBRID_RECIPE` fine-tunes a hybrid's CNN, with no circuit: one epoch from
the model its name names (``init_from``, :func:`~qshield_core.models.extra_epoch_source`; adversarially, as the
hybrid's epoch was, with ``adversarial``), Adam with a one-cycle schedule peaking at ``lr * cnn_lr_scale``
(1e-4), weight decay 1e-4, batch 256, the CNN's own data pipeline. A hybrid built on a model has trained its CNN
that epoch more than the model it is compared with; this is the control (``resnet18@extra-epoch`` beside
``resnet18-hybrid-full``, ``classical@pgd-at-extra-epoch`` beside ``hybrid-full@pgd-at``) that tells the circuit's
effect from the epoch's."""
RECIPE_NAMES = ("shipped", "scratch", "extra-epoch")
PAPER_OPTIMISER_MODELS = ("dnn", "resnet18")
"""Models trained as the paper's notebook trains them: Adam at a constant learning rate (:func:`make_optimizer`)."""


def default_config(dataset: str, model: str, recipe: str = "shipped", **overrides) -> TrainConfig:
    """The recipe for (dataset, model), with any overrides (None values are ignored); ``recipe="scratch"``:
    :data:`SCRATCH_RECIPE` for every model (a variant name)."""
    dataset = get_spec(dataset).name
    hybrid, backbone, base = is_hybrid_name(model), split_backbone(model)[0], split_variant(model)[0]
    if recipe == "scratch":
        return TrainConfig(dataset=dataset, model=model, **dict(SCRATCH_RECIPE, **{
            k: v for k, v in overrides.items() if v is not None}))
    if recipe == "extra-epoch":
        source = extra_epoch_source(model)
        if hybrid or (dataset, base) not in RECIPES or source is None:
            raise ValueError(f"The extra-epoch recipe fine-tunes a classical model (classical, dnn, resnet18) under a "
                             f"control's name (resnet18@extra-epoch, classical@pgd-at-extra-epoch), not {model!r}.")
        cnn = RECIPES[(dataset, base)]
        recipe = dict(EXTRA_EPOCH_RECIPE, init_from=source, augment=cnn["augment"],
                      label_smoothing=cnn.get("label_smoothing", 0.0))
        return TrainConfig(dataset=dataset, model=model, **dict(recipe, **{
            k: v for k, v in overrides.items() if v is not None}))
    if not hybrid and (dataset, base) not in RECIPES:
        raise ValueError(f"No training recipe for model {model!r}; choose classical, dnn, resnet18, "
                         "hybrid-<entanglement> or resnet18-hybrid-full.")
    recipe = dict(HYBRID_RECIPE, init_from=classical_of(model)) if hybrid else RECIPES[(dataset, base)]
    if overrides.get("adversarial") is not None and not hybrid:  # fine-tuned from the shipped CNN
        recipe = dict(recipe, **ADVERSARIAL_RECIPE, init_from=base)
    if hybrid and backbone is not None:  # its CNN's data pipeline: for the paper's ResNet-18, no augmentation
        cnn = RECIPES[(dataset, backbone)]
        recipe = dict(recipe, augment=cnn["augment"], label_smoothing=cnn.get("label_smoothing", 0.0))
    elif dataset == "cifar10" and hybrid:
        recipe = dict(recipe, label_smoothing=0.1, augment="crop4-flip")
    elif hybrid:
        recipe = dict(recipe, augment="shift2")
    recipe = dict(recipe, **{k: v for k, v in overrides.items() if v is not None})
    if recipe.get("circuit") is not None and "grad_mode" not in recipe:
        # Trainable circuit layers learn only with a gradient through the circuit.
        variational = CircuitConfig.from_dict(recipe["circuit"]).variational
        recipe["grad_mode"] = "differentiable" if variational else "paper"
    return TrainConfig(dataset=dataset, model=model, **recipe)


# --------------------------------------------------------------------------- random state


def derived_seed(seed: int, purpose: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of one purpose (a training step, an evaluation batch) of run ``seed``.

    NumPy's ``SeedSequence`` hash keeps the seeds of neighbouring steps and of different runs unrelated.
    """
    state = np.random.SeedSequence([seed, purpose, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def init_weights(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every parameter of ``model`` from ``generator`` as torch's default initialisation does.

    Modules are visited in registration order, which is construction order for this project's
    models, so ``init_weights(model, Generator().manual_seed(s))`` gives the weights that
    ``torch.manual_seed(s)`` then construction gives. A module with its own ``reset_parameters_from(generator)``
    (the paper's ResNet-18: torchvision's initialisation) initialises itself and everything inside it. A module
    with parameters of another kind is an error, not a silent draw from the global generator.
    """
    own: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if id(module) in own:
                continue
            if callable(getattr(module, "reset_parameters_from", None)):
                module.reset_parameters_from(generator)
                own.update(map(id, module.modules()))
            elif isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, QuantumCircuitLayer) and module.weights is not None:
                nn.init.uniform_(module.weights, -0.1, 0.1, generator=generator)
            elif any(True for _ in module.parameters(recurse=False)):
                raise TypeError(f"init_weights does not know how to initialise {type(module).__name__}.")
    return model


class GeneratorDropout(nn.Dropout):
    """``nn.Dropout`` whose mask comes from the seeded scope's generator (:func:`qshield_core.rng.generator`).

    Same computation as ``nn.Dropout`` (zero with probability p, scale the rest by 1 / (1 - p));
    outside a seeded scope it draws from the global generator, as ``nn.Dropout`` does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=rng.generator()).div_(keep)
        return x.mul_(mask) if self.inplace else x * mask


_GLOBAL_RANDOM_LAYERS = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU)


@contextlib.contextmanager
def generator_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Swap every ``nn.Dropout`` of ``model`` for a :class:`GeneratorDropout` while the block runs.

    Dropout has no parameters or buffers, so the state dict is the same either way. Layers that
    draw from the global generator and have no stand-in here are refused with a clear error.
    """
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, _GLOBAL_RANDOM_LAYERS):
                raise TypeError(f"{type(child).__name__} draws from torch's global generator; "
                                "give it a stand-in in qshield_core.train.generator_dropout.")
            if type(child) is nn.Dropout:
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, GeneratorDropout(child.p, child.inplace).train(child.training))
    try:
        yield model
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child.train(getattr(parent, name).training))


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The two splits of a run and the checksum of the files they came from (for the card)."""

    train: ImageSplit
    test: ImageSplit
    checksum: dict


def load_training_data(cfg: TrainConfig, data_root: str | None = None) -> TrainingData:
    """The train and test splits ``cfg`` asks for (``cfg.extra['data']``, see :data:`EXTRA_KEYS`)."""
    spec = get_spec(cfg.dataset)
    if cfg.extra.get("data", "dataset") == "samples":
        return _samples_data(spec)
    return TrainingData(load_split(spec.name, "train", data_root), load_split(spec.name, "test", data_root),
                        data_checksum(spec.name, data_root))


def _samples_data(spec: DatasetSpec) -> TrainingData:
    """The shipped samples of ``spec`` as both splits; the checksum covers the images and the index (labels)."""
    images, labels = load_samples(spec.name)
    split = ImageSplit(spec.name, "samples", images.mul(255).round().to(torch.uint8), labels,
                       "shipped samples (assets/samples; train split = test split)", True)
    checksum = {"algorithm": "sha256", "file": f"assets/samples/{spec.name} images concatenated in index order",
                "value": files_digest(s.path for s in list_samples(spec.name)),
                "index_sha256": file_digest(SAMPLES_INDEX)}
    return TrainingData(split, split, checksum)


def augment_batch(images: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random shifts (zero or reflect padding, then crop) and optional horizontal flips; ``none`` changes nothing."""
    if kind == "none":
        return images
    pad = 4 if kind.startswith("crop4") else 2
    mode = "reflect" if kind.startswith("crop4") else "constant"
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    idx = torch.arange(n).view(n, 1, 1, 1)
    out = padded[idx, torch.arange(images.shape[1]).view(1, -1, 1, 1), rows, cols]
    if kind.endswith("flip"):
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


# --------------------------------------------------------------------------- optimisation


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps: int):
    """SGD+OneCycle for CNNs from scratch; Adam (paper's choice) with a slower CNN for hybrids; the DNN and the
    ResNet-18 as the paper trains them: Adam at a constant learning rate, weight decay (L2) on every parameter;
    the extra-epoch control (:data:`EXTRA_EPOCH_RECIPE`) as a hybrid's CNN group is trained."""
    if cfg.recipe == "extra-epoch":
        lr = cfg.lr * cfg.cnn_lr_scale
        opt = torch.optim.Adam([{"params": model.parameters(), "lr": lr}], weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr], total_steps=steps, pct_start=0.15)
    if split_variant(cfg.model)[0] in PAPER_OPTIMISER_MODELS or cfg.recipe == "scratch":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if isinstance(model, QShieldHybrid):
        groups = [{"params": model.cnn.parameters(), "lr": cfg.lr * cfg.cnn_lr_scale},
                  {"params": [p for n, p in model.named_parameters() if not n.startswith("cnn.")], "lr": cfg.lr}]
        opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                    pct_start=0.15)
        return opt, sched
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.25)
    return opt, sched


def loss_fn(model: nn.Module, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy on logits; NLL on the hybrid's log-probabilities (label smoothing on both)."""
    return F.cross_entropy(outputs, labels, label_smoothing=smoothing)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, desc: str | None = None,
            seed: int | None = None) -> torch.Tensor:
    """Predicted labels for uint8 or float images, in batches.

    With ``seed``, batch i runs inside ``rng.seeded(derived_seed(seed, ..., i))``: the paper mode's
    random projection is then reproducible. Without, it is drawn unseeded.
    """
    model.eval()
    preds = []
    for i, start in enumerate(tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False)):
        batch = images[start:start + batch_size]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch
        scope = contextlib.nullcontext() if seed is None else rng.seeded(derived_seed(seed, _EVAL, i))
        with scope:
            preds.append(model(batch).argmax(-1))
    return torch.cat(preds)


@torch.no_grad()
def mean_alpha(model: QShieldHybrid, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean fusion weight alpha over ``images`` (1 = the CNN alone)."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].float() / 255.0
        total += float(model.details(batch).alpha.sum())
    return total / len(images)


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Progress:
    """Where a run stands: epochs done, wall and CPU seconds spent, and the per-epoch history."""

    epoch: int = 0
    elapsed: float = 0.0
    cpu_elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)


def checkpoint_path(cfg: TrainConfig, directory: Path | None = None) -> Path:
    return Path(directory or CHECKPOINT_DIR) / f"{cfg.dataset}-{cfg.model}.ckpt.pt"


def _save_checkpoint(path: Path, cfg: TrainConfig, model, opt, sched, progress: Progress,
                     gen: torch.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": progress.epoch, "elapsed": progress.elapsed,
             "cpu_elapsed": progress.cpu_elapsed, "history": progress.history, "generator": gen.get_state()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, cfg: TrainConfig, model, opt, sched, gen: torch.Generator) -> Progress:
    """Restore a run from ``path``; refuses a checkpoint written for another configuration."""
    state = torch.load(path, weights_only=True)
    saved = state.get("config")
    if saved is not None:  # fields added after a checkpoint was written take their defaults
        saved = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **saved}
    if saved is not None and saved != asdict(cfg):
        changed = sorted(k for k in asdict(cfg) if saved.get(k) != asdict(cfg)[k])
        raise ValueError(f"Checkpoint {path} was written for another configuration (differs in {', '.join(changed)}); "
                         "delete it or train without --resume.")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    return Progress(state["epoch"], state["elapsed"], state.get("cpu_elapsed", 0.0), list(state.get("history", [])))


def _versions() -> dict:
    import pennylane
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "pennylane": pennylane.__version__, "numpy": np.__version__}


# --------------------------------------------------------------------------- training


class TrainingCancelled(RuntimeError):
    """A run stopped by its ``cancel`` event (checked before every step and before saving); nothing was saved."""


@dataclass
class TrainResult:
    """A finished run: the trained model (in memory, eval mode), its card as saved, and the two files."""

    model: nn.Module
    card: dict
    files: ModelFiles


def train(cfg: TrainConfig, data_root: str | None = None, resume: bool = False, out_dir: Path | None = None,
          log: Callable[[str], object] = print, checkpoint_dir: Path | None = None) -> dict:
    """Train, evaluate on the full test split, save weights + card; returns the card (see :func:`fit`)."""
    return fit(cfg, data_root, resume, out_dir, log, checkpoint_dir).card


def fit(cfg: TrainConfig, data_root: str | None = None, resume: bool = False, out_dir: Path | None = None,
        log: Callable[[str], object] = print, checkpoint_dir: Path | None = None, *,
        on_step: Callable[[int, int], object] | None = None, cancel: threading.Event | None = None,
        command: str | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.dataset``, evaluate on the test split, save weights + card in ``out_dir``
    (default: pretrained/ for the shipped names, user_models/ for a circuit design's ``hybrid-<name>``).

    A checkpoint is written to ``checkpoint_dir`` (default ``checkpoints/``) after every epoch;
    ``resume`` continues from it, with the history of the epochs already done. ``on_step(done, total)``
    is called after every optimiser step (steps of the whole run); a set ``cancel`` event stops the run
    before the next step (or before saving) with :class:`TrainingCancelled`. ``command`` is the card's
    regenerate command when the run was not started by ``python -m qshield_core train`` (a study, the app).
    """
    spec = get_spec(cfg.dataset)
    data = load_training_data(cfg, data_root)
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(data.train)} training images.")
    model, init_card = _initial_model(cfg, spec, out_dir, log)
    opt, sched = make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = checkpoint_path(cfg, checkpoint_dir)
    progress = Progress()
    if resume and ckpt.is_file():
        progress = _load_checkpoint(ckpt, cfg, model, opt, sched, gen)
        log(f"resumed from {ckpt} at epoch {progress.epoch}")
    with generator_dropout(model):
        for epoch in range(progress.epoch, cfg.epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            loss, acc = _train_epoch(model, data.train, cfg, opt, sched, gen, steps_per_epoch, epoch,
                                     on_step=on_step, cancel=cancel)
            progress.elapsed += time.perf_counter() - t0
            progress.cpu_elapsed += time.process_time() - c0
            progress.epoch = epoch + 1
            progress.history.append({"epoch": epoch + 1, "train_loss": round(loss, 4), "train_accuracy": round(acc, 4),
                                     "seconds": round(progress.elapsed, 1)})
            if cfg.adversarial is not None:  # catastrophic overfitting shows here (adversarial_training)
                progress.history[-1]["robust_check"] = robustness_check(
                    model, data.test.images, data.test.labels, cfg.adversarial["eps"], cfg.seed)
            _save_checkpoint(ckpt, cfg, model, opt, sched, progress, gen)
            log(json.dumps(progress.history[-1]))
    card = _evaluate_for_card(model, cfg, spec, data, progress, init_card)
    if command is not None:
        card["command"] = command
    _check_cancel(cancel)
    model = model.to(memory_format=torch.contiguous_format)
    directory = Path(out_dir) if out_dir is not None else default_directory(cfg.model)
    files = save_model(model, card, spec.name, cfg.model, directory)
    log(f"saved {files.weights} and {files.card}: clean test accuracy {card['clean_test_accuracy']:.4f}")
    return TrainResult(model.eval(), read_card(spec.name, cfg.model, directory), files)


def _initial_model(cfg: TrainConfig, spec: DatasetSpec, out_dir: Path | None, log) -> tuple[nn.Module, dict | None]:
    """The model before training: seeded initial weights, then the ``init_from`` model's CNN if any."""
    with rng.seeded(cfg.seed):  # constructors draw from the global generator: keep that off other threads' streams
        circuit = None if cfg.circuit is None else CircuitConfig.from_dict(cfg.circuit)
        model = build_model(spec.name, cfg.model, circuit=circuit, grad_mode=cfg.grad_mode, backend="fast")
        init_weights(model, torch.Generator().manual_seed(cfg.seed))
        init_dir = Path(cfg.init_dir) if cfg.init_dir else _init_directory(spec.name, cfg.init_from, out_dir)
        init_card = load_weights_into(model, spec.name, cfg.init_from, init_dir) if cfg.init_from else None
    if init_card is not None:
        log(f"initialised the CNN from {spec.name}-{cfg.init_from} ({init_card['weights_sha256'][:12]})")
    model = model.to(memory_format=torch.channels_last) if spec.channels == 3 else model
    return model, init_card


def _init_directory(dataset: str, init_from: str | None, out_dir: Path | None) -> Path | None:
    """Where ``init_from`` is read: the output directory when it holds that model, else found by name (None)."""
    if init_from is None or out_dir is None or not model_files(dataset, init_from, Path(out_dir)).card.is_file():
        return None
    return Path(out_dir)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TrainingCancelled("Training was stopped; nothing was saved.")


def _train_epoch(model, split: ImageSplit, cfg: TrainConfig, opt, sched, gen, steps: int, epoch: int, *,
                 on_step: Callable[[int, int], object] | None = None, cancel: threading.Event | None = None):
    """One epoch; the forward pass of global step k runs in ``rng.seeded(derived_seed(seed, ..., k))``.
    ``cancel`` is checked before each step, ``on_step(done, total)`` called after it (see :func:`fit`)."""
    model.train()
    adversarial = None if cfg.adversarial is None else AdversarialConfig.from_dict(cfg.adversarial)
    order = torch.randperm(len(split), generator=gen)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=f"{cfg.dataset}-{cfg.model} epoch {epoch + 1}/{cfg.epochs}", leave=False,
               mininterval=5)
    for step in bar:
        _check_cancel(cancel)
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        images = augment_batch(split.images[idx].float() / 255.0, cfg.augment, gen)
        if cfg.gaussian_sigma > 0:
            images = images + cfg.gaussian_sigma * torch.randn(images.shape, generator=gen)
        if images.shape[1] == 3:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = split.labels[idx]
        if adversarial is not None:
            images = perturb(model, images, labels, adversarial, gen)
        with rng.seeded(derived_seed(cfg.seed, _STEP, epoch * steps + step)):
            outputs = model(images)
        loss = loss_fn(model, outputs, labels, cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((outputs.argmax(-1) == labels).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        if on_step is not None:
            on_step(epoch * steps + step + 1, cfg.epochs * steps)
    return total_loss / seen, correct / seen


# --------------------------------------------------------------------------- model card


def _evaluate_for_card(model, cfg: TrainConfig, spec: DatasetSpec, data: TrainingData, progress: Progress,
                       init_card) -> dict:
    model.eval()
    test_split = data.test
    preds = predict(model, test_split.images, desc="test accuracy", seed=cfg.seed)
    accuracy = float((preds == test_split.labels).float().mean())
    card = {
        "dataset": spec.name,
        "model": cfg.model,
        "architecture": _architecture_name(model, spec.name, cfg.model),
        "parameter_count": count_parameters(model),
        "input": {"shape": list(spec.input_shape), "range": [0, 1], "normalisation": "inside the model",
                  "output": "log-probabilities (valid logits)" if isinstance(model, QShieldHybrid) else "logits"},
        "data": {"source": test_split.source, "exact": test_split.exact, "train_size": len(data.train),
                 "checksum": data.checksum},
        "clean_test_accuracy": round(accuracy, 4),
        "n_test": len(test_split),
        "train_seconds": round(progress.elapsed, 1),
        "train_cpu_seconds": round(progress.cpu_elapsed, 1),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("dataset", "model")},
        "history": progress.history,
        "versions": _versions(),
        "hardware": f"{platform.machine()}, {torch.get_num_threads()} CPU threads",
        "command": "python -m qshield_core " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py")
        else f"python -m qshield_core train --dataset {spec.name} --model {cfg.model}",
    }
    if cfg.adversarial is not None:
        card["adversarial_training"] = dict(cfg.adversarial,
                                            description=AdversarialConfig.from_dict(cfg.adversarial).describe())
    if not test_split.exact:
        card["data"]["note"] = "CIFAR-10 JPEG re-encoding: pixel values differ slightly from the original."
    if isinstance(model, QShieldHybrid):
        card.update(_hybrid_card_fields(model, cfg, test_split, accuracy, init_card))
    elif init_card is not None:
        card["init_from"] = {"model": f"{init_card['dataset']}-{init_card['model']}",
                             "weights_sha256": init_card["weights_sha256"]}
    if cfg.gaussian_sigma > 0:
        card["gaussian_noise_training"] = {
            "sigma": cfg.gaussian_sigma,
            "what": "N(0, sigma^2) added to every training input, not clipped: a base classifier for randomized "
                    "smoothing (Cohen et al. 2019); clean_test_accuracy is the base classifier on clean images",
        }
    if split_backbone(cfg.model)[0] == "resnet18":
        init_from = None if init_card is None else f"{init_card['dataset']}-{init_card['model']}"
        card.update(resnet_card_fields(cfg.model, spec.channels, cfg.epochs, cfg.batch_size, init_from))
    if cfg.model == "dnn":
        card["paper_model"] = {
            "name": "DNN", "source": "n-azimi/QShield, Jupyter Notebook.ipynb, 'The CNN and DNN Models'",
            "same": "layer sizes, BatchNorm, ReLU, dropout 0.2; Adam lr 1e-3 (constant), weight decay 1e-4, "
                    "batch 128, 10 epochs, no augmentation",
            "differs": "Normalize (dataset mean/std) as the first layer (the paper fed raw [0, 1] pixels; the first "
                       "BatchNorm makes this a re-parametrisation); logits out instead of log-softmax (same loss); "
                       "trained on the full training split (the paper cut every class to the smallest one's size)",
        }
    return card


def _hybrid_card_fields(model: QShieldHybrid, cfg, test_split, accuracy: float, init_card) -> dict:
    """The hybrid's card fields; ``accuracy`` is its test accuracy in the mode it was trained in, and the other
    mode's is measured here; the mean fusion weight alpha in the differentiable mode (its fixed projection). The
    model is left in its training mode."""
    by_mode = {cfg.grad_mode: accuracy}
    for mode in GRAD_MODES:
        if mode not in by_mode:
            model.grad_mode = mode
            by_mode[mode] = float((predict(model, test_split.images, desc=f"test ({mode})", seed=cfg.seed)
                                   == test_split.labels).float().mean())
    model.grad_mode = "differentiable"  # the fixed projection: alpha draws nothing
    alpha = mean_alpha(model, test_split.images)
    model.grad_mode = cfg.grad_mode
    fields_ = {} if "design" not in cfg.extra else {"design": cfg.extra["design"]}
    return {
        **fields_,
        "circuit": model.circuit_config.to_dict(),
        "noise_description": model.circuit_config.describe_noise(),
        "projection_seed": 0,
        "backend": model.backend,
        "trained_grad_mode": cfg.grad_mode,
        "clean_test_accuracy_by_grad_mode": {mode: round(by_mode[mode], 4) for mode in GRAD_MODES},
        "mean_alpha_test": round(alpha, 4),
        "init_from": None if init_card is None else {
            "model": f"{init_card['dataset']}-{init_card['model']}",
            "weights_sha256": init_card["weights_sha256"],
            "train_seconds": init_card["train_seconds"],
        },
    }


def _architecture_name(model: nn.Module, dataset: str, model_name: str = "classical") -> str:
    from .models import ARCHITECTURES, DNN_DROPOUT, DNN_WIDTHS

    if model_name == "dnn":
        spec = get_spec(dataset)
        sizes = (spec.channels * spec.image_size ** 2, *DNN_WIDTHS[spec.name], spec.num_classes)
        return f"mlp{sizes} (Linear, BatchNorm1d, ReLU, Dropout({DNN_DROPOUT}) per hidden layer; no convolution)"
    if split_backbone(model_name)[0] == "resnet18":
        spec = get_spec(dataset)
        base = describe_resnet(spec.channels, spec.num_classes)
    else:
        arch, kwargs = ARCHITECTURES[dataset]
        base = f"{arch}{tuple(kwargs['widths'])}"
    if isinstance(model, QShieldHybrid):
        c = model.circuit_config
        layers = "" if c.depth == 1 and not c.variational else \
            f", depth {c.depth}{', trainable' if c.variational else ''}"
        return f"{base} -> {c.n_qubits}-qubit {c.encoding}-angle circuit ({c.entanglement}{layers}) -> dynamic fusion"
    return base
