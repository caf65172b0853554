"""Robustness Explorer: accuracy and attack success against epsilon, from the committed results or a fresh sweep."""

import streamlit as st

from pages import _shared as ui
from qshield_core import lab, viz
from qshield_core.data import get_spec

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Robustness Explorer")
st.caption(
    "How often each attack succeeds as its strength ε grows. Solid lines: the classical CNN (blue) and hybrids "
    "in the paper's gradient mode (red); dotted: hybrids in the differentiable mode. Bars: 95 % Wilson intervals."
)
metric = st.radio("Show", list(viz.RESULT_METRICS), horizontal=True, key="rx_metric",
                  format_func=lambda m: viz.RESULT_METRICS[m][0])

# ----------------------------------------------------------------- committed results
st.subheader("Committed results")
ui.shipped_only_note(s, "The committed results")
records = ui.committed_records()
frame = lab.records_frame(records, s.dataset)
if frame.empty:
    st.warning(
        f"No attack results for {spec.display_name} are committed yet (`results/*.json` "
        f"{'holds none for this dataset' if records else 'does not exist in this checkout'}). Nothing is plotted "
        "rather than inventing numbers: run a fresh sweep below, or generate the files with the commands on the "
        "About page."
    )
else:
    models = sorted(frame["model"].unique(), key=lambda m: (m != "classical", m))
    attacks = list(dict.fromkeys(frame["attack_display"]))
    left, right = st.columns(2)
    chosen_models = left.multiselect("Models", models, default=[m for m in models if m in ("classical", s.hybrid)]
                                     or models, key=f"rx_models_{s.dataset}")
    # the sanity sweeps (FGSM, APGD-CE over six eps) draw curves; AutoAttack is the strongest reference point
    preferred = [a for a in ("FGSM", "APGD-CE", "AutoAttack") if a in attacks] or attacks[:2]
    chosen_attacks = right.multiselect("Attacks", attacks, default=preferred, key=f"rx_attacks_{s.dataset}")
    shown = frame[frame["model"].isin(chosen_models) & frame["attack_display"].isin(chosen_attacks)]
    paper = lab.paper_reference_frame(s.dataset) if metric == "asr" else None
    if paper is not None and not paper.empty:
        paper = paper[paper["series"].isin(shown["series"].unique())]
    st.plotly_chart(viz.robustness_curve_figure(shown, metric, paper), key="rx_committed")
    if metric == "asr":
        st.caption("Green diamonds: the paper's published ASR at its ε (hybrids in the paper's mode).")
    with st.expander(f"The {len(shown)} plotted cells"):
        st.dataframe(viz.display_frame(shown.drop(columns=["series"])), hide_index=True)
    commands = lab.recorded_commands([r for r in records if r.get("dataset") == s.dataset])
    if commands:
        with st.expander(f"Regenerate these results ({len(commands)} command{'s' if len(commands) > 1 else ''})"):
            st.code("\n".join(commands), language="bash")

st.subheader(f"The paper's reported attack success rates ({spec.display_name}, ε = {spec.paper_eps * 255:.0f}/255)")
paper_table = lab.paper_asr_table(s.dataset)
if paper_table.empty:
    st.info("The paper's figures (`../shared/paper/qshield-paper-results.json`) are not available here.")
else:
    st.dataframe(viz.display_frame(paper_table), hide_index=True)
    st.caption("ASR in %, as published (arXiv 2604.10933, authors' results notebook), about 440 test images a cell.")

# ----------------------------------------------------------------- fresh sweep
st.subheader("Run a fresh sweep")
st.caption(
    "Attacks the shipped sample images (class-balanced) at several strengths, against the classical CNN and the "
    "sidebar's hybrid. It runs in the background: you can keep using the app, and come back to this page."
)
choices = {c.name: c for c in lab.attack_choices(s.dataset)}
paper_255 = round(spec.paper_eps * 255)
eps_max = round(lab.EPS_RANGE[s.dataset][1] * 255)
eps_default = sorted({0, max(paper_255 // 4, 1), max(paper_255 // 2, 1), paper_255, min(2 * paper_255, eps_max)})
eps_options = sorted({0, 1, 2, 4, 8, 16, round(spec.common_eps * 255), eps_max, *eps_default})
with st.form("rx_sweep_form"):
    left, mid, right = st.columns(3)
    attack = left.selectbox("Attack", [n for n, c in choices.items() if c.uses_eps],
                            format_func=lambda n: choices[n].display_name, key="rx_attack")
    eps_255 = mid.multiselect("ε values (in 1/255)", eps_options, default=eps_default, key="rx_eps")
    n_images = right.slider("Images", 10, len(ui.samples_of(s.dataset)), 30, step=10, key="rx_n")
    both = st.checkbox("Hybrid in both gradient modes", value=True, key="rx_both")
    submitted = st.form_submit_button("Run sweep", type="primary",
                                      disabled=ui.job_of("rx_job") is not None)
if submitted:
    if not eps_255:
        st.error("Choose at least one ε.")
    else:
        models = ui.start_sweep("rx_job", f"{choices[attack].display_name} on {n_images} images", s, [attack],
                                sorted(e / 255 for e in eps_255), n_images, both_modes=both)
        missing = [k for k, m in models.items() if not m.available]
        if missing:
            st.warning(f"Left out (unavailable): {', '.join(missing)}")
fresh = ui.sweep_result("rx_job", "rx_sweep")
if fresh is not None and fresh.records:
    fresh_frame = lab.records_frame(fresh.records)
    if fresh.cancelled:
        st.warning("The sweep was stopped; showing the cells it finished.")
    dataset_name = get_spec(fresh.records[0]["dataset"]).display_name
    st.markdown(f"**Your sweep** ({dataset_name}, {fresh.records[0]['n']} shipped images; the app's reduced budgets "
                "apply to the slowest attacks)")
    st.plotly_chart(viz.robustness_curve_figure(fresh_frame, metric), key="rx_fresh")
    st.dataframe(viz.display_frame(fresh_frame[["series", "eps_255", "n", "clean_accuracy", "robust_accuracy", "asr"]]),
                 hide_index=True)
