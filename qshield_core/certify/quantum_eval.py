"""The quantum certificate over test points, for the shipped ``hybrid-full`` models.

``python scripts/quantum_certificate.py --out results/quantum-certificate.json [--n 500] [--source test]``
(:func:`main`). For each dataset, on ``n`` seeded class-balanced points
(:func:`qshield_core.evaluation.evaluation_points`): the distribution of the certified radii at the shipped
noise (:func:`qshield_core.certify.quantum.quantum_certificates`), the global certificate, the encoded-state
distance an attack at the paper's eps reaches (the target a certificate would have to cover), the pixel view,
and, over a grid of noise strengths, the first p whose certificate covers that target.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import get_spec
from ..evaluation import evaluation_points
from ..zoo import load_model
from . import quantum as Q

DATASETS = ("mnist", "organamnist")
SWEEP_KINDS = ("mixed", Q.GLOBAL_DEPOLARIZING)
"""The shipped noise family, and Du et al.'s global depolarizing noise on the noiseless circuit."""
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def distribution(values) -> dict:
    """Quantiles and mean of the finite values (and how many were not finite)."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"n": int(v.size), "n_finite": int(finite.size)}
    if finite.size:
        out.update({f"q{int(q * 100):02d}": float(np.quantile(finite, q)) for q in QUANTILES})
        out["mean"] = float(finite.mean())
    return out


def _in_batches(images: torch.Tensor, size: int):
    for start in range(0, len(images), size):
        yield images[start:start + size]


def _encode_all(model, images: torch.Tensor, batch: int) -> tuple[torch.Tensor, np.ndarray]:
    parts = [Q.encode(model, chunk) for chunk in _in_batches(images, batch)]
    return torch.cat([p[0] for p in parts]), np.concatenate([p[2] for p in parts])


def _attack_all(model, images: torch.Tensor, eps: float, steps: int, seed: int,
                batch: int) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    found = [Q.encoded_state_attack(model, chunk, eps, steps, generator=gen) for chunk in _in_batches(images, batch)]
    return torch.cat([f[0] for f in found]).numpy(), torch.cat([f[1] for f in found]).numpy()


def _sweep(model, states: np.ndarray, targets: np.ndarray, shipped_predicted: np.ndarray, kind: str, ps) -> dict:
    """Per p: radius distributions, the share of points whose target is covered, and the first covering p."""
    rows, pure_grid = [], []
    for p in ps:
        r = Q.radii_at(model, states, kind, float(p))
        pure_grid.append(r["pure"])
        glob = Q.global_certificate(model, kind=kind, p=float(p))
        rows.append({"p": float(p), "du_weight": float(r["du_weight"][0]),
                     "median_radius_pure": float(np.median(r["pure"])), "median_radius": float(np.median(r["radius"])),
                     "median_radius_du": float(np.median(r["du"])),
                     "covered_fraction": float((r["pure"] >= targets).mean()),
                     "prediction_changed_fraction": float((r["predicted"] != shipped_predicted).mean()),
                     "globally_constant_proved": glob.proved, "center_radius_pure": glob.center_radius_pure})
    first = Q.first_certifying_p(np.stack(pure_grid), ps, targets)
    return {"kind": kind, "grid": rows, "first_p": first,
            "first_p_summary": {"certified_at_some_p": float(np.isfinite(first).mean()),
                                "certified_without_noise": float((first == 0).mean()), **distribution(first)}}


def dataset_report(dataset: str, n: int = 500, source: str = "auto", data_root: str | None = None, seed: int = 0,
                   ps=Q.DEFAULT_PS, kinds=SWEEP_KINDS, attack_steps: int = 20, batch: int = 100) -> dict:
    """Everything the quantum certificate says about the shipped ``hybrid-full`` model of ``dataset``."""
    started = time.perf_counter()
    spec = get_spec(dataset)
    model, card = load_model(spec.name, "hybrid-full", grad_mode="differentiable")
    points = evaluation_points(spec.name, n, seed=seed, data_root=data_root, source=source)
    images, labels = points.images, points.labels.numpy()
    logits, states = _encode_all(model, images, batch)
    noise = model.circuit_config.noise
    r = Q.radii_at(model, states, noise.kind, noise.p, elementary=True)
    channel = Q.circuit_channel(model.circuit_config)
    fused = Q.fused_predictions(model, logits, r["q"]).numpy()
    targets, logit_change = _attack_all(model, images, spec.paper_eps, attack_steps, seed, batch)
    cnn_bound, factors = Q.cnn_lipschitz_upper_bound(model.cnn, tuple(images.shape[1:]))
    jac = torch.cat([Q.logit_jacobian_norms(model.cnn, chunk) for chunk in _in_batches(images, batch)]).numpy()
    dims = images[0].numel()
    logit_radius = np.array([Q.certified_logit_radius(model, z, t) for z, t in zip(logits, r["pure"], strict=True)])
    state_bound = np.array([Q.state_distance_bound(model, z, cnn_bound * spec.paper_eps * math.sqrt(dims))
                            for z in logits])
    sweeps = [_sweep(model, states, targets, r["predicted"], kind, ps) for kind in kinds]
    glob = Q.global_certificate(model)
    p_wire = Q.per_wire_depolarizing(noise)
    return {
        "dataset": spec.name, "model": "hybrid-full", "grad_mode": "differentiable (fixed projection)",
        "weights_sha256": card["weights_sha256"], "noise": channel.description,
        "points": {"n": len(labels), "kind": points.kind, "source": points.source, "selection": points.selection,
                   "indices_sha256": points.indices_sha256},
        "eps": spec.paper_eps,
        "accuracy": {"quantum_branch": float((r["predicted"] == labels).mean()),
                     "fused": float((fused == labels).mean()),
                     "quantum_equals_fused": float((r["predicted"] == fused).mean()),
                     "quantum_predicted_counts": np.bincount(r["predicted"], minlength=model.num_classes).tolist()},
        "channel": {"measured_contraction": channel.measured_contraction,
                    "channel_contraction_bounds": list(channel.contraction_bounds),
                    "global_depolarizing_weight": channel.global_depolarizing_weight,
                    "per_wire_depolarizing": p_wire},
        "global_certificate": vars(glob),
        "radius": {key: distribution(r[name]) for key, name in
                   (("pure", "pure"), ("any_state", "radius"), ("operator", "operator"),
                    ("elementary", "elementary"), ("du", "du"))},
        "du_naive": distribution([Q.du_radius(p_wire, a, b, channel.dim)
                                  for a, b in zip(r["top"], r["second"], strict=True)]),
        "gap": distribution((r["top"] - r["second"]) / r["q"][:, :model.num_classes].sum(1)),
        "target_at_eps": {"encoded_state_distance": distribution(targets),
                          "logit_change_l2": distribution(logit_change),
                          "attack": f"PGD on the encoded-state trace distance, {attack_steps} steps, L-inf eps "
                                    f"{spec.paper_eps:.4f}, step eps/4, random start (seed {seed})",
                          "covered_by_radius_pure": float((r["pure"] >= targets).mean()),
                          "covered_by_radius_any_state": float((r["radius"] >= targets).mean())},
        "pixels": {"cnn_lipschitz_upper_bound": cnn_bound, "cnn_layer_factors": factors,
                   "local_jacobian_norm": distribution(jac),
                   "certified_logit_radius": distribution(logit_radius),
                   "certified_pixel_radius_l2": distribution(logit_radius / cnn_bound),
                   "certified_pixel_radius_linf": distribution(logit_radius / cnn_bound / math.sqrt(dims)),
                   "first_order_pixel_radius_l2": distribution(logit_radius / jac),
                   "state_bound_at_eps": distribution(state_bound)},
        "sweeps": [{k: v for k, v in s.items() if k != "first_p"} for s in sweeps],
        "per_point": [{"index": int(i), "label": int(y), "quantum": int(q), "fused": int(f),
                       "radius_pure": round(float(rp), 6), "radius": round(float(ra), 6),
                       "target": round(float(t), 6),
                       **{f"first_p_{s['kind']}": (None if not np.isfinite(s["first_p"][b])
                                                    else float(s["first_p"][b])) for s in sweeps}}
                      for b, (i, y, q, f, rp, ra, t) in enumerate(zip(points.indices, labels, r["predicted"], fused,
                                                                      r["pure"], r["radius"], targets, strict=True))],
        "seconds": round(time.perf_counter() - started, 1),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The quantum-noise certificate of the shipped hybrid-full models.")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--n", type=int, default=500, help="points per dataset (default 500)")
    parser.add_argument("--source", default="auto", choices=("auto", "test", "samples"),
                        help="test split, shipped samples, or the test split when present (default)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-steps", type=int, default=20)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    reports = []
    for dataset in args.datasets:
        report = dataset_report(dataset, args.n, args.source, args.data_root, args.seed,
                                attack_steps=args.attack_steps)
        reports.append(report)
        print(f"{dataset}: n={report['points']['n']} ({report['points']['kind']}), median pure radius "
              f"{report['radius']['pure']['q50']:.4f}, globally constant proved: "
              f"{report['global_certificate']['proved']}, {report['seconds']} s", file=sys.stderr)
    command = "python scripts/quantum_certificate.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "reports": reports}, indent=1) + "\n")
    return 0
