"""Story: the project's finding in seven steps, one idea a screen, for a talk (``?step=3`` jumps to a step)."""

from __future__ import annotations

import html

import streamlit as st

from pages import _shared as ui
from qshield_core import gallery, lab, story
from qshield_core.data import get_spec

st.set_page_config(layout="wide", initial_sidebar_state="collapsed")  # a presenter's fresh visit: no sidebar
ui.sidebar()
spec = get_spec(story.DATASET)
names = spec.class_names

# Large type for the back of a room; scoped to the main area (the sidebar keeps its size).
st.html("""<style>
[data-testid="stMain"] [data-testid="stMainBlockContainer"] {padding-top: 4.2rem; padding-bottom: 1rem;
  max-width: 1240px}
[data-testid="stMain"] h1 {font-size: 2.7rem !important; line-height: 1.15 !important; padding: 0.2rem 0 0.4rem}
[data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
[data-testid="stMain"] [data-testid="stMarkdownContainer"] li {font-size: 1.55rem; line-height: 1.35}
[data-testid="stMain"] [data-testid="stMarkdownContainer"] td,
[data-testid="stMain"] [data-testid="stMarkdownContainer"] th {font-size: 1.2rem}
[data-testid="stMain"] [data-testid="stCaptionContainer"] p {font-size: 1.1rem}
[data-testid="stMain"] button p {font-size: 1.3rem}
.qs-pic {font-size: 1.45rem; font-weight: 600; text-align: center; margin-top: 0.2rem}
</style>""")

number = story.parse_step(st.query_params.get("step", 1))
if st.query_params.get("step") != str(number):
    st.query_params["step"] = str(number)
current = story.step(number)


def _go(target: int) -> None:
    st.query_params["step"] = str(story.parse_step(target))


back, middle, forward = st.columns([1, 4, 1], vertical_alignment="center")
back.button("Back", key="story_back", icon=":material/arrow_back:", on_click=_go, args=(number - 1,),
            disabled=number <= 1, shortcut="Left", width="stretch")
forward.button("Next", key="story_next", icon=":material/arrow_forward:", icon_position="right", on_click=_go,
               args=(number + 1,), disabled=number >= story.N_STEPS, shortcut="Right", width="stretch",
               type="primary")
middle.markdown(f"<div style='text-align:center;font-size:1.3rem;color:#666'>"
                f"{' '.join('●' if s.number == number else '○' for s in story.STEPS)} &nbsp; step {number} of "
                f"{story.N_STEPS}</div>", unsafe_allow_html=True)


# ----------------------------------------------------------------- data (cached, fixed seeds)


def _models() -> story.StoryModels | None:
    classical = ui.get_model(story.DATASET, "classical")
    hybrid = ui.get_model(story.DATASET, story.HYBRID, "paper")
    for loaded in (classical, hybrid):
        if not loaded.available:
            st.error(f"**{loaded.label}** is unavailable, so this step cannot run live: {loaded.error}",
                     icon=":material/block:")
            return None
    return story.StoryModels(classical, hybrid)


@st.cache_data(max_entries=4, show_spinner=False)
def _choice(checksums: tuple, seed: int, _models: story.StoryModels) -> story.SampleChoice:
    """The live sample (a seeded search) and its run; keyed on the weights' checksums and the seed."""
    return story.choose_sample(_models, story.DATASET, seed)


def _live() -> tuple[story.SampleChoice, dict[str, story.LiveOutcome]] | None:
    models = _models()
    if models is None:
        return None
    checksums = tuple(sorted(gallery.model_checksums({"c": models.classical, "h": models.hybrid}).items()))
    with st.spinner("Choosing the live image and attacking it (first visit only)…"):
        choice = _choice(checksums, story.SEED, models)
    run = choice.run
    if st.session_state.get("story_rerun_live"):  # "Run it again": the same attacks, uncached, right now
        st.session_state["story_rerun_live"] = False
        with st.spinner("Attacking again…"):
            run = story.run_story(choice.entry, models, story.SEED)
        st.session_state["story_fresh_run"] = run
    run = st.session_state.get("story_fresh_run", run)
    return choice, story.live_outcomes(run)


def _records() -> list[dict]:
    records, _ = lab.load_results()
    return records


def _picture(column, pixels, caption: str, size: int = 200) -> None:
    """A crisp, enlarged picture with its caption, centred in ``column`` (an inline PNG: no media file)."""
    png = gallery.encode_png(gallery.enlarge(pixels, size))
    column.markdown(f"<div style='text-align:center'><img src='data:image/png;base64,{png}' "
                    f"alt='{html.escape(caption)}'><div class='qs-pic'>{html.escape(caption)}</div></div>",
                    unsafe_allow_html=True)


def _say(outcome: story.LiveOutcome) -> None:
    if outcome.holds:
        st.success(outcome.sentence, icon=":material/check_circle:")
    else:
        st.warning(f"On this run it did not go as the title would say. {outcome.sentence}", icon=":material/info:")


def _rerun_button() -> None:
    st.button("Run it again, live", key="story_again", icon=":material/replay:", type="tertiary",
              on_click=lambda: st.session_state.__setitem__("story_rerun_live", True))


# ----------------------------------------------------------------- the steps


def show_live(step: story.Step) -> None:
    live = _live()
    if live is None:
        st.title(step.neutral_title)
        return
    choice, outcomes = live
    outcome = outcomes[step.key]
    st.title(step.title if outcome.holds else step.neutral_title)
    st.markdown(step.idea)
    o = outcome.outcome
    truth = names[choice.entry["label"]]
    if step.key == "read":
        left, right = st.columns([1, 2], vertical_alignment="center")
        _picture(left, gallery.to_uint8(o.image), f"a shipped test image ({choice.entry['split']} "
                                                  f"#{choice.entry['index']})")
        with right:
            _say(outcome)
    else:
        who = "CNN" if step.key == "flip" else "hybrid"
        made = {"flip": "made on the CNN", "paper": "made on the hybrid", "adaptive": "made on the CNN"}[step.key]
        a, b, c = st.columns(3)
        _picture(a, gallery.to_uint8(o.image), f"original · {who}: {names[o.clean_pred]}")
        _picture(b, story.perturbation_rgb(o.perturbation, o.linf or None), f"the change, {made}")
        _picture(c, gallery.to_uint8(o.adv_image), f"attacked · {who}: {names[o.adv_pred]}")
        _say(outcome)
    notes = {
        "read": f"The image is a {truth}. It was picked by a fixed-seed search of the shipped samples (seed "
                f"{story.SEED}, {choice.tried} tried) for one on which steps 1 to 4 all show what they say.",
        "flip": f"The paper's PGD preset: 10 steps of 2/255, each pixel moved at most {spec.paper_eps * 255:.0f}/255.",
        "paper": _paper_note(),
        "adaptive": _adaptive_note(outcomes),
    }
    st.caption(notes[step.key] + ("" if choice.all_hold else " No shipped sample among those tried showed all four "
                                  "steps; this one shows the most."))
    _rerun_button()


def _paper_note() -> str:
    v = story.verdict(_records())
    if v is None:
        return "One image is an anecdote; the committed results are not in this checkout."
    return (f"One image is an anecdote. Over the committed test images the paper's PGD still fools the hybrid on "
            f"{v.hybrid_pgd.text()} of those it gets right (the CNN: {v.cnn_pgd.text()}).")


def _adaptive_note(outcomes: dict[str, story.LiveOutcome]) -> str:
    budget = outcomes["adaptive"].outcome.params.get("steps")
    text = (f"Transfer: PGD{'' if budget is None else f'-{budget}'} on the CNN (the app's budget), the image then "
            "given to the hybrid, which is never queried.")
    figure = story.committed_asr(_records(), story.ADAPTIVE_ATTACK)
    if figure is not None:
        text += f" Over the committed test images it fools the hybrid on {figure.text()} (n = {figure.n})."
    return text


def show_why(step: story.Step) -> None:
    st.title(step.title)
    st.markdown(step.idea)
    card = ui.get_model(story.DATASET, story.HYBRID, "paper").card
    st.image(story.gradient_flow_svg(card.get("mean_alpha_test")), width=840)
    st.markdown("So attack what the gradient does see: the CNN (step 4), or the circuit's differentiable twin.")


def show_cost(step: story.Step) -> None:
    c = story.cost(_records())
    if c is None:
        st.title(step.neutral_title)
        st.markdown(step.idea)
        st.warning("No committed attack timings in this checkout (`results/*.json`): nothing to chart.")
        return
    st.title(step.title if c.holds else step.neutral_title)
    st.markdown(c.sentence())
    st.plotly_chart(story.cost_figure(c), key="story_cost", theme=None, config={"displayModeBar": False})
    st.caption("; ".join(c.sources) + ". Green: the paper's way of running the circuit. The attack records' own "
               f"times ({c.record_ms['CNN']:.1f} and {c.record_ms['hybrid']:.1f} ms an image) come from separate runs.")


def show_verdict(step: story.Step) -> None:
    st.title(step.title)
    records = _records()
    v = story.verdict(records)
    if v is None:
        st.warning("The committed results (`results/*.json`) are not in this checkout: no verdict without numbers.")
        return
    st.markdown(f"**{spec.display_name}: {v.conclusion}**")
    rows = story.verdict_rows(records)
    header = ("| | CNN, paper's PGD | hybrid, paper's PGD | hybrid, strongest adaptive | so |\n"
              "|---|---|---|---|---|\n")
    st.markdown(header + "\n".join("| " + " | ".join(row) + " |" for row in rows))
    st.caption(f"Attack success among the test images each model gets right, % [95 % interval]; MNIST from "
               f"results/{v.cnn_pgd.source} (n = {v.cnn_pgd.n} a cell) and results/{v.hybrid_adaptive.source} "
               f"(n = {v.hybrid_adaptive.n}).")
    live = _live()
    run, outcomes = (None, None) if live is None else (live[0].run, live[1])
    # Call site of the shared handout (qshield_core/handout.py, build_report_html).
    report = story.report_html(run, outcomes, v, rows, story.cost(records))
    st.download_button("Download report", report, file_name="qshield-story-report.html", mime="text/html",
                       key="story_report", icon=":material/download:", type="primary")


SHOW = {"read": show_live, "flip": show_live, "paper": show_live, "adaptive": show_live, "why": show_why,
        "cost": show_cost, "verdict": show_verdict}
SHOW[current.key](current)
