"""The Story: the project's finding told in seven steps, for a talk in front of a room. No Streamlit here.

The steps (:data:`STEPS`), one idea each:

1. a CNN reads an image; 2. a tiny attack (the paper's PGD, Madry et al. 2018) flips it; 3. the paper's
claim: the hybrid in its ``paper`` gradient mode holds; 4. an attacker who knows the trick (transfer
from the CNN, Papernot et al. 2016; the adaptive-attack advice of Athalye, Carlini & Wagner 2018) flips
it too; 5. why: the circuit is cut out of the gradient and its projection re-randomised at every call;
6. the cost claim: the same passes, the time is the simulator; 7. the verdict, with the committed numbers.

Steps 1-4 are *live*: they run :func:`lab.compare_attack` on one shipped sample, chosen by
:func:`choose_sample` (a seeded search for an image on which all four statements hold), and
:func:`live_outcomes` checks each statement on what the run returned, with a true sentence either way.
Steps 6 and 7 read only the committed results (``results/*.json``); no number is typed here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import lab, report
from .attacks import get_attack
from .data import get_spec
from .evaluation import format_interval, is_preset_budget

DATASET = "mnist"
HYBRID = "hybrid-full"
SEED = 0
PAPER_ATTACK = "pgd"
ADAPTIVE_ATTACK = "transfer-classical"
"""The attacker who knows the trick: PGD on the CNN alone, the image then handed to the hybrid, which is
never queried; it needs no gradient of the hybrid, so the cut and the random projection cannot stop it."""
MAX_TRIES = 60
CORRECT = "correct"
PAPER_REPORTED = "paper, as reported"
PAPER_SIMULATOR = "paper's simulator, re-run"
FAST_SIMULATOR = "exact batched simulator"


@dataclass(frozen=True)
class Step:
    number: int
    key: str
    title: str
    """The step's headline when its statement holds (for the non-live steps: always)."""
    idea: str
    live: bool = False
    neutral_title: str = ""
    """The headline when a live statement did not hold on this run (it claims nothing)."""


STEPS: tuple[Step, ...] = (
    Step(1, "read", "A CNN reads an image", "A small convolutional network looks at a handwritten digit "
         "and says which digit it is.", True, "A CNN reads an image"),
    Step(2, "flip", "A tiny change flips it", "The paper's attack (PGD) nudges every pixel a little, "
         "in the direction that raises the CNN's error fastest.", True, "A tiny change, aimed at the CNN"),
    Step(3, "paper", "The paper's claim: the hybrid holds", "The same attack, aimed at the hybrid: the same CNN "
         "with a simulated quantum circuit behind it, attacked exactly as the paper did.", True,
         "The paper's claim, tested live"),
    Step(4, "adaptive", "An attacker who knows the trick flips it too", "Attack the CNN alone, then show the "
         "image to the hybrid. The hybrid is never asked anything.", True, "An attacker who knows the trick"),
    Step(5, "why", "Why: the circuit is cut out of the gradient", "In the paper's code the quantum branch is "
         "invisible to the attacker's gradient and re-randomised at every call: a lock the usual tool does not "
         "fit, not a stronger lock."),
    Step(6, "cost", "The cost claim: same passes, slower simulator", "The paper says attacks on the hybrid take "
         "far longer. Count the passes an attack needs, then time one pass.", False, "The cost claim"),
    Step(7, "verdict", "The verdict", "Not one image: every committed test cell, with its 95 % interval."),
)
N_STEPS = len(STEPS)


def parse_step(value: object) -> int:
    """A step number from a URL value (``?step=3``): bad or missing values give 1, others are clamped."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return 1
    return min(max(number, 1), N_STEPS)


def step(number: int) -> Step:
    return STEPS[parse_step(number) - 1]


# --------------------------------------------------------------------------- the live steps


@dataclass(frozen=True)
class StoryModels:
    classical: lab.LoadedModel
    hybrid: lab.LoadedModel
    """In paper mode."""


@dataclass
class StoryRun:
    """The two attacks of the live steps on one image: the paper's PGD on both models, transfer on the hybrid."""

    entry: dict
    paper: lab.Comparison
    adaptive: lab.Comparison


def _paper_attack(entry: Mapping, models: StoryModels, seed: int) -> lab.Comparison:
    spec = get_spec(entry["dataset"])
    return lab.compare_attack(spec.name, lab.sample_image(entry), entry["label"], PAPER_ATTACK,
                              {"classical": models.classical, "hybrid": models.hybrid}, eps=spec.paper_eps,
                              seed=seed, classical=models.classical)


def _adaptive_attack(entry: Mapping, models: StoryModels, seed: int) -> lab.Comparison:
    spec = get_spec(entry["dataset"])
    return lab.compare_attack(spec.name, lab.sample_image(entry), entry["label"], ADAPTIVE_ATTACK,
                              {"hybrid": models.hybrid}, eps=spec.paper_eps, seed=seed, classical=models.classical)


def run_story(entry: Mapping, models: StoryModels, seed: int = SEED) -> StoryRun:
    """Both attacks of steps 1-4 on one shipped sample, at the paper's eps, through :func:`lab.compare_attack`
    (with the app's budgets, as the Attack Lab runs them)."""
    return StoryRun(dict(entry), _paper_attack(entry, models, seed), _adaptive_attack(entry, models, seed))


@dataclass(frozen=True)
class LiveOutcome:
    """What one live step showed: whether its statement held on this run, and a true sentence either way."""

    step: str
    holds: bool
    sentence: str
    outcome: lab.ModelAttack
    verdict: str


def _name(names: Sequence[str], c: int) -> str:
    return str(names[c])


def _conf(probs: np.ndarray, c: int) -> str:
    return f"{100 * float(probs[c]):.0f} %"


def live_outcomes(run: StoryRun) -> dict[str, LiveOutcome]:
    """Check each live step's statement on the run: read = the CNN is right; flip = PGD flips the CNN;
    paper = PGD leaves the paper-mode hybrid right; adaptive = the transferred image flips the hybrid."""
    names = get_spec(run.entry["dataset"]).class_names
    label = run.entry["label"]
    truth = _name(names, label)
    cnn, hyb, tra = run.paper.outcomes["classical"], run.paper.outcomes["hybrid"], run.adaptive.outcomes["hybrid"]
    eps = f"{run.paper.eps * 255:.0f}/255" if run.paper.eps is not None else "the paper's ε"
    out: dict[str, LiveOutcome] = {}

    ok = cnn.clean_pred == label
    out["read"] = LiveOutcome("read", ok, (
        f"The CNN says **{_name(names, cnn.clean_pred)}** ({_conf(cnn.clean_probs, cnn.clean_pred)} sure). "
        f"It is a {truth}." if ok else
        f"The CNN says **{_name(names, cnn.clean_pred)}**, but it is a {truth}: wrong before any attack."),
        cnn, CORRECT if ok else lab.WRONG_BEFORE)

    after = f"**{_name(names, cnn.adv_pred)}** ({_conf(cnn.adv_probs, cnn.adv_pred)} sure)"
    out["flip"] = LiveOutcome("flip", cnn.verdict == lab.FLIPPED, {
        lab.FLIPPED: f"No pixel moved by more than {eps}, and the CNN now says {after}.",
        lab.HELD: f"On this run the attack failed: the CNN still says {after}.",
    }.get(cnn.verdict, f"The CNN was already wrong before the attack (it said {_name(names, cnn.clean_pred)})."),
        cnn, cnn.verdict)

    after = f"**{_name(names, hyb.adv_pred)}** ({_conf(hyb.adv_probs, hyb.adv_pred)} sure)"
    out["paper"] = LiveOutcome("paper", hyb.verdict == lab.HELD, {
        lab.HELD: f"Same attack, same limit of {eps} a pixel: the hybrid still says {after}.",
        lab.FLIPPED: f"On this run the paper's attack fooled the hybrid as well: it says {after}.",
    }.get(hyb.verdict, f"The hybrid was already wrong before the attack (it said {_name(names, hyb.clean_pred)})."),
        hyb, hyb.verdict)

    after = f"**{_name(names, tra.adv_pred)}** ({_conf(tra.adv_probs, tra.adv_pred)} sure)"
    out["adaptive"] = LiveOutcome("adaptive", tra.verdict == lab.FLIPPED, {
        lab.FLIPPED: f"An image made on the CNN alone, within {eps}: the hybrid now says {after}.",
        lab.HELD: f"On this run the image made on the CNN did not fool the hybrid: it still says {after}.",
    }.get(tra.verdict, f"The hybrid was already wrong before the attack (it said {_name(names, tra.clean_pred)})."),
        tra, tra.verdict)
    return out


@dataclass
class SampleChoice:
    """The shipped sample the live steps use, and how it was found."""

    entry: dict
    tried: int
    all_hold: bool
    run: StoryRun = field(repr=False)


def _paper_steps_hold(paper: lab.Comparison, label: int) -> int:
    """How many of steps 1-3 hold on the paper attack's result (the cheap part of a candidate)."""
    cnn, hyb = paper.outcomes["classical"], paper.outcomes["hybrid"]
    return (cnn.clean_pred == label) + (cnn.verdict == lab.FLIPPED) + (hyb.verdict == lab.HELD)


def choose_sample(models: StoryModels, dataset: str = DATASET, seed: int = SEED,
                  max_tries: int = MAX_TRIES) -> SampleChoice:
    """The first shipped sample, in an order shuffled with ``seed`` (its own generator), on which all four
    live statements hold; if none of the first ``max_tries`` does, the one on which the most hold.

    The transfer attack (the dearer one) only runs on candidates where steps 1-3 already hold.
    """
    table = lab.sample_table(dataset)
    if not table:
        raise ValueError(f"No shipped samples for {dataset}.")
    order = np.random.default_rng(seed).permutation(len(table))[:max_tries]
    best: tuple[int, StoryRun | None, dict, lab.Comparison] | None = None
    for tried, i in enumerate(order, start=1):
        entry = dict(table[int(i)])
        paper = _paper_attack(entry, models, seed)
        holding = _paper_steps_hold(paper, entry["label"])
        run = None
        if holding == 3:
            run = StoryRun(entry, paper, _adaptive_attack(entry, models, seed))
            holding += run.adaptive.outcomes["hybrid"].verdict == lab.FLIPPED
            if holding == 4:
                return SampleChoice(entry, tried, True, run)
        if best is None or holding > best[0]:
            best = (holding, run, entry, paper)
    _, run, entry, paper = best
    run = run or StoryRun(entry, paper, _adaptive_attack(entry, models, seed))
    return SampleChoice(entry, len(order), False, run)


def perturbation_rgb(delta: np.ndarray, eps: float | None) -> np.ndarray:
    """The signed perturbation (channel mean) as (H, W, 3) uint8: white 0, red brighter, blue darker, full
    colour at ``eps`` (or at its largest value)."""
    array = np.asarray(delta, dtype=np.float32)
    signed = array.mean(0) if array.ndim == 3 else array
    bound = float(eps) if eps else (float(np.abs(signed).max()) or 1e-6)
    t = np.clip(signed / bound, -1.0, 1.0)[..., None]
    white, red, blue = np.ones(3), np.array([0.75, 0.10, 0.15]), np.array([0.12, 0.35, 0.70])
    rgb = np.where(t >= 0, white + t * (red - white), white - t * (blue - white))
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the committed numbers


@dataclass(frozen=True)
class Figure:
    """One committed number: an ASR (fraction) with its 95 % interval, the attack and where it comes from."""

    what: str
    asr: float
    ci: tuple[float, float] | None
    n: int | None
    attack: str
    source: str

    def text(self) -> str:
        return f"{100 * self.asr:.1f} % {format_interval(self.ci)}".strip()


def _figure(what: str, record: dict | None) -> Figure | None:
    if record is None:
        return None
    ci = record.get("asr_ci")
    return Figure(what, float(record["asr"]), None if not ci else (float(ci[0]), float(ci[1])), record.get("n"),
                  record.get("attack_display") or get_attack(record["attack"]).display_name,
                  str(record.get("source_file", "results")))


@dataclass
class Verdict:
    """The verdict step's numbers (ASR among correctly classified test images) and what they say."""

    dataset: str
    cnn_pgd: Figure
    hybrid_pgd: Figure
    hybrid_adaptive: Figure
    cnn_strongest: Figure | None
    conclusion: str
    sentences: list[str]
    short: str
    """The conclusion in three words (a table cell)."""


def _records_of(records: Sequence[dict], dataset: str, model: str, mode: str | None) -> list[dict]:
    return [r for r in records if r.get("dataset") == dataset and r.get("model") == model
            and r.get("grad_mode") == mode]


def _overlap(a: Figure, b: Figure) -> bool:
    if a.ci is None or b.ci is None:
        return abs(a.asr - b.asr) < 1e-9
    return a.ci[0] <= b.ci[1] and b.ci[0] <= a.ci[1]


def verdict(records: Sequence[dict], dataset: str = DATASET, hybrid: str = HYBRID) -> Verdict | None:
    """From the committed records: the paper-protocol PGD ASR of the CNN and of the paper-mode hybrid, the
    strongest adaptive attack's ASR on the hybrid and the strongest on the CNN; None when any is missing.
    The conclusion is decided by the numbers (do the intervals separate?), never assumed."""
    spec = get_spec(dataset)
    cnn_pgd, _, cnn_adaptive = report.strongest_attacks(_records_of(records, spec.name, "classical", None), spec.name)
    hyb_pgd, _, hyb_adaptive = report.strongest_attacks(_records_of(records, spec.name, hybrid, "paper"), spec.name)
    figures = (_figure("CNN, the paper's PGD", cnn_pgd), _figure(f"{hybrid} (paper mode), the paper's PGD", hyb_pgd),
               _figure(f"{hybrid} (paper mode), strongest adaptive attack", hyb_adaptive))
    if any(f is None for f in figures):
        return None
    c_pgd, h_pgd, h_ad = figures
    c_best = _figure("CNN, strongest adaptive attack", cnn_adaptive)
    eps = f"ε = {spec.paper_eps * 255:.0f}/255"
    sentences = [f"The paper's PGD at {eps} fools the CNN on {c_pgd.text()} and the hybrid on {h_pgd.text()} of "
                 f"the test images each gets right (n = {c_pgd.n} and {h_pgd.n})."]
    paper_gap = not _overlap(c_pgd, h_pgd) and h_pgd.asr < c_pgd.asr
    sentences.append(f"{h_ad.attack} fools the hybrid on {h_ad.text()} (n = {h_ad.n})"
                     + (f"; the strongest attack on the CNN, {c_best.attack}, fools it on {c_best.text()}."
                        if c_best else "."))
    reference = c_best or c_pgd
    if paper_gap and (h_ad.asr >= reference.asr or _overlap(h_ad, reference)):
        short = "gradient masking"
        conclusion = ("The hybrid only looks harder to attack under the paper's own attack. Against an attacker "
                      "who does not rely on its masked gradient it is as easy to fool as the CNN: gradient masking, "
                      "not robustness.")
    elif not paper_gap:
        short = "no gap to explain"
        conclusion = ("Even under the paper's own attack the hybrid is not measurably harder to fool than the CNN "
                      f"on {spec.display_name}.")
    else:
        short = "the gap holds"
        conclusion = (f"Under the paper's attack and under {h_ad.attack} alike, the hybrid stays harder to fool than "
                      "the CNN here: the adaptive attacks did not close the gap.")
    return Verdict(spec.name, c_pgd, h_pgd, h_ad, c_best, conclusion, sentences, short)


def committed_asr(records: Sequence[dict], attack: str, dataset: str = DATASET, model: str = HYBRID,
                  mode: str | None = "paper") -> Figure | None:
    """The committed ASR of one attack (preset budget, paper eps) on one model, the largest cell."""
    spec = get_spec(dataset)
    cells = [r for r in _records_of(records, spec.name, model, mode) if r.get("attack") == attack
             and r.get("asr") is not None and r.get("eps") is not None and abs(float(r["eps"]) - spec.paper_eps) < 1e-6
             and is_preset_budget(r)]
    best = max(cells, key=lambda r: r.get("n", 0), default=None)
    return _figure(f"{model}, {attack}", best)


def verdict_rows(records: Sequence[dict], hybrid: str = HYBRID) -> list[list[str]]:
    """One row per dataset with committed numbers: CNN under PGD, hybrid under PGD, hybrid under its strongest
    adaptive attack (the attack named), each with its interval."""
    rows = []
    for dataset in ("mnist", "organamnist", "cifar10"):
        v = verdict(records, dataset, hybrid)
        if v is not None:
            rows.append([get_spec(dataset).display_name, v.cnn_pgd.text(), v.hybrid_pgd.text(),
                         f"{v.hybrid_adaptive.text()} ({v.hybrid_adaptive.attack})", v.short])
    return rows


# --------------------------------------------------------------------------- the cost step


@dataclass
class Cost:
    """The cost step's numbers: PGD-10's passes per image on both models (counted, from the attack records), and
    hybrid ÷ CNN time as the paper reports it and as one benchmark run measures it for two simulators."""

    passes: dict[str, tuple[float, float]]
    """Model -> (forward, backward) passes per image."""
    time_ratios: dict[str, float]
    """What -> hybrid time ÷ CNN time for one PGD-10 attack (the paper's figure, the benchmark's)."""
    record_ms: dict[str, float]
    """Model -> the attack records' own milliseconds per image (each measured in its own run)."""
    sources: list[str]

    @property
    def same_passes(self) -> bool:
        return len({tuple(round(x, 6) for x in p) for p in self.passes.values()}) == 1

    @property
    def simulator_explains(self) -> bool:
        """One benchmark run finds the paper's way of simulating the circuit dearer than an exact batched one."""
        slow, fast = self.time_ratios.get(PAPER_SIMULATOR), self.time_ratios.get(FAST_SIMULATOR)
        return slow is not None and fast is not None and slow > fast

    @property
    def holds(self) -> bool:
        """The step's title (same passes, slower simulator) is what the numbers say."""
        return self.same_passes and self.simulator_explains

    def sentence(self) -> str:
        """What the numbers say, decided by them."""
        (f1, b1), (f2, b2) = self.passes["CNN"], self.passes["hybrid"]
        text = (f"PGD-10 needs {f1:.0f} forward and {b1:.0f} backward passes per image on the CNN, and "
                f"{f2:.0f} and {b2:.0f} on the hybrid" + (": the same work." if self.same_passes else "."))
        paper = self.time_ratios.get(PAPER_REPORTED)
        if self.simulator_explains:
            text += ((f" The paper reports {paper:.0f}× the time." if paper is not None else "")
                     + f" Timed in one run, the paper's way of simulating the circuit makes the attack "
                     f"{self.time_ratios[PAPER_SIMULATOR]:.0f}× dearer, an exact batched simulator "
                     f"{self.time_ratios[FAST_SIMULATOR]:.2g}×.")
        return text


def bench_pgd_ratios(dataset: str = DATASET, path: Path | None = None) -> dict[str, float]:
    """From the committed backend benchmark: PGD-10 hybrid ÷ CNN time per image for each way of running the
    circuit (the paper's per-image loop, batched PennyLane, the fast exact simulator)."""
    path = Path(path or lab.RESULTS_DIR / "bench_backends.json")
    if not path.is_file():
        return {}
    try:
        timings = json.loads(path.read_text()).get("timings", [])
    except (OSError, json.JSONDecodeError):
        return {}
    labels = {"hybrid-full, paper loop": PAPER_SIMULATOR, "hybrid-full, fast": FAST_SIMULATOR}
    return {labels[t["label"]]: float(t["ratio"]) for t in timings
            if t.get("section") == "pgd" and t.get("dataset") == dataset and t.get("label") in labels}


def cost(records: Sequence[dict], dataset: str = DATASET, hybrid: str = HYBRID,
         bench_path: Path | None = None) -> Cost | None:
    """PGD (paper preset, paper eps) on the CNN and the paper-mode hybrid from :func:`lab.cost_frame`, the
    paper's own time ratio, and the benchmark's; None when the committed results hold no such pair."""
    spec = get_spec(dataset)
    frame = lab.cost_frame(records, spec.name)
    if frame.empty:
        return None
    rows = frame[(frame["model"] == hybrid) & (frame["grad_mode"] == "paper") & (frame["attack"] == "PGD")
                 & frame["preset budget"] & ((frame["eps_255"] - spec.paper_eps * 255).abs() < 1e-3)]
    if rows.empty:
        return None
    row = rows.sort_values("n").iloc[-1]
    ratios = {}
    paper = row["paper hybrid/CNN time"]
    if paper is not None and paper == paper:  # NaN when the paper's figures are absent
        ratios[PAPER_REPORTED] = float(paper)
    bench = bench_pgd_ratios(spec.name, bench_path)
    ratios.update({k: bench[k] for k in (PAPER_SIMULATOR, FAST_SIMULATOR) if k in bench})
    sources = [f"passes: results/{row['source']} (n = {int(row['n'])})"]
    if bench:
        sources.append("times: results/bench_backends.json (one run)")
    return Cost({"CNN": (float(row["classical fwd/img"]), float(row["classical bwd/img"])),
                 "hybrid": (float(row["hybrid fwd/img"]), float(row["hybrid bwd/img"]))}, ratios,
                {"CNN": float(row["classical ms/img"]), "hybrid": float(row["hybrid ms/img"])}, sources)


def cost_figure(c: Cost, font_size: int = 20, height: int = 340) -> go.Figure:
    """Two bar charts with large type: passes per image (forward, backward) and hybrid ÷ CNN time (log scale).
    Without timings only the passes are drawn."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.3, 0.7], horizontal_spacing=0.28,
                        subplot_titles=("Passes per image", "Attack time, hybrid ÷ CNN"))
    models = list(c.passes)
    for k, (what, colour) in enumerate((("forward", "#7f7f7f"), ("backward", "#ff7f0e"))):
        values = [c.passes[m][k] for m in models]
        fig.add_bar(x=models, y=values, name=what, marker_color=colour, text=[f"{v:.0f}" for v in values],
                    textposition="outside", row=1, col=1)
    labels = list(c.time_ratios)
    values = [c.time_ratios[label] for label in labels]
    if values:
        colours = ["#2ca02c" if "paper" in label else "#1f77b4" for label in labels]
        fig.add_bar(x=values, y=labels, orientation="h", marker_color=colours, text=[f"{v:.3g}×" for v in values],
                    textposition="outside", showlegend=False, row=1, col=2)
        fig.update_xaxes(type="log", row=1, col=2, range=[-0.5, np.log10(max(values) * 6)], dtick=1,
                         title_text="× the CNN's time (log scale)")
        fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_yaxes(range=[0, max(max(p) for p in c.passes.values()) * 1.3], row=1, col=1)
    fig.update_layout(height=height, barmode="group", font=dict(size=font_size), margin=dict(l=50, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=-0.15, x=0.0), bargap=0.25, plot_bgcolor="white")
    fig.update_annotations(font_size=font_size + 2)
    return fig


# --------------------------------------------------------------------------- the picture of step 5


def gradient_flow_svg(alpha: float | None = None) -> str:
    """An inline SVG of the hybrid in paper mode: the forward pass (grey), the gradient an attacker gets (orange,
    through the CNN only), and the quantum branch cut from it (red) behind a projection redrawn at every call."""
    a = "" if alpha is None else f" (α ≈ {alpha:.2f})"
    box = ('<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="12" fill="{fill}" stroke="{stroke}" '
           'stroke-width="2.5"/><text x="{cx}" y="{cy}" text-anchor="middle" font-size="{fs}" font-weight="600" '
           'fill="#222">{text}</text>')

    def b(x, y, w, h, text, fill="#eef3fb", stroke="#1f4e9c", fs=24, sub=""):
        out = box.format(x=x, y=y, w=w, h=h, fill=fill, stroke=stroke, cx=x + w / 2,
                         cy=y + h / 2 + (fs / 3 if not sub else -4), fs=fs, text=html.escape(text))
        if sub:
            out += (f'<text x="{x + w / 2}" y="{y + h / 2 + 22}" text-anchor="middle" font-size="17" '
                    f'fill="#444">{html.escape(sub)}</text>')
        return out

    def arrow(x1, y1, x2, y2, colour="#888", width=3, dash="", marker="fwd"):
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" stroke-width="{width}"{dashes} '
                f'marker-end="url(#{marker})"/>')

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1060 420" width="1060" height="420" role="img" '
        'aria-label="Gradient flow through the hybrid in paper mode" font-family="sans-serif">',
        '<defs><marker id="fwd" markerUnits="userSpaceOnUse" markerWidth="16" markerHeight="16" refX="14" refY="8" '
        'orient="auto"><path d="M0,0 L16,8 L0,16 z" fill="#888"/></marker>'
        '<marker id="grad" markerUnits="userSpaceOnUse" markerWidth="24" markerHeight="24" refX="20" refY="12" '
        'orient="auto"><path d="M0,0 L24,12 L0,24 z" fill="#e8710a"/></marker></defs>',
        b(20, 150, 130, 80, "image"),
        b(210, 150, 150, 80, "CNN"),
        b(440, 50, 190, 80, "softmax", sub=f"weight α{a}"),
        b(430, 270, 210, 80, "projection", fill="#fdecea", stroke="#c62828", sub="random, new every call"),
        b(700, 270, 170, 80, "circuit", fill="#fdecea", stroke="#c62828", sub="4 qubits + noise"),
        b(900, 150, 140, 80, "fusion", sub="answer"),
        # forward pass
        arrow(150, 190, 205, 190), arrow(360, 175, 435, 100), arrow(360, 205, 425, 305),
        arrow(640, 310, 695, 310), arrow(630, 90, 930, 145), arrow(870, 300, 935, 235),
        # the gradient the attacker gets: back along the CNN branch only
        arrow(925, 168, 640, 115, "#e8710a", 6, "", "grad"), arrow(440, 115, 372, 178, "#e8710a", 6, "", "grad"),
        arrow(210, 212, 158, 212, "#e8710a", 6, "", "grad"),
        # the cut: angles leave autograd as NumPy arrays
        '<line x1="378" y1="238" x2="412" y2="272" stroke="#c62828" stroke-width="7"/>'
        '<line x1="412" y1="238" x2="378" y2="272" stroke="#c62828" stroke-width="7"/>',
        '<text x="300" y="300" text-anchor="middle" font-size="19" fill="#c62828" font-weight="600">cut: no</text>'
        '<text x="300" y="322" text-anchor="middle" font-size="19" fill="#c62828" font-weight="600">gradient</text>',
        # legend
        arrow(30, 395, 90, 395), '<text x="100" y="402" font-size="19" fill="#333">forward pass</text>',
        arrow(270, 395, 330, 395, "#e8710a", 6, "", "grad"),
        '<text x="340" y="402" font-size="19" fill="#333">the gradient the attacker follows</text>',
        '<line x1="680" y1="385" x2="700" y2="405" stroke="#c62828" stroke-width="6"/>'
        '<line x1="700" y1="385" x2="680" y2="405" stroke="#c62828" stroke-width="6"/>',
        '<text x="712" y="402" font-size="19" fill="#333">cut from the gradient</text>',
        "</svg>",
    ]
    return "".join(parts)


# --------------------------------------------------------------------------- the handout


def report_html(run: StoryRun | None, outcomes: Mapping[str, LiveOutcome] | None, v: Verdict | None,
                rows: Sequence[Sequence[str]], cost_: Cost | None) -> str:
    """The verdict step's "Download report": a self-contained HTML page (``handout.build_report_html``)."""
    from . import handout

    names = get_spec(DATASET).class_names
    sections = []
    if run is not None and outcomes is not None:
        for key in ("flip", "paper", "adaptive"):
            o = outcomes[key]
            heading = {"flip": "The CNN under the paper's PGD", "paper": "The hybrid (paper mode) under the paper's "
                       "PGD", "adaptive": "The hybrid (paper mode), image transferred from the CNN"}[key]
            sections.append(handout.Section(
                heading, o.verdict, o.sentence.replace("**", ""),
                pictures=[handout.Picture("original", handout.image_png(o.outcome.image, 140),
                                          f"true class: {names[run.entry['label']]}"),
                          handout.Picture("adversarial", handout.image_png(o.outcome.adv_image, 140),
                                          f"{names[o.outcome.clean_pred]} → {names[o.outcome.adv_pred]}")]))
    tables = []
    if rows:
        tables.append(handout.Table("Committed results: attack success rate among correctly classified test images "
                                    "(%, 95 % interval)", ["dataset", "CNN, paper's PGD", "hybrid (paper mode), "
                                    "paper's PGD", "hybrid, strongest adaptive attack", "so"], rows,
                                    caption="results/paper-reproduction.json, results/adaptive.json"))
    if cost_ is not None:
        tables.append(handout.Table("The cost claim: PGD-10 per image", ["", "value"],
                                    [[f"{m} forward / backward passes", f"{f:.0f} / {b:.0f}"]
                                     for m, (f, b) in cost_.passes.items()]
                                    + [[f"time hybrid ÷ CNN: {k}", f"{r:.3g}×"] for k, r in cost_.time_ratios.items()],
                                    caption="; ".join(cost_.sources)))
    facts = {"dataset": get_spec(DATASET).display_name, "hybrid": f"{HYBRID}, paper gradient mode",
             "live sample": None if run is None else run.entry.get("title"), "seed": SEED}
    notes = ([] if v is None else v.sentences) + [
        "Regenerate the committed numbers: bash scripts/run_results.sh; the tables: python -m qshield_core table "
        "results/paper-reproduction.json results/adaptive.json results/sanity.json."]
    verdict_text = v.conclusion if v is not None else "No committed results in this checkout: no verdict."
    return handout.build_report_html("QShield: does the quantum circuit make the CNN robust?", verdict_text,
                                     facts=facts, sections=sections, tables=tables, notes=notes)
