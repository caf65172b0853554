"""The model zoo: weights (safetensors) plus a JSON model card per model, saved and loaded safely.

Loading never unpickles code: weights are read with ``safetensors``, the SHA-256 of the file is
checked against the card before anything is built, and the architecture is rebuilt from the
card's plain-JSON configuration.

Two folders hold models: the shipped ones in ``pretrained/`` (``$QSHIELD_PRETRAINED``), and the
models users train from their own circuit designs in ``user_models/`` (``$QSHIELD_USER_MODELS``),
named ``hybrid-<design name>``. A model is found by name, in the shipped folder first, so a user
model can never stand in for a shipped one; both are checked against their cards the same way.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import rng
from .data import REPO_ROOT, get_spec
from .hashing import file_digest
from .models import MODEL_NAMES, QShieldHybrid, build_model, split_backbone, split_variant
from .quantum import ENTANGLEMENTS, CircuitConfig

PRETRAINED_DIR = Path(os.environ.get("QSHIELD_PRETRAINED", REPO_ROOT / "pretrained"))
USER_MODELS_DIR = Path(os.environ.get("QSHIELD_USER_MODELS", REPO_ROOT / "user_models"))
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
"""A model or design name: letters, digits, '.', '_' and '-', no path separators, at most 80 characters."""


class ModelUnavailableError(RuntimeError):
    """A model's weights or card are missing, unreadable or do not match; the message names the file."""


@dataclass(frozen=True)
class ModelFiles:
    weights: Path
    card: Path


def is_builtin_name(model_name: str) -> bool:
    """The names this project trains and ships: classical, dnn, hybrid-<entanglement>, resnet18 and
    resnet18-hybrid-full (:data:`~qshield_core.models.MODEL_NAMES`)."""
    return model_name in MODEL_NAMES or (model_name.startswith("hybrid-")
                                         and model_name.removeprefix("hybrid-") in ENTANGLEMENTS)


def is_variant_name(model_name: str) -> bool:
    """``<shipped name>@<variant>``: a shipped architecture trained another way (e.g. adversarially); saved apart
    from the shipped models, like a design."""
    base, variant = split_variant(model_name)
    return variant is not None and is_builtin_name(base) and bool(NAME_PATTERN.fullmatch(variant))


def user_model_name(design_name: str) -> str:
    """The model name of a user design: ``hybrid-<design name>``; refuses unsafe names and shipped ones."""
    name = design_name if design_name.startswith("hybrid-") else f"hybrid-{design_name}"
    if not NAME_PATTERN.fullmatch(name.removeprefix("hybrid-")):
        raise ValueError(f"Design name {design_name!r}: use letters, digits, '.', '_' and '-' (at most 80).")
    if is_builtin_name(name):
        raise ValueError(f"Design name {design_name!r} gives {name}, a shipped model's name; choose another.")
    return name


def _check_name(model_name: str) -> None:
    if is_variant_name(model_name):
        return
    if (model_name not in MODEL_NAMES and not model_name.startswith("hybrid-")) or not NAME_PATTERN.fullmatch(
            model_name.removeprefix("hybrid-")):
        raise ModelUnavailableError(f"Unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}, "
                                    "hybrid-<design name> for a model trained from a circuit design, or "
                                    "<shipped name>@<variant> for one trained another way (e.g. adversarially).")


def default_directory(model_name: str) -> Path:
    """Where a model of this name is saved by default: shipped names in pretrained/, designs in user_models/."""
    return Path(PRETRAINED_DIR if is_builtin_name(model_name) else USER_MODELS_DIR)


def find_directory(dataset: str, model_name: str) -> Path:
    """The folder holding ``model_name``'s card: pretrained/ first, then user_models/ (else the default one)."""
    for directory in (PRETRAINED_DIR, USER_MODELS_DIR):
        if model_files(dataset, model_name, directory).card.is_file():
            return Path(directory)
    return default_directory(model_name)


def model_files(dataset: str, model_name: str, directory: Path | None = None) -> ModelFiles:
    """Where ``{dataset}-{model}.safetensors`` and its ``.json`` card live."""
    directory = Path(directory or PRETRAINED_DIR)
    stem = f"{get_spec(dataset).name}-{model_name}"
    return ModelFiles(directory / f"{stem}.safetensors", directory / f"{stem}.json")


def sha256_file(path: Path) -> str:
    """The SHA-256 of a weights file (as its card records it)."""
    return file_digest(path)


def save_model(model: nn.Module, card: dict, dataset: str, model_name: str,
               directory: Path | None = None) -> ModelFiles:
    """Write the weights and the card (with the weights' SHA-256) side by side."""
    files = model_files(dataset, model_name, directory)
    files.weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(files.weights), metadata={"dataset": dataset, "model": model_name})
    card = dict(card, weights_file=files.weights.name, weights_sha256=sha256_file(files.weights))
    files.card.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return files


def read_card(dataset: str, model_name: str, directory: Path | None = None) -> dict:
    """The model card as a dict (found by name without ``directory``: :func:`find_directory`);
    :class:`ModelUnavailableError` when missing or not JSON."""
    _check_name(model_name)
    files = model_files(dataset, model_name, directory or find_directory(dataset, model_name))
    if not files.card.is_file():
        raise ModelUnavailableError(f"Model card not found: {files.card}")
    try:
        return json.loads(files.card.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelUnavailableError(f"Model card {files.card} is not valid JSON ({err}).") from None


def load_model(dataset: str, model_name: str, grad_mode: str = "paper", backend: str = "fast",
               directory: Path | None = None, noise=None) -> tuple[nn.Module, dict]:
    """Load a model in eval mode, verifying its checksum. Returns (model, card).

    Without ``directory`` the model is found by name: shipped (pretrained/) first, then the user
    models (user_models/). ``noise`` (a :class:`~qshield_core.noise.NoiseModel`) replaces a hybrid's
    noise model, e.g. to watch how the output moves with noise strength; the weights are unchanged.
    """
    _check_name(model_name)
    directory = Path(directory) if directory is not None else find_directory(dataset, model_name)
    files = model_files(dataset, model_name, directory)
    card = read_card(dataset, model_name, directory)
    if not files.weights.is_file():
        raise ModelUnavailableError(f"Weights file not found: {files.weights} (its card {files.card.name} is there: "
                                    "the weights were removed or not copied with it; the README's *Training and "
                                    "evaluating* says how to train it again).")
    actual = sha256_file(files.weights)
    if actual != card.get("weights_sha256"):
        raise ModelUnavailableError(
            f"Weights file {files.weights} does not match its model card (SHA-256 {actual[:12]}... "
            f"expected {str(card.get('weights_sha256'))[:12]}...): it was modified or truncated. Refusing to load."
        )
    with rng.seeded(0):  # construction draws initial weights from torch's global generator: keep it off others'
        model = model_from_card(card, grad_mode=grad_mode, backend=backend, noise=noise)
    try:
        state = load_file(str(files.weights))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ModelUnavailableError(f"Weights file {files.weights} could not be loaded: {err}") from None
    return model.eval(), card


def model_from_card(card: dict, grad_mode: str = "paper", backend: str = "fast", noise=None) -> nn.Module:
    """Rebuild the (untrained) architecture a card describes: its model name, its circuit, and its ``backbone``
    (``resnet18`` for the paper's CNN; cards without the field are built on this project's CNN)."""
    circuit = None
    if "circuit" in card:
        circuit = CircuitConfig.from_dict(card["circuit"])
        if noise is not None:
            circuit = circuit.with_noise(noise)
    backbone = card.get("backbone")
    if backbone is not None and backbone != split_backbone(card["model"])[0]:
        raise ModelUnavailableError(f"The card of {card['dataset']}-{card['model']} names backbone {backbone!r}, "
                                    "which its model name does not: refusing to load.")
    return build_model(card["dataset"], card["model"], circuit=circuit, grad_mode=grad_mode, backend=backend,
                       projection_seed=card.get("projection_seed", 0), backbone=backbone)


def available_models(dataset: str, directory: Path | None = None) -> list[str]:
    """The shipped model names that have a card for ``dataset`` (not yet verified)."""
    return [m for m in MODEL_NAMES if model_files(dataset, m, directory).card.is_file()]


def user_models(dataset: str, directory: Path | None = None) -> list[str]:
    """The names of the models trained from circuit designs that have a card for ``dataset`` in user_models/."""
    folder = Path(directory or USER_MODELS_DIR)
    prefix = f"{get_spec(dataset).name}-"
    names = sorted(p.stem.removeprefix(prefix) for p in folder.glob(f"{prefix}hybrid-*.json"))
    return [n for n in names if not is_builtin_name(n) and NAME_PATTERN.fullmatch(n.removeprefix("hybrid-"))]


def load_weights_into(model: nn.Module, dataset: str, model_name: str, directory: Path | None = None) -> dict:
    """Verify and load a shipped model's weights into ``model`` (e.g. a hybrid's CNN). Returns the card."""
    source, card = load_model(dataset, model_name, directory=directory)
    target = model.cnn if isinstance(model, QShieldHybrid) and not isinstance(source, QShieldHybrid) else model
    target.load_state_dict(source.state_dict(), strict=True)
    return card

