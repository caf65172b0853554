"""Plotly figures for the app and the docs: images, perturbations, probabilities, circuits, curves.

Every function takes plain arrays or data frames (no models, no Streamlit) and returns a
``plotly.graph_objects.Figure``, so the same figure can be shown in the app, written to HTML by
the CLI, or checked in a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

CLASSICAL_COLOUR = "#1f77b4"
HYBRID_COLOUR = "#d62728"
CLEAN_COLOUR = "#7f7f7f"
ADV_COLOUR = "#ff7f0e"
PAPER_COLOUR = "#2ca02c"
DNN_COLOUR = "#9467bd"
MODEL_COLOURS = {"classical": CLASSICAL_COLOUR, "dnn": DNN_COLOUR}


def model_colour(model: str) -> str:
    """Blue for the classical CNN, purple for the DNN baseline, red for any hybrid."""
    return MODEL_COLOURS.get(model, HYBRID_COLOUR)


MISSING = "–"
"""What a table shows where a value does not apply (an en dash, not ``None``)."""


def display_frame(frame: pd.DataFrame, float_format: str = "{:.4g}") -> pd.DataFrame:
    """A copy of ``frame`` for showing: every missing value (None, NaN) as an en dash.

    Only the columns that have a missing value become text (their numbers written with ``float_format``);
    the others keep their type, so they still sort and format as numbers.
    """
    out = frame.copy()
    for column in out.columns:
        missing = out[column].isna()
        if missing.any():
            out[column] = [MISSING if gone else _cell(value, float_format)
                           for value, gone in zip(out[column], missing, strict=True)]
    return out


def _cell(value, float_format: str) -> str:
    if isinstance(value, float | np.floating):
        return float_format.format(float(value))
    return str(value)


def _compact(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=8, r=8, t=36 if title else 8, b=8),
                      title=dict(text=title, font=dict(size=14)) if title else None)
    return fig


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) in [0, 1] to (H, W) or (H, W, 3) uint8."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def pixel_image(image: np.ndarray, size: int = 168) -> np.ndarray:
    """An image (C, H, W) in [0, 1] enlarged to ``size`` pixels with nearest-neighbour (crisp pixels).

    For ``st.image``: a plain picture costs the browser far less than a Plotly figure, and the
    Attack Lab shows four of them per attack.
    """
    pixels = _hwc(image)
    factor = max(1, size // pixels.shape[0])
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def image_figure(image: np.ndarray, title: str | None = None, height: int = 220) -> go.Figure:
    """One image (C, H, W) in [0, 1], greyscale or RGB, drawn pixel-exact."""
    pixels = _hwc(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    fig = go.Figure(go.Image(z=pixels, hovertemplate="x=%{x} y=%{y} value=%{z[0]}<extra></extra>"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _compact(fig, height, title)


def perturbation_figure(delta: np.ndarray, linf: float, l2: float, title: str | None = None,
                        height: int = 220) -> go.Figure:
    """The signed perturbation (C, H, W) on a diverging colour map centred at 0.

    Colour images show the mean over the three channels. The colour scale is symmetric around
    zero and spans the largest absolute value, which amplifies a small perturbation to full
    contrast; the L-inf and L2 norms (of the full perturbation) are written in the title.
    """
    array = np.asarray(delta, dtype=np.float32)
    signed = array.mean(0) if array.ndim == 3 else array
    bound = float(np.abs(signed).max()) or 1e-6
    trace = go.Heatmap(z=signed[::-1], colorscale="RdBu_r", zmid=0.0, zmin=-bound, zmax=bound,
                       colorbar=dict(thickness=10, len=0.9, tickformat=".3f"),
                       hovertemplate="x=%{x} y=%{y} delta=%{z:.4f}<extra></extra>")
    fig = go.Figure(trace)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, scaleanchor="x", constrain="domain")
    amplification = 1.0 / bound if bound > 1e-6 else 1.0
    label = f"L∞ {linf:.4f} ({linf * 255:.1f}/255) · L2 {l2:.3f} · ×{amplification:.0f}"
    return _compact(fig, height, f"{title} — {label}" if title else label)


def topk_figure(clean_probs: np.ndarray, adv_probs: np.ndarray, class_names: Sequence[str], k: int = 5,
                label: int | None = None, height: int = 240) -> go.Figure:
    """Horizontal bars of the top-k classes (by the union of both rankings), before and after."""
    clean = np.asarray(clean_probs, dtype=np.float64)
    adv = np.asarray(adv_probs, dtype=np.float64)
    order = list(dict.fromkeys([*np.argsort(-clean)[:k], *np.argsort(-adv)[:k]]))
    order = sorted(order, key=lambda c: max(clean[c], adv[c]))[-k:]
    names = [f"{class_names[c]}{' (true)' if c == label else ''}" for c in order]
    fig = go.Figure([
        go.Bar(y=names, x=clean[order], orientation="h", name="before", marker_color=CLEAN_COLOUR,
               hovertemplate="%{y}: %{x:.3f}<extra>before</extra>"),
        go.Bar(y=names, x=adv[order], orientation="h", name="after attack", marker_color=ADV_COLOUR,
               hovertemplate="%{y}: %{x:.3f}<extra>after</extra>"),
    ])
    # the legend sits above the bars (in the top margin), clear of the x axis and its title
    fig.update_layout(barmode="group", xaxis=dict(range=[0, 1], title="probability"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=names)  # "0".."9" are names, not numbers
    fig = _compact(fig, height)
    fig.update_layout(margin=dict(t=30))
    return fig


def basis_state_labels(n_qubits: int) -> list[str]:
    """``|0000>``, ``|0001>``, ... in PennyLane's order (wire 0 is the most significant bit)."""
    return [f"|{i:0{n_qubits}b}⟩" for i in range(2**n_qubits)]


def basis_distribution_figure(distributions: Mapping[str, np.ndarray], num_classes: int,
                              height: int = 300) -> go.Figure:
    """Grouped bars of 2^n basis-state probabilities per named setting (e.g. with/without noise).

    States beyond the class count are shaded: QShield truncates them and renormalises.
    """
    first = np.asarray(next(iter(distributions.values())))
    n_qubits = int(np.log2(first.shape[-1]))
    labels = basis_state_labels(n_qubits)
    palette = ["#4c78a8", "#f58518", "#54a24b", "#b279a2"]
    fig = go.Figure([
        go.Bar(x=labels, y=np.asarray(p, dtype=np.float64), name=name, marker_color=palette[i % len(palette)],
               hovertemplate="%{x}: %{y:.4f}<extra>" + name + "</extra>")
        for i, (name, p) in enumerate(distributions.items())
    ])
    if num_classes < len(labels):
        fig.add_vrect(x0=num_classes - 0.5, x1=len(labels) - 0.5, fillcolor="#bbbbbb", opacity=0.25, line_width=0,
                      annotation_text="dropped (no class)", annotation_position="top left")
    fig.update_layout(barmode="group", yaxis_title="probability", legend=dict(orientation="h", y=-0.3))
    fig.update_xaxes(tickangle=-60)
    return _compact(fig, height)


def angles_figure(angles: np.ndarray, height: int = 200) -> go.Figure:
    """Encoding angles: a qubit x rotation heatmap (enhanced encoding) or one bar per qubit."""
    array = np.asarray(angles, dtype=np.float64)
    if array.ndim == 1:
        fig = go.Figure(go.Bar(x=[f"q{i}" for i in range(array.shape[0])], y=array,
                               hovertemplate="%{x}: %{y:.3f} rad<extra>RY</extra>"))
        fig.update_yaxes(range=[0, 2 * np.pi], title="RY angle (rad)")
        return _compact(fig, height)
    text = [[f"{v:+.2f}" for v in row] for row in array]
    fig = go.Figure(go.Heatmap(z=array, x=["RX", "RY", "RZ"], y=[f"q{i}" for i in range(array.shape[0])],
                               colorscale="Twilight", zmin=-np.pi, zmax=np.pi, text=text, texttemplate="%{text}",
                               colorbar=dict(title="rad", thickness=10),
                               hovertemplate="%{y} %{x}: %{z:.3f} rad<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _compact(fig, height)


def alpha_figure(alpha: float, height: int = 180) -> go.Figure:
    """The fusion weight alpha as a gauge: 1 = all CNN, 0 = all quantum."""
    fig = go.Figure(go.Indicator(
        mode="gauge+number", value=float(alpha), number=dict(valueformat=".3f"),
        gauge=dict(axis=dict(range=[0, 1]), bar=dict(color=HYBRID_COLOUR),
                   steps=[dict(range=[0, 0.5], color="#eeeeee"), dict(range=[0.5, 1], color="#dddddd")]),
        title=dict(text="α (weight on the CNN)", font=dict(size=13)),
    ))
    fig = _compact(fig, height)
    fig.update_layout(margin=dict(t=48, l=24, r=24))  # room for the gauge's title above its arc
    return fig


def noise_sweep_figure(strengths: Sequence[float], class_probs: np.ndarray, class_names: Sequence[str],
                       kind: str, height: int = 300) -> go.Figure:
    """How the quantum class distribution moves as the noise strength p grows (one line per class)."""
    probs = np.asarray(class_probs, dtype=np.float64)
    fig = go.Figure([
        go.Scatter(x=list(strengths), y=probs[:, c], mode="lines+markers", name=str(class_names[c]),
                   hovertemplate="p=%{x:g}: %{y:.4f}<extra>" + str(class_names[c]) + "</extra>")
        for c in range(probs.shape[1])
    ])
    fig.update_layout(xaxis_title=f"{kind} noise strength p", yaxis_title="quantum class probability",
                      legend=dict(font=dict(size=10)))
    if min(strengths) > 0:
        fig.update_xaxes(type="log")
    return _compact(fig, height)


# --------------------------------------------------------------------------- results


RESULT_METRICS = {
    "robust_accuracy": ("Robust accuracy", "robust_accuracy_low", "robust_accuracy_high"),
    "asr": ("Attack success rate", "asr_low", "asr_high"),
}


def robustness_curve_figure(frame: pd.DataFrame, metric: str = "robust_accuracy",
                            paper: pd.DataFrame | None = None, height: int = 380) -> go.Figure:
    """Metric against epsilon, one line per (model, gradient mode, attack), with 95 % Wilson bands.

    ``frame`` columns: series, model, eps, ``metric``, ``metric``_low, ``metric``_high (fractions).
    ``paper`` (optional) columns: series, eps, value: drawn as hollow diamonds.
    """
    title, low, high = RESULT_METRICS[metric]
    fig = go.Figure()
    for series, rows in frame.sort_values("eps").groupby("series", sort=False):
        eps255 = rows["eps"].to_numpy() * 255
        y = rows[metric].to_numpy() * 100
        err_plus = (rows[high].to_numpy() * 100) - y
        err_minus = y - (rows[low].to_numpy() * 100)
        colour = model_colour(str(rows["model"].iloc[0]))
        dash = "dot" if "differentiable" in str(series) else "solid"
        fig.add_trace(go.Scatter(
            x=eps255, y=y, mode="lines+markers", name=str(series), line=dict(color=colour, dash=dash),
            error_y=dict(type="data", array=err_plus, arrayminus=err_minus, visible=True, thickness=1),
            customdata=np.stack([rows[low].to_numpy() * 100, rows[high].to_numpy() * 100], -1),
            hovertemplate="ε=%{x:.1f}/255: %{y:.1f}% [%{customdata[0]:.1f}, %{customdata[1]:.1f}]<extra>"
                          + str(series) + "</extra>",
        ))
    if paper is not None and not paper.empty:
        for series, rows in paper.groupby("series", sort=False):
            fig.add_trace(go.Scatter(
                x=rows["eps"].to_numpy() * 255, y=rows["value"].to_numpy() * 100, mode="markers",
                name=f"paper: {series}", marker=dict(symbol="diamond-open", size=12, color=PAPER_COLOUR),
                hovertemplate="paper ε=%{x:.1f}/255: %{y:.1f}%<extra>" + str(series) + "</extra>",
            ))
    fig.update_layout(xaxis_title="ε (L∞, in 1/255)", yaxis_title=f"{title} (%)", yaxis=dict(range=[-2, 102]),
                      legend=dict(font=dict(size=10)))
    return _compact(fig, height)


def cost_ratio_figure(frame: pd.DataFrame, value: str = "seconds_ratio", height: int = 360) -> go.Figure:
    """Hybrid-over-classical cost per attack (log scale), one bar group per gradient mode.

    ``frame`` columns: series, ``value``, and ``label`` (the bar's name, e.g. the attack and its epsilon)
    or ``attack``.
    """
    fig = go.Figure()
    x_column = "label" if "label" in frame.columns else "attack"
    for series, rows in frame.groupby("series", sort=False):
        fig.add_trace(go.Bar(x=rows[x_column], y=rows[value], name=str(series),
                             text=[f"{v:.2g}×" for v in rows[value]], textposition="outside",
                             hovertemplate="%{x}: %{y:.3g}×<extra>" + str(series) + "</extra>"))
    fig.add_hline(y=1.0, line_dash="dash", line_color="#555555", annotation_text="same cost as the CNN")
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="hybrid / classical",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_xaxes(tickangle=-35, automargin=True)
    return _compact(fig, height)
