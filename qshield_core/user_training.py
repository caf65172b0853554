"""Train a circuit design from the app: the hybrid recipe, one epoch from the shipped CNN, saved as a user model.

No Streamlit here: the Quantum Circuit page builds a :class:`TrainRequest` from its widgets, shows
:func:`problems` next to its Train button, and runs :func:`train_design` in a background job with a
progress callback and a cancel event.

What a request trains is what ``python -m qshield_core train --model hybrid --name NAME ...`` trains:
the hybrid recipe (:data:`qshield_core.train.HYBRID_RECIPE`: one epoch, Adam, the CNN at a tenth of
the learning rate) starting from the shipped classical CNN in ``pretrained/``, in the
``differentiable`` mode when the design has trainable layers. The model is ``hybrid-<name>``, saved
with its card in the user models folder (``user_models/`` or ``$QSHIELD_USER_MODELS``, never
``pretrained/``), where the zoo, the evaluation and the app find it by name.

``data="samples"`` trains on the shipped samples instead of the dataset (train split = test split,
batches of :data:`SAMPLES_BATCH_SIZE`, a few steps): a smoke run for the tests, asked for explicitly and
never a fallback for missing data. Its card says so (``data.source``).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import devices, zoo
from .data import DataError, dataset_available, get_spec, resolve_data_root
from .designs import Design
from .quantum import CircuitConfig
from .train import TrainConfig, TrainingCancelled, default_config, fit

APP_DATASETS = ("mnist", "organamnist")
"""The datasets the app trains on (one epoch takes about a minute on two CPU cores; CIFAR-10 several)."""
DATA_SOURCES = ("dataset", "samples")
SAMPLES_BATCH_SIZE = 50
"""Batch size of a smoke run on the shipped samples (100-110 images: two steps)."""
SOURCE = "the app's Quantum Circuit page"
DEVICES_HINT = ('Real-device noise needs the optional calibration snapshots: install them with '
                '`pip install -e ".[devices]"` (or `make devices`), then restart the app.')

_RUNNING: set[tuple[str, str]] = set()
_RUNNING_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainRequest:
    """What to train: a design (``circuit``: any of CircuitConfig's fields) under ``name`` for ``dataset``.

    ``overwrite`` replaces an existing user model of that name; ``data`` is ``"dataset"`` (the full
    training split) or ``"samples"`` (the shipped samples: a smoke run, see the module docstring).
    """

    dataset: str
    name: str
    circuit: dict = field(default_factory=dict)
    description: str = ""
    overwrite: bool = False
    data: str = "dataset"
    data_root: str | None = None

    @property
    def design(self) -> Design:
        return Design(self.name.strip(), dict(self.circuit), self.description, SOURCE)


@dataclass(frozen=True)
class TrainedDesign:
    """The end of a run: the saved model's files and card, or ``cancelled`` (nothing saved)."""

    dataset: str
    model_name: str
    cancelled: bool
    files: zoo.ModelFiles | None = None
    card: dict | None = None
    seconds: float = 0.0

    @property
    def on_samples(self) -> bool:
        return bool(self.card) and str(self.card.get("data", {}).get("source", "")).startswith("shipped samples")


def circuit_fields(entanglement: str = "full", depth: int = 1, variational: bool = False, noise_kind: str = "mixed",
                   p: float = 0.005, noise_placement: str = "every_layer", shots: int | None = None,
                   device: str | None = None) -> dict:
    """A design's ``circuit`` from the app's controls (``shots`` 0 or None: exact; ``device`` None: no device)."""
    circuit = {"entanglement": entanglement, "depth": int(depth), "variational": bool(variational),
               "noise": {"kind": noise_kind, "p": 0.0 if noise_kind in ("none", "thermal") else float(p)},
               "noise_placement": noise_placement, "shots": int(shots) if shots else None, "device": None}
    if device:
        circuit["device"] = {"backend": device, "qubits": None}
    return circuit


def model_name_for(name: str) -> str:
    """``hybrid-<name>``; :class:`ValueError` with the reason for an empty, unsafe or shipped name."""
    if not name.strip():
        raise ValueError("Give your design a name (letters, digits, '.', '_' and '-').")
    return zoo.user_model_name(name.strip())


def existing_files(dataset: str, model_name: str) -> zoo.ModelFiles | None:
    """The files of a model of this name already saved (user models, or shipped in pretrained/), else None."""
    for directory in (zoo.PRETRAINED_DIR, zoo.USER_MODELS_DIR):
        files = zoo.model_files(dataset, model_name, directory)
        if files.card.is_file() or files.weights.is_file():
            return files
    return None


def missing_data_message(dataset: str, data_root: str | None = None) -> str | None:
    """Where to put ``dataset`` when its files are not on disk (None when they are)."""
    if dataset_available(dataset, data_root):
        return None
    spec, root = get_spec(dataset), resolve_data_root(data_root)
    files = ", ".join(f"`{f}`" for f in spec.expected_files)
    return (f"{spec.display_name} is not on disk, and training needs its training split. Put {files} in the data "
            f"root `{root.path}` ({root.origin}; the layout of the README in `../shared/datasets`), or set "
            "`QSHIELD_DATA_ROOT` to a folder that holds them and restart the app (README, section Data).")


def device_problem(circuit: dict) -> str | None:
    """Why the design's device noise cannot be resolved here (the optional extra missing), else None."""
    device = circuit.get("device")
    if isinstance(device, dict) and "backend" in device and devices.snapshot_root() is None:
        return DEVICES_HINT
    return None


def problems(request: TrainRequest) -> list[str]:
    """Every reason ``request`` cannot be trained now, each saying what to change (empty: ready)."""
    found = []
    if request.dataset not in APP_DATASETS:
        spec = get_spec(request.dataset)
        return [f"The app trains designs on MNIST and OrganAMNIST; train one for {spec.display_name} from the "
                f"command line: `python -m qshield_core train --dataset {spec.name} --model hybrid --name NAME ...`."]
    if request.data not in DATA_SOURCES:
        found.append(f"data must be one of {', '.join(DATA_SOURCES)} (got {request.data!r}).")
    found += _name_problems(request)
    found += _circuit_problems(request)
    if not zoo.model_files(request.dataset, "classical", zoo.PRETRAINED_DIR).card.is_file():
        found.append(f"The shipped CNN the design starts from is missing: "
                     f"{zoo.model_files(request.dataset, 'classical', zoo.PRETRAINED_DIR).card}.")
    if request.data == "dataset":
        missing = missing_data_message(request.dataset, request.data_root)
        found += [missing] if missing else []
    return found


def _name_problems(request: TrainRequest) -> list[str]:
    try:
        model_name = model_name_for(request.name)
    except ValueError as err:
        return [str(err)]
    existing = existing_files(request.dataset, model_name)
    if existing is not None and existing.card.parent.resolve() == Path(zoo.PRETRAINED_DIR).resolve():
        return [f"{model_name} is a shipped model ({existing.card}); choose another name."]
    if existing is not None and not request.overwrite:
        return [f"A model named {model_name} already exists for {get_spec(request.dataset).display_name} "
                f"({existing.card}): choose another name, or overwrite it explicitly."]
    with _RUNNING_LOCK:
        if (request.dataset, model_name) in _RUNNING:
            return [f"{model_name} is being trained right now; choose another name or wait for it."]
    return []


def _circuit_problems(request: TrainRequest) -> list[str]:
    hint = device_problem(request.circuit)
    if hint:
        return [hint]
    try:
        request.design.config_for(request.dataset)
    except (ValueError, TypeError, devices.DeviceUnavailableError) as err:
        return [f"This circuit cannot be built: {err}"]
    return []


def train_config(request: TrainRequest) -> TrainConfig:
    """The run's :class:`TrainConfig`: the hybrid recipe for the resolved design, from the shipped CNN."""
    design = request.design
    config: CircuitConfig = design.config_for(request.dataset)
    extra = {"design": design.card_entry(), "data": request.data}
    overrides = {"batch_size": SAMPLES_BATCH_SIZE} if request.data == "samples" else {}
    return default_config(request.dataset, model_name_for(request.name), circuit=config.to_dict(), extra=extra,
                          **overrides)


def app_command(request: TrainRequest) -> str:
    """The card's regenerate line for a model trained in the app: the equivalent CLI run."""
    return (f"trained on the app's Quantum Circuit page; the same run: python -m qshield_core train --dataset "
            f"{request.dataset} --model hybrid --name {request.name} --circuit DESIGN.json, with this card's "
            "'circuit' as DESIGN.json's \"circuit\"")


def train_design(request: TrainRequest, progress: Callable[[int, int], object] | None = None,
                 cancel: threading.Event | None = None, log: Callable[[str], object] = lambda _: None
                 ) -> TrainedDesign:
    """Train ``request`` (after :func:`problems`, raised as one :class:`ValueError`) and save it as a user model.

    ``progress(step, total)`` is called after every training step; a set ``cancel`` event stops the run
    between steps and nothing is saved (the result says ``cancelled``). Checkpoints go to a temporary folder.
    """
    found = problems(request)
    if found:
        raise ValueError(" ".join(found))
    cfg = train_config(request)
    key = (cfg.dataset, cfg.model)
    with _RUNNING_LOCK:
        if key in _RUNNING:
            raise ValueError(f"{cfg.model} is being trained right now; choose another name or wait for it.")
        _RUNNING.add(key)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="qshield-train-") as checkpoints:
            result = fit(cfg, data_root=request.data_root, log=log, checkpoint_dir=Path(checkpoints),
                         on_step=progress, cancel=cancel, command=app_command(request))
    except TrainingCancelled:
        return TrainedDesign(cfg.dataset, cfg.model, True, seconds=time.perf_counter() - started)
    except DataError as err:
        raise ValueError(str(err)) from None
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(key)
    return TrainedDesign(cfg.dataset, cfg.model, False, result.files, result.card, time.perf_counter() - started)
