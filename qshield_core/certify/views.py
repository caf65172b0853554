"""What the Certified page and the README show of the certificates: tables, figures and plain-word summaries.

Nothing here certifies anything of its own: the numbers come from :mod:`qshield_core.certify.quantum` (live, for
one image) and from the committed results of :mod:`qshield_core.certify.smoothing_eval` and
``scripts/quantum_certificate.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from ..evaluation.metrics import format_interval, paired_difference_interval, paired_table
from ..viz import CLASSICAL_COLOUR, HYBRID_COLOUR
from . import quantum as Q

REPO_ROOT = Path(__file__).resolve().parents[2]
CERTIFIED_FILE = REPO_ROOT / "results" / "certified.json"
QUANTUM_FILE = REPO_ROOT / "results" / "quantum-certificate.json"
SMOOTHING_COMMAND = "python scripts/certified_study.py --dataset mnist organamnist --n 500 --mc 1000"
QUANTUM_COMMAND = "python scripts/quantum_certificate.py --out results/quantum-certificate.json --n 500"
NOISE_GRID = (0.0, 0.0001, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0)
"""Noise strengths of the page's slider and curve (the shipped circuit: mixed, p = 0.005)."""
MODEL_COLOURS = {"classical": CLASSICAL_COLOUR, "hybrid-full": HYBRID_COLOUR}


# --------------------------------------------------------------------------- committed results


def load_json_records(path: Path) -> tuple[list[dict], str | None]:
    """The records (or reports) of a committed results file, and a sentence when it is missing or unreadable."""
    if not Path(path).is_file():
        return [], f"{Path(path).name} is not committed yet."
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return [], f"{Path(path).name} is not valid JSON ({err})."
    items = data.get("records", data.get("reports")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        return [], f"{Path(path).name} holds no list of records."
    return items, None


def smoothing_records(dataset: str, path: Path = CERTIFIED_FILE) -> tuple[list[dict], str | None]:
    records, problem = load_json_records(path)
    return [r for r in records if r.get("dataset") == dataset], problem


def _percent_with_ci(entry: dict) -> str:
    return f"{entry['value']:.1%} {format_interval(entry['ci'])}"


def smoothing_table(records: list[dict]) -> pd.DataFrame:
    """One row per (model, sigma, attack radius): certified and attacked accuracy on the same points."""
    rows = []
    for r in sorted(records, key=lambda r: (r["sigma"], r["model"])):
        clean = r["curve"][0]
        for e in r["empirical"]:
            rows.append({
                "model": r["model"], "σ": r["sigma"], "L2 radius": e["radius"],
                "clean (r = 0)": _percent_with_ci(clean),
                "certified": _percent_with_ci(e["certified"]),
                "attacked": _percent_with_ci(e["robust"]),
                "gap (points)": e["robust"]["hits"] - e["certified"]["hits"],
                "contradictions": len(e["certified_but_broken"]),
                "n": r["n"], "cap": round(r["certify"]["max_radius"], 3),
            })
    return pd.DataFrame(rows)


def _paired_cell(hybrid_bits: list[bool], cnn_bits: list[bool]) -> str:
    """``+d [low, high] (verdict)``: hybrid - CNN in points, with Newcombe's paired interval
    (:func:`~qshield_core.evaluation.metrics.paired_difference_interval`)."""
    table = paired_table(hybrid_bits, cnn_bits)
    low, high = paired_difference_interval(*table)
    verdict = "above" if low > 0 else "below" if high < 0 else "within"
    return f"{(table[1] - table[2]) / sum(table) * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] ({verdict})"


def _certified_bits(record: dict, radius: float) -> list[bool]:
    """Per point (the record's order): correct with a certified radius of at least ``radius``."""
    return [prediction == label and certified >= radius for label, prediction, certified, _ in record["per_point"]]


def _attacked_bits(record: dict, radius: float) -> list[bool] | None:
    """Per point: still correct after the record's attack at ``radius`` (None: not attacked there)."""
    row = next((e for e in record["empirical"] if e["radius"] == radius), None)
    labels = [label for label, *_ in record["per_point"]]
    return None if row is None else [p == y for p, y in zip(row["predictions"], labels, strict=True)]


def smoothing_pairs(records: list[dict], baseline: str = "classical") -> pd.DataFrame:
    """Each smoothed hybrid against the smoothed CNN of its sigma on the same points (same ``points_sha256``):
    the per-point difference of certified and of attacked accuracy at each attack radius, in points, with
    Newcombe's interval for paired outcomes. Records on other points, or without per-point outcomes, are not paired
    (no row)."""
    rows = []
    records = [r for r in records if r.get("per_point") and r.get("points_sha256")]  # older records: no pairs
    for cnn in sorted((r for r in records if r["model"] == baseline), key=lambda r: r["sigma"]):
        for hybrid in sorted((r for r in records if r["model"] != baseline and r["sigma"] == cnn["sigma"]
                              and r["points_sha256"] == cnn["points_sha256"]), key=lambda r: r["model"]):
            for e in hybrid["empirical"]:
                radius, attacked = e["radius"], _attacked_bits(cnn, e["radius"])
                rows.append({
                    "hybrid": hybrid["model"], "σ": hybrid["sigma"], "L2 radius": radius, "n (same points)": cnn["n"],
                    "certified: hybrid - CNN, points [95 % CI]":
                        _paired_cell(_certified_bits(hybrid, radius), _certified_bits(cnn, radius)),
                    "attacked: hybrid - CNN, points [95 % CI]":
                        "–" if attacked is None else _paired_cell(_attacked_bits(hybrid, radius), attacked),
                })
    return pd.DataFrame(rows)


PAIRS_NOTES = ("Each smoothed hybrid against the smoothed CNN of the same sigma, point by point on the same test "
               "points: hybrid - CNN in percentage points, with Newcombe's interval for paired outcomes (it uses that "
               "both were judged on the same points, and is narrower than two overlapping Wilson intervals); "
               "\"above\" or \"below\": the interval excludes 0.")


TABLE_NOTES = ("clean (r = 0): the smoothed model's accuracy (abstentions count as wrong); certified: correct with a "
               "certified L2 radius of at least the row's; attacked: correct after SmoothAdv PGD-L2 at that radius; "
               "gap: points neither proven nor broken; contradictions: points certified yet broken (the theorem rules "
               "them out, up to its 1 - alpha); cap: the largest radius CERTIFY can return with its n copies. 95 % "
               "Wilson intervals over the test points.")


def smoothing_figure(records: list[dict], height: int = 400) -> go.Figure:
    """Certified accuracy against the L2 radius (lines) and the accuracy left under attack (markers), per model
    and sigma; dashes tell the sigmas apart, and a dotted line marks each sigma's cap (no larger radius can be
    certified with that many Monte Carlo copies)."""
    fig = go.Figure()
    dashes = ["solid", "dash", "dot"]
    sigmas = sorted({r["sigma"] for r in records})
    styles = {"classical": {"width": 5, "opacity": 0.45, "symbol": "x"},
              "hybrid-full": {"width": 2, "opacity": 1.0, "symbol": "circle-open"}}
    for r in sorted(records, key=lambda r: (r["model"], r["sigma"])):
        colour = MODEL_COLOURS.get(r["model"], "#444")
        style = styles.get(r["model"], styles["hybrid-full"])
        name = f"{r['model']}, σ = {r['sigma']:g}"
        dash = dashes[sigmas.index(r["sigma"]) % len(dashes)]
        fig.add_trace(go.Scatter(x=[c["radius"] for c in r["curve"]], y=[c["value"] for c in r["curve"]],
                                 mode="lines", name=f"{name}: certified", legendgroup=name, opacity=style["opacity"],
                                 line={"color": colour, "dash": dash, "width": style["width"]}))
        attacked = r["empirical"]
        fig.add_trace(go.Scatter(x=[e["radius"] for e in attacked], y=[e["robust"]["value"] for e in attacked],
                                 mode="markers", name=f"{name}: attacked", legendgroup=name,
                                 marker={"color": colour, "symbol": style["symbol"], "size": 12,
                                         "line": {"width": 2, "color": colour}}))
    for sigma in sigmas:
        cap = next(r["certify"]["max_radius"] for r in records if r["sigma"] == sigma)
        fig.add_vline(x=cap, line_dash="dot", line_color="#999",
                      annotation_text=f"cap, σ = {sigma:g}", annotation_position="bottom left")
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      xaxis_title="L2 radius", yaxis_title="accuracy", yaxis_range=[0, 1.02],
                      legend={"orientation": "h", "yanchor": "top", "y": -0.22})
    return fig


def quantum_reports(path: Path = QUANTUM_FILE) -> tuple[list[dict], str | None]:
    return load_json_records(path)


def quantum_summary(report: dict) -> dict[str, str]:
    """Plain-word figures of one committed quantum-certificate report (one dataset's hybrid-full)."""
    radius, target = report["radius"]["pure"], report["target_at_eps"]["encoded_state_distance"]
    covered = sum(p["radius_pure"] >= p["target"] for p in report["per_point"])
    first = [p["first_p_mixed"] for p in report["per_point"] if p.get("first_p_mixed") is not None]
    g = report["global_certificate"]
    n = len(report["per_point"])
    return {
        "points": str(report["points"]["n"]),
        "median certified trace distance (pure states)": f"{radius['q50']:.3f}",
        "median distance an eps attack reaches": f"{target['q50']:.3f}",
        "points whose certificate covers that distance": f"{covered} of {n}",
        "points some noise p <= 1 would cover (mixed)": f"{len(first)} of {n}"
        + (f"; first covering p: median {np.median(first):.2g}, quartiles {np.quantile(first, 0.25):.2g}-"
           f"{np.quantile(first, 0.75):.2g}" if first else ""),
        "quantum branch constant for every input": ("yes, class " + str(g["constant_class"])) if g["proved"] else "no",
    }


def _markdown(frame: pd.DataFrame) -> str:
    from ..report import markdown_table

    return markdown_table(list(frame.columns), list(frame.itertuples(index=False)))


def certified_markdown(records: list[dict], reports: list[dict]) -> str:
    """The README's block: smoothing (certified beside attacked, per dataset, model, sigma and radius), then the
    quantum certificate of the shipped circuit over the committed test points."""
    parts = []
    for dataset in sorted({r["dataset"] for r in records}):
        table = smoothing_table([r for r in records if r["dataset"] == dataset])
        parts.append(f"**{dataset}**, randomized smoothing (n0 = 100, n = {records[0]['certify']['n']:,} Monte Carlo "
                     "copies, alpha = 0.001; attack: SmoothAdv PGD-L2, 10 steps x 4 noise draws, judged by 200 draws):"
                     "\n\n" + _markdown(table.drop(columns=["n"])))
        pairs = smoothing_pairs([r for r in records if r["dataset"] == dataset])
        if not pairs.empty:
            parts.append(f"**{dataset}**, hybrid - CNN on the same points. {PAIRS_NOTES}\n\n" + _markdown(pairs))
    if reports:
        rows = [{"dataset": r["dataset"], **quantum_summary(r)} for r in reports]
        parts.append("**Quantum-noise certificate** of the shipped hybrid-full circuit (mixed noise, p = 0.005; "
                     "trace distance of the encoded state; attack: PGD on the state at the paper's eps):\n\n"
                     + _markdown(pd.DataFrame(rows)))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- live, for one image


def certificate_problem(model: nn.Module) -> str | None:
    """Why the quantum certificate does not apply to ``model`` (None when it does)."""
    from ..models import QShieldHybrid

    if not isinstance(model, QShieldHybrid):
        return "it has no quantum circuit."
    config = model.circuit_config
    if config.device is not None or config.noise_placement != "every_layer" or config.shots is not None:
        return ("the certificate covers circuits with noise after every layer only (not device noise, noise at the "
                "end, or finite shots).")
    if config.noise.kind == "thermal":
        return "its thermal noise has no strength p to vary."
    return None


def _noise_kind(model: nn.Module, kind: str | None) -> str:
    return model.circuit_config.noise.kind if kind is None else kind


@dataclass(frozen=True)
class QuantumNoiseView:
    """The quantum certificate of one image over the noise grid, and what an attack at eps does to its state."""

    rows: pd.DataFrame
    """Per p: the quantum branch's prediction, the certified radii, the fused prediction."""
    target: float
    """Largest encoded-state trace distance a PGD attack at ``eps`` found (an empirical estimate, not a bound)."""
    eps: float


def quantum_noise_view(model: nn.Module, image: torch.Tensor, eps: float, kind: str | None = None,
                       ps=NOISE_GRID, seed: int = 0) -> QuantumNoiseView:
    """The certificate of ``image`` at each p of ``ps`` (the model's noise kind, or Du et al.'s global
    depolarizing), beside the state distance a seeded PGD attack of L-inf size ``eps`` reaches."""
    rows = pd.DataFrame(Q.certified_radius_vs_p(model, image, ps, kind))
    logits, _, states = Q.encode(model, image.unsqueeze(0) if image.dim() == 3 else image[:1])
    fused = []
    for p in ps:
        q = Q.radii_at(model, states, _noise_kind(model, kind), float(p), pure=False)["q"]
        fused.append(int(Q.fused_predictions(model, logits, q)[0]))
    rows["fused_predicted"] = fused
    found, _ = Q.encoded_state_attack(model, image.unsqueeze(0) if image.dim() == 3 else image[:1], eps,
                                      generator=torch.Generator().manual_seed(seed))
    return QuantumNoiseView(rows, float(found[0]), float(eps))


def accuracy_under_noise(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, kind: str | None = None,
                         ps=NOISE_GRID) -> pd.DataFrame:
    """What each p costs: the quantum branch's and the fused model's accuracy on ``images`` with the circuit's
    noise set to p (computed from the circuit's exact channel; the CNN and the fusion weights unchanged)."""
    logits, _, states = Q.encode(model, images)
    rows = []
    for p in ps:
        r = Q.radii_at(model, states, _noise_kind(model, kind), float(p), pure=False)
        fused = Q.fused_predictions(model, logits, r["q"])
        rows.append({"p": float(p), "quantum branch": float((torch.as_tensor(r["predicted"]) == labels).float().mean()),
                     "hybrid (fused)": float((fused == labels).float().mean())})
    return pd.DataFrame(rows)


def quantum_noise_figure(view: QuantumNoiseView, selected_p: float, height: int = 340) -> go.Figure:
    """Certified trace distance against p (log axis; p = 0 is left out of the axis), the attack's distance as a
    dashed line and the chosen p as a vertical marker."""
    rows = view.rows[view.rows["p"] > 0]
    fig = go.Figure()
    for column, name, colour in (("radius_pure", "certified (pure states)", HYBRID_COLOUR),
                                 ("radius", "certified (any state)", "#8c564b"),
                                 ("radius_du", "Du et al.'s bound", "#17becf")):
        fig.add_trace(go.Scatter(x=rows["p"], y=rows[column], mode="lines+markers", name=name,
                                 line={"color": colour}))
    fig.add_hline(y=view.target, line_dash="dash", line_color="#555",
                  annotation_text=f"an attack at eps = {view.eps * 255:.0f}/255 moves the state this far",
                  annotation_position="top left")
    if selected_p > 0:
        fig.add_vline(x=selected_p, line_color="#999", line_dash="dot")
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_type="log",
                      xaxis_title="noise strength p", yaxis_title="trace distance",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.25})
    return fig


SMOOTHING_EXPLAINED = """\
**Randomized smoothing** (Cohen, Rosenfeld and Kolter, ICML 2019) replaces a model f by the *smoothed* model g:
g's answer at an image is the class f picks most often when Gaussian noise of strength σ is added to the image.
If that class wins with probability p_A, **no** change of the image of L2 size below σ·Φ⁻¹(p_A) can change g's
answer: a proof, not a measurement. CERTIFY estimates p_A from samples and is right with probability
1 − 0.001; it abstains when the vote is too close. The crosses are the opposite side: an attack (SmoothAdv
PGD-L2) built for g, on the same points. Proven accuracy can only sit at or below broken-by-attack accuracy;
the gap between a line and its crosses is what nobody knows yet. With 1,000 samples per point no radius above
≈ 2.46 σ can be certified, whatever the model.
"""

QUANTUM_EXPLAINED = """\
**The quantum certificate** asks how far the circuit's input state may move (in trace distance) before the
**circuit's own** answer can change, computed exactly from the circuit's noisy channel. It covers the quantum
branch with the fixed projection, not the hybrid's final answer: the fused output leans on the CNN's softmax
(weight α ≈ 0.9), which nothing here certifies. The shipped circuit gives the same class for every input
(proved over the whole input space), so its certificate holds because the branch is constant, not because
it resists anything. Under global depolarizing noise Du et al.'s bound grows with p, yet the exact radius
stays where it is: such noise pulls the output towards uniform without moving a decision. The shipped noise
family's amplitude damping pulls every state towards |0…0⟩, which the circuit reads as that same constant
class, so there the radius grows with p, for an answer that was never informative.
"""


__all__ = [
    "CERTIFIED_FILE",
    "NOISE_GRID",
    "QUANTUM_EXPLAINED",
    "QUANTUM_FILE",
    "SMOOTHING_COMMAND",
    "SMOOTHING_EXPLAINED",
    "TABLE_NOTES",
    "QuantumNoiseView",
    "accuracy_under_noise",
    "certificate_problem",
    "certified_markdown",
    "load_json_records",
    "quantum_noise_figure",
    "quantum_noise_view",
    "quantum_reports",
    "quantum_summary",
    "smoothing_figure",
    "smoothing_records",
    "smoothing_table",
]
