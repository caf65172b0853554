"""The randomized-smoothing study: what is proven beside what is broken, classical and hybrid.

``python scripts/certified_study.py [--dataset mnist organamnist] [--n 500] [--mc 1000]`` (:func:`main`).

For each dataset and noise level sigma (:data:`SIGMAS`, the issue's: 0.25 and 0.5 on MNIST, 0.12 and 0.25
on OrganAMNIST):

1. **Base models trained with Gaussian noise** (:func:`train_base_models`): the shipped classical CNN
   fine-tuned with N(0, sigma^2) added to every input (:data:`CLASSICAL_RECIPE`), then ``hybrid-full``
   initialised from that CNN and trained by the shipped hybrid recipe with the same noise. They live in
   ``pretrained/smoothed/<dataset>-sigma-<sigma>/`` with their cards (not among the app's shipped models).
   Cohen et al. train from scratch for 90 epochs; these are fine-tunings, and the cards say so.
2. **Certified accuracy** (:func:`run_cell`): Cohen et al.'s CERTIFY at ``n`` seeded class-balanced test
   points (:func:`qshield_core.evaluation.evaluation_points`), n0 = 100, alpha = 0.001, and ``mc`` Monte Carlo
   copies; the certified accuracy at each radius of :data:`CURVE_RADII`. The hybrid runs as shipped (paper
   mode); its n copies run in one call, so each point's certificate is for the smoothed hybrid with that
   call's projection held fixed (:mod:`qshield_core.certify.smoothing`, *Randomised base classifiers*).
3. **Empirical robust accuracy of the same smoothed model, on the same points**: SmoothAdv PGD-L2
   (:class:`qshield_core.attacks.smoothadv.SmoothAdvPGD`) at each radius of :data:`ATTACK_RADII`, the hybrid's
   gradient taken through its ``differentiable`` twin (BPDA, :class:`~qshield_core.attacks.StraightThrough`),
   each attacked point judged by the majority of ``votes`` noise draws (:func:`smoothing.majority_vote`).
   A point certified at radius r and broken at r would contradict the theorem (beyond the 1 - alpha
   confidence and the vote's Monte Carlo error; for the paper-mode hybrid the vote draws its own projection,
   so it judges a sibling of the certified classifier): the record counts such points.

Every cell is one record in ``results/certified.json``, keyed by dataset, model, sigma, n, mc and seed;
finished cells are skipped (resumable), so the study lands cell by cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from .. import rng
from ..attacks import StraightThrough
from ..attacks.smoothadv import SmoothAdvPGD
from ..data import get_spec
from ..evaluation import evaluation_points
from ..evaluation.metrics import wilson_interval
from ..evaluation.records import load_results, merge_record
from ..zoo import ModelUnavailableError, load_model, model_files
from .smoothing import Certificate, SmoothingConfig, certified_accuracy, certify_points, majority_vote, point_seed

SCHEMA = "qshield.certified/1"
RESULTS = Path("results/certified.json")
MODEL_ROOT = Path("pretrained/smoothed")
SIGMAS = {"mnist": (0.25, 0.5), "organamnist": (0.12, 0.25)}
MODELS = ("classical", "hybrid-full")
CURVE_RADII = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
ATTACK_RADII = {"mnist": (0.25, 0.5, 1.0), "organamnist": (0.125, 0.25, 0.5)}
CLASSICAL_RECIPE = dict(epochs=2, lr=0.02, augment="shift2")
"""Fine-tuning of the shipped CNN under noise: SGD + OneCycle (the CNN recipe's optimiser) at a fifth of its
peak learning rate, two epochs."""
ATTACK = dict(steps=10, samples=4)
VOTES = 200


def model_dir(dataset: str, sigma: float, root: Path = MODEL_ROOT) -> Path:
    return Path(root) / f"{get_spec(dataset).name}-sigma-{sigma:g}"


def cell_key(dataset: str, model: str, sigma: float, n: int, mc: int, seed: int) -> str:
    return f"{dataset}/{model}/sigma={sigma:g}/n={n}/mc={mc}/seed={seed}"


# --------------------------------------------------------------------------- base models


def train_base_models(dataset: str, sigma: float, data_root: str | None = None, root: Path = MODEL_ROOT,
                      log: Callable[[str], object] = print, epochs: int | None = None,
                      data: str = "dataset", batch_size: int | None = None,
                      checkpoint_dir: Path | None = None) -> Path:
    """Train (or keep, when their cards exist) the noise-trained classical CNN and hybrid-full of one sigma.
    Checkpoints go to ``checkpoint_dir`` (default ``checkpoints/smoothed/<dataset>-sigma-<sigma>``)."""
    from ..train import default_config, fit

    out = model_dir(dataset, sigma, root)
    extra = {"data": data} if data != "dataset" else {}
    recipe = dict(CLASSICAL_RECIPE, epochs=epochs or CLASSICAL_RECIPE["epochs"])
    classical = default_config(dataset, "classical", **recipe, init_from="classical", init_dir="pretrained",
                               gaussian_sigma=sigma, extra=extra, batch_size=batch_size)
    hybrid = default_config(dataset, "hybrid-full", gaussian_sigma=sigma, epochs=epochs, extra=extra,
                            batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.with_name(out.name + ".lock"))):  # two study processes never train one sigma twice
        for cfg in (classical, hybrid):
            if model_files(dataset, cfg.model, out).card.is_file():
                log(f"{out}/{dataset}-{cfg.model}: already trained")
                continue
            fit(cfg, data_root=data_root, resume=True, out_dir=out, log=log,
                checkpoint_dir=checkpoint_dir or Path("checkpoints") / "smoothed" / out.name,
                command=f"python scripts/certified_study.py --dataset {dataset} (trains {out.name} first; "
                        f"or qshield_core.certify.smoothing_eval.train_base_models('{dataset}', {sigma:g}))")
    return out


# --------------------------------------------------------------------------- one cell


def _models(dataset: str, model: str, directory: Path):
    """The model certified (as shipped: paper mode for the hybrid) and the one the attack differentiates."""
    target, card = load_model(dataset, model, grad_mode="paper", directory=directory)
    if model == "classical":
        return target, target, card
    surrogate, _ = load_model(dataset, model, grad_mode="differentiable", directory=directory)
    return target, StraightThrough(target, surrogate), card


def _attacked_votes(target, attackable, images, labels, indices, eps: float, sigma: float, seed: int,
                    votes: int, num_classes: int, batch: int = 50) -> tuple[list[int], list[float]]:
    """SmoothAdv at radius ``eps`` on every point, then the majority of ``votes`` draws at the attacked point."""
    predictions, shares = [], []
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        s = point_seed(seed + 1, indices[start]) + round(eps * 1000)
        with rng.seeded(s):
            adv = SmoothAdvPGD(attackable, eps=eps, sigma=sigma, **ATTACK,
                               generator=torch.Generator().manual_seed(s))(x, y)
        for image, index in zip(adv, indices[start:start + batch], strict=True):
            vs = point_seed(seed + 2, index) + round(eps * 1000)
            with rng.seeded(vs):
                top, share = majority_vote(target, image, sigma, votes, num_classes,
                                           torch.Generator().manual_seed(vs))
            predictions.append(top)
            shares.append(round(share, 4))
    return predictions, shares


def _proportion(hits: int, n: int) -> dict:
    return {"value": hits / n, "hits": hits, "ci": list(wilson_interval(hits, n))}


def run_cell(dataset: str, model: str, sigma: float, n: int = 500, mc: int = 1000, seed: int = 0,
             data_root: str | None = None, source: str = "auto", root: Path = MODEL_ROOT,
             votes: int = VOTES, log: Callable[[str], object] = print) -> dict:
    """Certify and attack one smoothed model on ``n`` points; returns the record."""
    spec = get_spec(dataset)
    directory = model_dir(spec.name, sigma, root)
    target, attackable, card = _models(spec.name, model, directory)
    points = evaluation_points(spec.name, n, seed, data_root, source)
    one_call = max(mc, 1000) if getattr(target, "randomised", False) else 1000  # smoothing: *Randomised base ...*
    cfg = SmoothingConfig(sigma=sigma, n0=100, n=mc, alpha=0.001, batch_size=one_call)
    t0 = time.perf_counter()
    certificates = certify_points(target, points.images, points.indices, cfg, spec.num_classes, seed,
                                  progress=lambda i, total: log(f"  certify {i}/{total}") if i % 100 == 0 else None)
    certify_seconds = time.perf_counter() - t0
    labels = points.labels
    curve = certified_accuracy(certificates, labels, list(CURVE_RADII))
    empirical = _empirical(target, attackable, points, certificates, spec, sigma, seed, votes, log)
    return {
        "schema": SCHEMA,
        "key": cell_key(spec.name, model, sigma, len(points.indices), mc, seed),
        "dataset": spec.name, "model": model, "sigma": sigma, "n": len(points.indices), "seed": seed,
        "source": points.kind, "points": points.indices, "points_sha256": points.indices_sha256,
        "model_card": {"directory": str(directory), "weights_sha256": card["weights_sha256"],
                       "clean_test_accuracy": card["clean_test_accuracy"]},
        "certify": {"n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "max_radius": cfg.max_radius,
                    "batch_size": cfg.batch_size, "seconds": round(certify_seconds, 1)},
        "curve": [{"radius": r, **_proportion(round(acc * len(certificates)), len(certificates))}
                  for r, acc in zip(CURVE_RADII, curve, strict=True)],
        "abstained": sum(c.abstained for c in certificates),
        "per_point": [_point(c, int(y)) for c, y in zip(certificates, labels, strict=True)],
        "empirical": empirical,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python scripts/certified_study.py " + " ".join(sys.argv[1:]),
    }


def _point(cert: Certificate, label: int) -> list:
    """[label, prediction (-1: abstain), radius, count of the top class]: one compact row per point."""
    return [label, cert.prediction, round(cert.radius, 5), cert.count_top]


def _empirical(target, attackable, points, certificates: list[Certificate], spec, sigma: float, seed: int,
               votes: int, log) -> list[dict]:
    """At each attack radius: robust accuracy under SmoothAdv, certified accuracy on the same points, and the
    points certified at that radius yet broken (which the theorem rules out, up to its 1 - alpha)."""
    rows = []
    labels = [int(y) for y in points.labels]
    for eps in ATTACK_RADII[spec.name]:
        t0 = time.perf_counter()
        preds, shares = _attacked_votes(target, attackable, points.images, points.labels, points.indices, eps,
                                        sigma, seed, votes, spec.num_classes)
        robust = [p == y for p, y in zip(preds, labels, strict=True)]
        certified = [c.prediction == y and c.radius >= eps for c, y in zip(certificates, labels, strict=True)]
        contradictions = [i for i, (c, r) in enumerate(zip(certified, robust, strict=True)) if c and not r]
        n = len(labels)
        rows.append({"radius": eps, "attack": "SmoothAdv PGD-L2", "attack_params": dict(ATTACK, votes=votes),
                     "robust": _proportion(sum(robust), n), "certified": _proportion(sum(certified), n),
                     "certified_but_broken": [points.indices[i] for i in contradictions],
                     "vote_share": shares, "predictions": preds, "seconds": round(time.perf_counter() - t0, 1)})
        log(f"  radius {eps:g}: robust {sum(robust) / n:.3f}, certified {sum(certified) / n:.3f}, "
            f"contradictions {len(contradictions)}")
    return rows


# --------------------------------------------------------------------------- the study


def cells(datasets: list[str]) -> list[tuple[str, str, float]]:
    return [(d, m, s) for d in datasets for s in SIGMAS[d] for m in MODELS]


def run_study(datasets: list[str], n: int, mc: int, seed: int, out: Path, data_root: str | None = None,
              train: bool = True, log: Callable[[str], object] = print, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Train what is missing, then run every cell not yet in ``out``; each record lands as it finishes.
    ``shard`` (i, k) takes every k-th cell from the i-th, so k processes can share the study; ``out`` is
    re-read before each cell, so a cell another process finished meanwhile is not run twice."""
    index, count = shard
    for dataset, model, sigma in cells(datasets)[index::count]:
        key = cell_key(dataset, model, sigma, n, mc, seed)
        if key in {r["key"] for r in load_results(out)}:
            log(f"{key}: done")
            continue
        if train:
            train_base_models(dataset, sigma, data_root, log=log)
        log(f"{key}: running")
        try:
            record = run_cell(dataset, model, sigma, n, mc, seed, data_root, log=log)
        except ModelUnavailableError as err:
            log(f"{key}: skipped ({err})")
            continue
        merge_record(out, record, SCHEMA)
    return load_results(out)


def write_readme_block(readme: Path, records: list[dict]) -> None:
    """Rewrite the README's ``<!-- qshield:certified -->`` block from ``records`` and the committed quantum report."""
    from ..report import update_marked_blocks
    from .views import certified_markdown, quantum_reports

    reports, _ = quantum_reports()
    text = update_marked_blocks(Path(readme).read_text(), {"certified": certified_markdown(records, reports)})
    Path(readme).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", nargs="+", default=list(SIGMAS), choices=list(SIGMAS))
    parser.add_argument("--n", type=int, default=500, help="test points per cell")
    parser.add_argument("--mc", type=int, default=1000, help="Monte Carlo copies of CERTIFY (Cohen et al.'s n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--data-root")
    parser.add_argument("--no-train", action="store_true", help="only run cells whose models exist")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--readme", type=Path, help="also update the <!-- qshield:certified --> block of this file")
    parser.add_argument("--report-only", action="store_true", help="run nothing: only rewrite the --readme block")
    parser.add_argument("--shard", default="0/1", help="i/k: run only every k-th cell from the i-th")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report_only:
        records = load_results(args.out)
    else:
        index, count = (int(v) for v in args.shard.split("/"))
        if not 0 <= index < count:
            parser.error(f"--shard {args.shard}: need 0 <= i < k")
        records = run_study(args.dataset, args.n, args.mc, args.seed, args.out, args.data_root, not args.no_train,
                            shard=(index, count))
    if args.readme:
        write_readme_block(args.readme, records)
    print(json.dumps([{"key": r["key"], "curve": [round(c["value"], 3) for c in r["curve"]]} for r in records],
                     indent=1))
    return 0


__all__ = ["cells", "main", "run_cell", "run_study", "train_base_models"]
