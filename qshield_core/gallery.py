"""The Gallery: shipped test images attacked as the paper does and as an adaptive attacker would.

For one dataset, the first ``per_class`` shipped test images of every class, each attacked three
ways (the three columns of the app's Gallery page):

1. the classical CNN under the paper-protocol attack (the ``pgd`` preset: PGD-10, Madry et al. 2018),
2. the hybrid in ``paper`` gradient mode under the same attack (what the paper's tables measure),
3. the same ``paper``-mode hybrid under the strongest adaptive attack that is affordable per image
   (:func:`choose_adaptive`: chosen from the committed ``results/adaptive.json``, Athalye et al. 2018's
   advice to attack the defence as it is built, Croce & Hein 2020's AutoAttack among the candidates).

Every attack goes through :func:`qshield_core.lab.compare_attack` (the Attack Lab's own engine), with
fixed seeds. Each cell gets one mark by the project's one rule (:func:`lab.attack_verdict`): *flipped*
(correct before, wrong after), *held* (correct before and after) or *wrong before* (the model already
erred on the clean image, so the attack proves nothing there).

The committed grids (``results/gallery-{dataset}.json``) are written by :func:`main`
(``python scripts/make_gallery.py --dataset mnist --out results/gallery-mnist.json``); the page shows
them at once when its settings are the defaults. No Streamlit here.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shlex
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import lab
from .attacks import ATTACKS, attack_params, get_attack
from .data import get_spec
from .evaluation import is_preset_budget

SCHEMA = "qshield.gallery/1"
PAPER_ATTACK = "pgd"
"""The paper-protocol attack: PGD with the paper's preset (10 steps of 2/255 at the paper's eps)."""
DEFAULT_HYBRID = "hybrid-full"
MAX_PASSES_PER_IMAGE = 500
"""An adaptive attack is affordable for the Gallery when its committed run needed at most this many forward
plus backward passes per image (on the attacked model and on any surrogate): counted, so the choice does not
depend on how busy the machine was; a grid of ten images then recomputes in seconds."""
FALLBACK_ADAPTIVE = "transfer-classical"
"""Used when no adaptive results are committed: it never queries the hybrid, so masking cannot stop it."""

FLIPPED, HELD, WRONG_BEFORE = lab.FLIPPED, lab.HELD, lab.WRONG_BEFORE
MARKS = (FLIPPED, HELD, WRONG_BEFORE)
"""The marks of a Gallery cell: :func:`lab.attack_verdict` with a known true class (defined there, once)."""


class GalleryCancelled(RuntimeError):
    """The computation was stopped before it finished (nothing partial is returned)."""


def outcome_mark(outcome: lab.ModelAttack) -> str:
    """The mark of one side of a :func:`lab.compare_attack` result (its true class must be known)."""
    if outcome.label is None:
        raise ValueError("A Gallery mark needs the image's true class.")
    return outcome.verdict


# --------------------------------------------------------------------------- the adaptive attack


@dataclass(frozen=True)
class AdaptiveChoice:
    """The adaptive attack of the third column, and why it is that one (a sentence for the page)."""

    attack: str
    display_name: str
    reason: str
    asr: float | None = None
    asr_ci: tuple[float, float] | None = None
    n: int | None = None
    passes_per_image: float | None = None
    source: str | None = None


def _at_paper_eps(records: Sequence[dict], dataset: str, model: str) -> list[dict]:
    """The adaptive, preset-budget records of ``model`` in paper mode at the dataset's paper eps, the
    largest cell per attack."""
    spec = get_spec(dataset)
    best: dict[str, dict] = {}
    for r in records:
        if (r.get("dataset") != spec.name or r.get("model") != model or r.get("grad_mode") != "paper"
                or r.get("suite") != "adaptive" or r.get("asr") is None or r.get("eps") is None
                or abs(float(r["eps"]) - spec.paper_eps) > 1e-6 or r.get("attack") not in ATTACKS
                or not is_preset_budget(r)):
            continue
        if r["attack"] not in best or r.get("n", 0) > best[r["attack"]].get("n", 0):
            best[r["attack"]] = r
    return list(best.values())


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _interval(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def passes_per_image(record: dict) -> float | None:
    """Forward plus backward passes per image of an attack record, the surrogate's included; None if unknown."""
    own = [record.get("forwards_per_image"), record.get("backwards_per_image")]
    if any(v is None for v in own):
        return None
    surrogate = [record.get("surrogate_forwards_per_image") or 0.0, record.get("surrogate_backwards_per_image") or 0.0]
    return float(sum(own) + sum(surrogate))


def choose_adaptive(records: Sequence[dict], dataset: str, model: str = DEFAULT_HYBRID,
                    max_passes: float = MAX_PASSES_PER_IMAGE) -> AdaptiveChoice:
    """The adaptive attack with the highest committed ASR on ``model`` (paper mode, paper eps) among those
    whose committed run needed at most ``max_passes`` passes per image; ties go to the cheaper one.

    Without committed adaptive records it falls back to :data:`FALLBACK_ADAPTIVE` and says so.
    """
    spec = get_spec(dataset)
    eps_text = f"ε = {spec.paper_eps * 255:.0f}/255"
    candidates = [(r, passes_per_image(r)) for r in _at_paper_eps(records, spec.name, model)]
    affordable = [(r, p) for r, p in candidates if p is not None and p <= max_passes]
    if not affordable:
        display = get_attack(FALLBACK_ADAPTIVE).display_name
        return AdaptiveChoice(FALLBACK_ADAPTIVE, display, (
            f"No adaptive results for {model} (paper mode) on {spec.display_name} at {eps_text} within "
            f"{max_passes:g} passes an image are committed, so the third column uses {display}: it attacks the CNN "
            "alone and never queries the hybrid, so no masking of the hybrid's gradient can stop it."))
    best, passes = max(affordable, key=lambda rp: (rp[0]["asr"], -rp[1]))
    display = best.get("attack_display") or get_attack(best["attack"]).display_name
    reason = (f"{display} is the strongest adaptive attack committed for {model} (paper mode) on "
              f"{spec.display_name} at {eps_text} among those that need at most {max_passes:g} forward and "
              f"backward passes an image: it fools {_pct(best['asr'])}{_interval(best.get('asr_ci'))} of the "
              f"{best.get('n_clean_correct', '')} correctly classified test images it attacked (n = {best.get('n')}, "
              f"{passes:.0f} passes an image; results/{best.get('source_file', 'adaptive.json')}).")
    dearer = sorted(((r, p) for r, p in candidates if r["asr"] > best["asr"] and (r, p) not in affordable),
                    key=lambda rp: -rp[0]["asr"])
    if dearer:
        reason += " Stronger but dearer: " + "; ".join(
            f"{r.get('attack_display') or r['attack']} ({_pct(r['asr'])}, "
            + ("unknown" if p is None else f"{p:.0f}") + " passes an image)" for r, p in dearer) + "."
    else:
        reason += " No committed adaptive attack is stronger."
    ci = best.get("asr_ci")
    return AdaptiveChoice(best["attack"], display, reason, float(best["asr"]), None if not ci else tuple(ci),
                          best.get("n"), passes, best.get("source_file"))


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    model: str
    """``"classical"`` or ``"hybrid"`` (the hybrid is always in paper mode here)."""
    attack: str


@dataclass(frozen=True)
class Cell:
    mark: str
    clean_pred: int
    adv_pred: int
    linf: float
    thumbnail: str
    """The adversarial image as a base64 PNG (8-bit)."""

    def pixels(self) -> np.ndarray:
        return decode_png(self.thumbnail)


@dataclass(frozen=True)
class Row:
    file: str
    split: str
    index: int
    label: int
    title: str
    cells: dict[str, Cell]


@dataclass(frozen=True)
class Settings:
    """Everything that determines a grid besides the model weights (whose checksums a grid records)."""

    dataset: str
    adaptive: str
    hybrid: str = DEFAULT_HYBRID
    per_class: int = 1
    eps: float | None = None
    """None means the paper's eps for the dataset."""
    seed: int = 0
    app_budget: bool = True
    limit: int | None = None
    """At most this many images (the first ones of the class-ordered selection); None for all."""

    def resolved_eps(self) -> float:
        return get_spec(self.dataset).paper_eps if self.eps is None else float(self.eps)

    def key(self) -> tuple:
        return (get_spec(self.dataset).name, self.adaptive, self.hybrid, self.per_class, round(self.resolved_eps(), 8),
                self.seed, self.app_budget, self.limit)


@dataclass
class Gallery:
    settings: Settings
    columns: list[Column]
    rows: list[Row]
    adaptive: AdaptiveChoice
    models: dict[str, str]
    """Model name -> SHA-256 of its weights (from its card)."""
    params: dict[str, dict] = field(default_factory=dict)
    """Column key -> the attack's exact parameters."""
    notices: list[str] = field(default_factory=list)
    command: str | None = None

    def totals(self) -> dict[str, dict[str, int]]:
        """Per column: how many cells carry each mark."""
        out = {c.key: dict.fromkeys(MARKS, 0) for c in self.columns}
        for row in self.rows:
            for key, cell in row.cells.items():
                out[key][cell.mark] += 1
        return out

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA, "command": self.command, "settings": asdict(self.settings),
            "eps": self.settings.resolved_eps(), "eps_255": round(self.settings.resolved_eps() * 255, 4),
            "adaptive": asdict(self.adaptive), "models": self.models, "columns": [asdict(c) for c in self.columns],
            "params": self.params, "notices": self.notices, "totals": self.totals(),
            "rows": [asdict(r) for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Gallery:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"Not a gallery file (schema {data.get('schema')!r}, expected {SCHEMA!r}).")
        adaptive = dict(data["adaptive"])
        if adaptive.get("asr_ci") is not None:
            adaptive["asr_ci"] = tuple(adaptive["asr_ci"])
        rows = [Row(**{**r, "cells": {k: Cell(**c) for k, c in r["cells"].items()}}) for r in data["rows"]]
        return cls(Settings(**data["settings"]), [Column(**c) for c in data["columns"]], rows,
                   AdaptiveChoice(**adaptive), dict(data["models"]), dict(data.get("params") or {}),
                   list(data.get("notices") or []), data.get("command"))


def adaptive_options() -> list[str]:
    """The adaptive attacks a user may put in the third column (those with an eps bound that apply to a
    paper-mode hybrid)."""
    return [name for name, a in ATTACKS.items() if a.suite == "adaptive" and a.uses_eps
            and a.applies_to(DEFAULT_HYBRID, "paper")]


def budget_note(attack: str, dataset: str) -> str | None:
    """A sentence saying how the app (and so the Gallery, its committed grid included) lowers ``attack``'s
    preset budget; None when it runs the full preset."""
    budget = lab.APP_BUDGET.get(attack)
    if not budget:
        return None
    preset = attack_params(attack, get_spec(dataset).name)
    shown = ", ".join(f"{k}={v} (preset {preset.get(k)})" for k, v in budget.items())
    return (f"The Gallery runs {get_attack(attack).display_name} with the app's smaller budget, {shown}, its "
            "committed grid included; the committed results (results/*.json) use the full preset. A smaller budget "
            "can only make the attack weaker.")


def columns_for(hybrid: str, adaptive: AdaptiveChoice) -> list[Column]:
    paper = get_attack(PAPER_ATTACK).display_name
    return [Column("classical", f"classical CNN · {paper}", "classical", PAPER_ATTACK),
            Column("hybrid-paper", f"{hybrid} (paper) · {paper}", "hybrid", PAPER_ATTACK),
            Column("hybrid-adaptive", f"{hybrid} (paper) · {adaptive.display_name}", "hybrid", adaptive.attack)]


def gallery_entries(dataset: str, per_class: int = 1, limit: int | None = None) -> list[dict]:
    """The first ``per_class`` shipped test images of every class, in class order (then ``limit``)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    seen: dict[int, int] = {}
    out = []
    for entry in lab.sample_table(dataset):
        seen[entry["label"]] = seen.get(entry["label"], 0) + 1
        if seen[entry["label"]] <= per_class:
            out.append(entry)
    out.sort(key=lambda e: e["label"])  # stable: the shipped order within a class
    return out if limit is None else out[:max(int(limit), 0)]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] to (H, W) or (H, W, 3) uint8."""
    array = np.asarray(image, dtype=np.float32)
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def original_thumbnail(entry: Mapping) -> str:
    """The shipped image of a row as a base64 PNG (8-bit), like the cells' thumbnails."""
    return encode_png(to_uint8(lab.sample_image(entry).numpy()))


def enlarge(pixels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W[, 3]) picture to about ``size`` pixels (crisp pixels)."""
    factor = max(1, size // pixels.shape[0])
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def model_checksums(models: Mapping[str, lab.LoadedModel]) -> dict[str, str]:
    """Model name -> weights SHA-256 (from the card) of the loaded models."""
    return {m.name: str(m.card.get("weights_sha256", "")) for m in models.values() if m.available}


def build_gallery(settings: Settings, classical: lab.LoadedModel, hybrid: lab.LoadedModel,
                  twin: lab.LoadedModel | None = None, adaptive: AdaptiveChoice | None = None, *,
                  progress: lab.Progress | None = None, cancel: threading.Event | None = None) -> Gallery:
    """Attack every image of the selection three ways (see the module docstring) through
    :func:`lab.compare_attack`; ``hybrid`` must be in paper mode, ``twin`` its differentiable twin (BPDA).

    ``progress`` is updated after every attack; setting ``cancel`` raises :class:`GalleryCancelled`.
    """
    spec = get_spec(settings.dataset)
    if hybrid.grad_mode != "paper":
        raise ValueError(f"The Gallery attacks the hybrid in paper mode, got {hybrid.label}.")
    for needed in (classical, hybrid):
        if not needed.available:
            raise ValueError(f"{needed.label} is unavailable: {needed.error}")
    adaptive = adaptive or AdaptiveChoice(settings.adaptive, get_attack(settings.adaptive).display_name, "")
    if adaptive.attack != settings.adaptive:
        raise ValueError(f"Settings ask for {settings.adaptive}, the choice is {adaptive.attack}.")
    columns = columns_for(settings.hybrid, adaptive)
    entries = gallery_entries(spec.name, settings.per_class, settings.limit)
    eps = settings.resolved_eps()
    rows, params, notices = [], {}, []
    total = 2 * len(entries)
    for i, entry in enumerate(entries):
        image = lab.sample_image(entry)
        outcomes = {}
        for j, (attack, models, keys) in enumerate((
                (PAPER_ATTACK, {"classical": classical, "hybrid-paper": hybrid}, ("classical", "hybrid-paper")),
                (adaptive.attack, {"hybrid-adaptive": hybrid}, ("hybrid-adaptive",)))):
            if cancel is not None and cancel.is_set():
                raise GalleryCancelled("stopped")
            if progress is not None:
                progress.update(2 * i + j, total, f"{entry['title']} · {get_attack(attack).display_name}")
            result = lab.compare_attack(spec.name, image, entry["label"], attack, models, eps=eps, twin=twin,
                                        classical=classical, seed=settings.seed, app_budget=settings.app_budget)
            notices.extend(n.text for n in result.notices if n.text not in notices)
            for key in keys:
                outcomes[key] = result.outcomes[key]
                params.setdefault(key, outcomes[key].params)
        rows.append(Row(entry["file"], entry["split"], int(entry["index"]), int(entry["label"]), entry["title"],
                        {c.key: _cell(outcomes[c.key]) for c in columns}))
    if progress is not None:
        progress.update(total, total, "done")
    return Gallery(settings, columns, rows, adaptive, model_checksums({"c": classical, "h": hybrid}),
                   _jsonable(params), notices)


def _cell(outcome: lab.ModelAttack) -> Cell:
    return Cell(outcome_mark(outcome), outcome.clean_pred, outcome.adv_pred, round(outcome.linf, 6),
                encode_png(to_uint8(outcome.adv_image)))


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# --------------------------------------------------------------------------- committed grids


def committed_path(dataset: str, directory: Path | None = None) -> Path:
    return Path(directory or lab.RESULTS_DIR) / f"gallery-{get_spec(dataset).name}.json"


def load_committed(dataset: str, directory: Path | None = None) -> Gallery | None:
    """The committed grid of ``dataset``, or None when there is none (a broken file raises ValueError)."""
    path = committed_path(dataset, directory)
    if not path.is_file():
        return None
    try:
        return Gallery.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path.name} is not a readable gallery file ({err}).") from err


def matches(gallery: Gallery, settings: Settings, checksums: Mapping[str, str]) -> bool:
    """Whether ``gallery`` is what :func:`build_gallery` gives for these settings and these weights."""
    return gallery.settings.key() == settings.key() and all(
        gallery.models.get(name) == sha for name, sha in checksums.items())


def default_settings(dataset: str, records: Sequence[dict], hybrid: str = DEFAULT_HYBRID) -> Settings:
    return Settings(get_spec(dataset).name, choose_adaptive(records, dataset, hybrid).attack, hybrid)


def make(settings: Settings | None = None, dataset: str = "mnist", progress: lab.Progress | None = None,
         command: str | None = None) -> Gallery:
    """Load the shipped models and build the grid (the command's work)."""
    records, _ = lab.load_results()
    hybrid_name = settings.hybrid if settings else DEFAULT_HYBRID
    spec = get_spec(settings.dataset if settings else dataset)
    choice = choose_adaptive(records, spec.name, hybrid_name)
    settings = settings or Settings(spec.name, choice.attack, hybrid_name)
    if settings.adaptive != choice.attack:
        choice = AdaptiveChoice(settings.adaptive, get_attack(settings.adaptive).display_name,
                                f"{get_attack(settings.adaptive).display_name}, as asked.")
    classical = lab.load(spec.name, "classical")
    hybrid = lab.load(spec.name, hybrid_name, grad_mode="paper")
    twin = lab.load(spec.name, hybrid_name, grad_mode="differentiable") if lab.needs_twin(choice.attack) else None
    gallery = build_gallery(settings, classical, hybrid, twin, choice, progress=progress)
    gallery.command = command
    return gallery


def write(gallery: Gallery, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gallery.to_dict(), indent=1) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Write a Gallery grid (the committed results/gallery-{dataset}.json).")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--out", type=Path, help="default: results/gallery-{dataset}.json")
    p.add_argument("--hybrid", default=DEFAULT_HYBRID)
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--limit", type=int, help="only the first N images (for checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adaptive", help="the third column's attack (default: chosen from results/adaptive.json)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python scripts/make_gallery.py") -> int:
    """The command behind the committed grids; prints the totals per column."""
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    spec = get_spec(args.dataset)
    records, _ = lab.load_results()
    adaptive = args.adaptive or choose_adaptive(records, spec.name, args.hybrid).attack
    get_attack(adaptive)  # a clear error for an unknown name
    settings = Settings(spec.name, adaptive, args.hybrid, args.per_class, None, args.seed, True, args.limit)
    command = prog + " " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    gallery = make(settings, command=command)
    out = args.out or committed_path(spec.name)
    write(gallery, out)
    for column in gallery.columns:
        counts = gallery.totals()[column.key]
        print(f"{column.title:<48} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"wrote {out} ({len(gallery.rows)} images)")
    return 0
