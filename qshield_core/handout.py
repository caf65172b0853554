"""A one-file takeaway: a self-contained HTML report of an attack (the Attack Lab's) or of a verdict (the Story's).

The file opens offline in any browser: pictures are embedded as base64 PNG, charts as inline SVG,
the style sheet is inline and uses the system's fonts; there is no script, no external style sheet,
font or image.

- :func:`build_report_html` lays out a title, a verdict, key facts, sections of pictures, bar charts and
  tables, and notes. Any page can call it with its own verdict text and numbers::

      html = build_report_html(
          "Does the quantum layer make MNIST robust?",
          "No: against an adaptive attack the hybrid is as easy to fool as the CNN.",
          facts={"attack": "BPDA (PGD-100)", "ε": "32/255"},
          tables=[Table("Committed results", ["model", "ASR (%)"], [["classical", 99.1], ["hybrid-full", 98.7]],
                        caption="results/adaptive.json, n = 1000")],
      )

- :func:`comparison_report` is the Attack Lab's report of one :class:`~qshield_core.lab.Comparison`.
- :func:`image_png` writes an image (C, H, W) in [0, 1] as a PNG (the adversarial image's download).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from .lab import CHANGED, FLIPPED, HELD, UNCHANGED, WRONG_BEFORE, Comparison, ModelAttack

EN_DASH = "–"
VERDICT_COLOURS = {FLIPPED: "#c62828", HELD: "#2e7d32", WRONG_BEFORE: "#6d6d6d", CHANGED: "#e65100",
                   UNCHANGED: "#1565c0"}
BEFORE_COLOUR, AFTER_COLOUR = "#7f7f7f", "#ff7f0e"


@dataclass(frozen=True)
class Picture:
    """An image embedded as a base64 PNG."""

    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars, drawn as inline SVG: one group per label, one bar per series (values in [0, 1])."""

    title: str
    labels: Sequence[str]
    series: Mapping[str, Sequence[float]]
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A plain table; ``None`` and NaN cells are shown as an en dash."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One block of the report (e.g. one model), with an optional verdict badge."""

    heading: str
    badge: str = ""
    text: str = ""
    pictures: Sequence[Picture] = ()
    charts: Sequence[BarChart] = ()
    tables: Sequence[Table] = ()


# --------------------------------------------------------------------------- building blocks


def image_png(image: np.ndarray, size: int | None = None) -> bytes:
    """An image (C, H, W) or (H, W) in [0, 1] as PNG bytes (8-bit), enlarged to ``size`` with crisp pixels."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
    if size is not None and size != img.width:
        img = img.resize((size, round(size * img.height / img.width)), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def perturbation_png(delta: np.ndarray, size: int = 168) -> bytes:
    """The signed perturbation (channel mean) on a blue-white-red scale spanning its largest value."""
    array = np.asarray(delta, dtype=np.float32)
    signed = array.mean(0) if array.ndim == 3 else array
    bound = float(np.abs(signed).max()) or 1e-6
    t = np.clip(signed / bound, -1.0, 1.0)[..., None]
    white, red, blue = np.ones(3), np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return image_png(rgb.transpose(2, 0, 1), size)


def cell_text(value: object) -> str:
    """A table cell as text: en dash for a missing value, floats to 4 significant digits."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return EN_DASH
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def bar_chart_svg(chart: BarChart, width: int = 360) -> str:
    """An inline SVG of horizontal grouped bars (values in [0, 1]) with a legend that overlaps nothing."""
    names = list(chart.series)
    label_w, bar_h, gap, legend_h = 110, 12, 8, 22
    group_h = bar_h * len(names) + gap
    plot_w = width - label_w - 50
    height = legend_h + group_h * len(chart.labels) + 24
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(chart.title)}" font-size="11">']
    colours = [BEFORE_COLOUR, AFTER_COLOUR, "#1f77b4", "#2ca02c"]
    for s, name in enumerate(names):
        x = label_w + s * 110
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{colours[s % len(colours)]}"/>'
                     f'<text x="{x + 14}" y="13">{html.escape(name)}</text>')
    for g, label in enumerate(chart.labels):
        y0 = legend_h + g * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2}" text-anchor="end" '
                     f'dominant-baseline="middle">{html.escape(str(label))}</text>')
        for s, name in enumerate(names):
            value = float(np.clip(chart.series[name][g], 0.0, 1.0))
            y = y0 + s * bar_h
            parts.append(f'<rect x="{label_w}" y="{y}" width="{value * plot_w:.1f}" height="{bar_h - 2}" '
                         f'fill="{colours[s % len(colours)]}"><title>{html.escape(name)}: {value:.3f}</title></rect>'
                         f'<text x="{label_w + value * plot_w + 4:.1f}" y="{y + bar_h - 3}">{value:.2f}</text>')
    axis_y = legend_h + group_h * len(chart.labels)
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/>'
                 f'<text x="{label_w + plot_w / 2}" y="{axis_y + 16}" text-anchor="middle">probability</text></svg>')
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;max-width:1100px;
margin:24px auto;padding:0 16px;line-height:1.45}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.2em;margin:24px 0 8px;border-bottom:1px solid #ddd}
.verdict{font-size:1.15em;background:#f4f6f8;border-left:5px solid #1565c0;padding:10px 14px;margin:12px 0}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-size:.85em;font-weight:600;
text-transform:uppercase;margin-left:8px;vertical-align:middle}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:8px 0}.facts dt{color:#555}
.facts dd{margin:0}.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.sections{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:8px 28px}
figure{margin:0}figcaption{font-size:.85em;color:#555;max-width:150px}h3{font-size:1em;margin:10px 0 4px}
img{image-rendering:pixelated;border:1px solid #ccc}
table{border-collapse:collapse;margin:6px 0;font-size:.92em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f6f8}.caption,.notes{font-size:.85em;color:#555}footer{margin-top:28px;font-size:.8em;color:#777}
"""


def _picture_html(picture: Picture) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    caption = f"<figcaption>{html.escape(picture.caption)}</figcaption>" if picture.caption else ""
    return (f'<figure><div><b>{html.escape(picture.title)}</b></div>'
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(picture.title)}">{caption}</figure>')


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>"
                   for row in table.rows)
    caption = f'<div class="caption">{html.escape(table.caption)}</div>' if table.caption else ""
    title = f"<h3>{html.escape(table.title)}</h3>" if table.title else ""
    return f"{title}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


def _badge_html(badge: str) -> str:
    if not badge:
        return ""
    colour = VERDICT_COLOURS.get(badge, "#555")
    return f'<span class="badge" style="background:{colour}">{html.escape(badge)}</span>'


def _section_html(section: Section) -> str:
    parts = [f"<section><h2>{html.escape(section.heading)}{_badge_html(section.badge)}</h2>"]
    if section.text:
        parts.append(f"<p>{html.escape(section.text)}</p>")
    if section.pictures or section.charts:
        figures = [_picture_html(p) for p in section.pictures]
        figures += [f'<figure><div><b>{html.escape(c.title)}</b></div>{bar_chart_svg(c)}'
                    + (f"<figcaption>{html.escape(c.caption)}</figcaption>" if c.caption else "") + "</figure>"
                    for c in section.charts]
        parts.append(f'<div class="row">{"".join(figures)}</div>')
    if section.tables:
        parts.append('<div class="row">' + "".join(f"<div>{_table_html(t)}</div>" for t in section.tables) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def build_report_html(title: str, verdict: str, *, facts: Mapping[str, object] | None = None,
                      sections: Sequence[Section] = (), tables: Sequence[Table] = (), notes: Sequence[str] = (),
                      generated: datetime | None = None) -> str:
    """One self-contained HTML page: title, verdict, key facts, sections, tables and notes.

    Args:
        title: the page's heading (and the browser tab's title).
        verdict: the one-sentence answer, shown in a box under the title.
        facts: short label -> value pairs (attack, ε, dataset, source of the numbers, ...).
        sections: blocks of pictures, bar charts and tables (the Attack Lab: one per model).
        tables: tables after the sections (e.g. committed numbers with their source in the caption).
        notes: caveats and the command that reproduces the numbers, as a list at the end.
        generated: the time written in the footer (default: now, UTC).

    Returns:
        The HTML text (UTF-8): no script, no external style sheet, font or image.
    """
    stamp = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    facts_html = ""
    if facts:
        items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(cell_text(v))}</dd>" for k, v in facts.items())
        facts_html = f'<dl class="facts">{items}</dl>'
    notes_html = ("<h2>Notes</h2><ul class=\"notes\">" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                  + "</ul>") if notes else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<div class="verdict">{html.escape(verdict)}</div>{facts_html}'
            + (f'<div class="sections">{"".join(_section_html(s) for s in sections)}</div>' if sections else "")
            + "".join(_table_html(t) for t in tables)
            + notes_html + f"<footer>QShield report, generated {stamp}. Self-contained: opens offline.</footer>"
            "</body></html>\n")


# --------------------------------------------------------------------------- the Attack Lab's report


def outcome_sentence(key: str, outcome: ModelAttack, class_names: Sequence[str]) -> str:
    """``classical: flipped (7 → 8)`` for one model."""
    return f"{key}: {outcome.verdict} ({class_names[outcome.clean_pred]} → {class_names[outcome.adv_pred]})"


def comparison_verdict(result: Comparison, class_names: Sequence[str]) -> str:
    """The report's verdict sentence: what the attack did to each model, with the gradient-masking caveat."""
    strength = "" if result.eps is None else f" at ε = {result.eps * 255:.3g}/255"
    text = f"{result.display_name}{strength}: " + "; ".join(
        outcome_sentence(k, o, class_names) for k, o in result.outcomes.items()) + "."
    masked = [k for k, o in result.outcomes.items() if o.grad_mode == "paper" and o.verdict in (HELD, UNCHANGED)]
    if masked:
        text += (f" {', '.join(masked)} resisted, but in paper mode its quantum branch is hidden from the gradient: "
                 "a held image there can be gradient masking; the adaptive attacks (BPDA, EOT, Square) test it.")
    return text


def _top_classes(outcome: ModelAttack, k: int) -> list[int]:
    order = list(dict.fromkeys([*np.argsort(-outcome.clean_probs)[:k], *np.argsort(-outcome.adv_probs)[:k]]))
    return sorted(order, key=lambda c: -max(outcome.clean_probs[c], outcome.adv_probs[c]))[:k]


def _model_section(key: str, outcome: ModelAttack, class_names: Sequence[str], k: int = 5) -> Section:
    top = _top_classes(outcome, k)
    labels = [f"{class_names[c]}{' (true)' if c == outcome.label else ''}" for c in top]
    chart = BarChart("Top classes, before and after", labels,
                     {"before": [float(outcome.clean_probs[c]) for c in top],
                      "after attack": [float(outcome.adv_probs[c]) for c in top]})
    cost = [["attacker time (ms)", round(outcome.seconds * 1000, 1)], ["forward passes", outcome.forwards],
            ["backward passes", outcome.backwards],
            ["surrogate forward passes", outcome.surrogate_forwards],
            ["surrogate backward passes", outcome.surrogate_backwards],
            ["perturbation L∞", f"{outcome.linf:.4f} ({outcome.linf * 255:.1f}/255)"],
            ["perturbation L2", round(outcome.l2, 4)], ["gradients from", outcome.gradient_source or None]]
    prediction = [["before", class_names[outcome.clean_pred], round(float(outcome.clean_probs.max()), 4)],
                  ["after attack", class_names[outcome.adv_pred], round(float(outcome.adv_probs.max()), 4)]]
    return Section(
        heading=key, badge=outcome.verdict, text=outcome_sentence(key, outcome, class_names),
        pictures=[Picture("original", image_png(outcome.image, 140)),
                  Picture("adversarial", image_png(outcome.adv_image, 140)),
                  Picture("perturbation", perturbation_png(outcome.perturbation, 140),
                          "red: brighter, blue: darker; scaled to its largest change")],
        charts=[chart],
        tables=[Table("Prediction", ["", "class", "probability"], prediction),
                Table("Attacker's cost", ["", "value"], cost),
                Table("Attack parameters", ["parameter", "value"],
                      [[name, value] for name, value in sorted(outcome.params.items())])],
    )


def comparison_report(result: Comparison, class_names: Sequence[str], *, image_caption: str = "",
                      dataset_name: str | None = None, settings: Mapping[str, object] | None = None,
                      generated: datetime | None = None) -> str:
    """The Attack Lab's report of one attack on one image: every model's before/after, cost and parameters."""
    label = next(iter(result.outcomes.values())).label if result.outcomes else None
    eps = None if result.eps is None else f"{result.eps:.4f} ({result.eps * 255:.3g}/255)"
    facts: dict[str, object] = {"dataset": dataset_name or result.dataset, "image": image_caption or None,
                                "true class": "unknown" if label is None else class_names[label],
                                "attack": result.display_name, "ε (L∞)": eps}
    if result.steps is not None:
        facts["steps / queries"] = result.steps
    facts.update(settings or {})
    notes = [n.text for n in result.notices]
    notes.append("Verdicts: flipped = right before the attack and wrong after; held = right before and after; "
                 "wrong before = already misclassified; changed / unchanged = the answer moved or not (true class "
                 "unknown).")
    return build_report_html(f"QShield attack report: {result.display_name}", comparison_verdict(result, class_names),
                             facts=facts, sections=[_model_section(k, o, class_names)
                                                    for k, o in result.outcomes.items()],
                             notes=notes, generated=generated)
