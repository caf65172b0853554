"""Attack Lab: one image, one attack, the classical CNN and the hybrid side by side."""

import hashlib

import numpy as np
import streamlit as st
import torch

from pages import _shared as ui
from pages import _sources as sources
from qshield_core import handout, lab, viz
from qshield_core.data import ImageInputError, get_spec, prepare_upload
from qshield_core.zoo import ModelUnavailableError

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Attack Lab")
st.caption(
    "Pick an image and an attack: the same attack is run against the classical CNN and the hybrid, and you see "
    "what it changed, what each model now says, and what it cost the attacker."
)

# ----------------------------------------------------------------- the image
SOURCES = ("Shipped sample", "Random sample", "Upload", "Draw", "Camera")
source = st.radio("Image", SOURCES, horizontal=True, key="lab_source")
image: np.ndarray | None = None
label: int | None = None
caption = ""
if source == "Shipped sample":
    entry = ui.pick_sample(s.dataset, "lab")
    if entry is not None:
        image, label, caption = ui.sample_pixels(entry), entry["label"], entry["title"]
elif source == "Random sample":
    table = ui.samples_of(s.dataset)
    pick_key = f"lab_random_{s.dataset}"
    if st.button("Draw another", icon=":material/casino:", key="lab_draw") or pick_key not in st.session_state:
        st.session_state[pick_key] = int(np.random.default_rng().integers(len(table)))
    entry = table[st.session_state[pick_key] % len(table)]
    image, label, caption = ui.sample_pixels(entry), entry["label"], entry["title"]
elif source == "Upload":
    st.caption(f"PNG or JPEG, at most {lab.UPLOAD_LIMITS}. It is converted to {spec.image_size}×{spec.image_size} "
               f"{'greyscale' if spec.channels == 1 else 'colour'} for the {spec.display_name} models.")
    upload = st.file_uploader("Your image", type=["png", "jpg", "jpeg"], key=f"lab_upload_{s.dataset}")
    if upload is not None:
        try:
            prepared = prepare_upload(upload.getvalue(), s.dataset)
        except ImageInputError as err:
            st.error(f"This upload cannot be used: {err}")
        else:
            for note in prepared.notes:
                st.info(note, icon=":material/info:")
            image, caption = prepared.tensor.numpy(), upload.name
elif source == "Draw":
    image, caption = sources.drawn_image(s.dataset, "lab"), "your drawing"
else:
    image, caption = sources.camera_image(s.dataset, "lab"), "your photo"
if source in ("Upload", "Draw", "Camera") and image is not None:
    label = st.selectbox("True class (if you know it)", [None, *range(spec.num_classes)],
                         key=f"lab_{source.lower()}_label_{s.dataset}",
                         format_func=lambda c: "unknown" if c is None else f"{c}: {spec.class_names[c]}",
                         help="Known: the verdict is flipped or held. Unknown: changed or unchanged, compared "
                              "with the model's own answer before the attack.")

# ----------------------------------------------------------------- the attack
choices = lab.attack_choices(s.dataset)
names = [c.name for c in choices]
by_name = {c.name: c for c in choices}
col_attack, col_eps, col_steps = st.columns([2, 2, 1])
ui.drop_invalid("lab_attack", names)
st.session_state.setdefault("lab_attack", "pgd")
attack = col_attack.selectbox("Attack", names, key="lab_attack", format_func=lambda n: by_name[n].display_name)
choice = by_name[attack]
eps_lo, eps_hi = round(choice.eps_range[0] * 255), round(choice.eps_range[1] * 255)
eps_key, steps_key = f"lab_eps_{s.dataset}", f"lab_steps_{attack}"
ui.clamp_state(eps_key, eps_lo, eps_hi)
ui.clamp_state(steps_key, 1, choice.max_steps)
st.session_state.setdefault(eps_key, round(spec.paper_eps * 255))
st.session_state.setdefault(steps_key, choice.default_steps or 1)
eps_255 = col_eps.slider("Strength ε (L∞, in 1/255 of the pixel range)", eps_lo, eps_hi, key=eps_key,
                         disabled=not choice.uses_eps,
                         help="The largest change the attack may make to any pixel. "
                              f"The paper used {spec.paper_eps * 255:.0f}/255 on {spec.display_name}.")
steps = col_steps.number_input(choice.steps_label.capitalize(), 1, choice.max_steps, key=steps_key,
                               disabled=not choice.uses_steps)
st.caption(choice.description)
both_modes = st.toggle("Also attack the hybrid in its other gradient mode", key="lab_both_modes",
                       help=ui.GRAD_MODE_HELP)
with_dnn = st.toggle("Also attack the DNN (the paper's fully-connected baseline)", key="lab_with_dnn",
                     help="The paper's sixth model: no convolution, no circuit; every pixel feeds every unit of "
                          "the first layer. Like the CNN it is deterministic and differentiable.")

if image is None:
    if source not in ("Draw", "Camera"):  # those say what they are waiting for next to the canvas or camera
        st.info("Choose an image to attack.")
    st.stop()

models = ui.model_set(s, both_modes=both_modes, with_dnn=with_dnn)
twin = ui.twin_of(s) if lab.needs_twin(attack) else None  # loaded only for BPDA
classical = models["classical"]
for key, loaded in models.items():
    if not loaded.available:
        st.error(f"**{key}** is unavailable and is left out: {loaded.error}", icon=":material/block:")
usable = {k: m for k, m in models.items() if m.available}
if not usable:
    st.stop()


@st.cache_data(max_entries=128, show_spinner=False)
def _compare(dataset: str, image_hash: str, label: int | None, attack: str, eps: float | None, steps: int | None,
             model_keys: tuple, _image: np.ndarray, _models: dict, _twin, _classical) -> lab.Comparison:
    return lab.compare_attack(dataset, torch.from_numpy(_image), label, attack, _models, eps=eps, steps=steps,
                              twin=_twin, classical=_classical)


image_hash = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
# the weights' checksums key the cache too: a user model trained again under its name is attacked afresh
model_keys = (tuple(sorted((k, str(m.card.get("weights_sha256"))) for k, m in usable.items())), s.noise_key)
try:
    with st.spinner(f"Running {choice.display_name} on {len(usable)} models…"):
        result = _compare(s.dataset, image_hash, label, attack, eps_255 / 255 if choice.uses_eps else None,
                          int(steps) if choice.uses_steps else None, model_keys, image, usable,
                          twin if twin is not None and twin.available else None,
                          classical if classical.available else None)
except ModelUnavailableError as err:
    st.error(f"{choice.display_name} cannot run: {err}", icon=":material/block:")
    st.stop()

for notice in result.notices:
    getattr(st, notice.level)(notice.text)

# ----------------------------------------------------------------- side by side
BADGES = {
    lab.FLIPPED: ":red-badge[:material/warning: FLIPPED]",
    lab.HELD: ":green-badge[:material/verified_user: HELD]",
    lab.WRONG_BEFORE: ":gray-badge[:material/help: WRONG BEFORE]",
    lab.CHANGED: ":orange-badge[:material/swap_horiz: CHANGED]",
    lab.UNCHANGED: ":blue-badge[:material/check: UNCHANGED]",
}
BADGE_HELP = {
    lab.FLIPPED: "right before the attack, wrong after it",
    lab.HELD: "right before the attack and after it",
    lab.WRONG_BEFORE: "already wrong before the attack",
    lab.CHANGED: "the attack changed the answer (true class unknown)",
    lab.UNCHANGED: "the attack did not change the answer (true class unknown)",
}
names_ = spec.class_names
st.markdown(f"**Image:** {caption}" + (f" · true class **{names_[label]}**" if label is not None else ""))
columns = st.columns(len(result.outcomes))
for column, (key, out) in zip(columns, result.outcomes.items(), strict=True):
    with column:
        st.subheader(key)
        st.markdown(f"{BADGES[out.verdict]} &nbsp; **{names_[out.clean_pred]}** → **{names_[out.adv_pred]}** "
                    f"· {BADGE_HELP[out.verdict]}")
        left, mid = st.columns(2)
        left.image(viz.pixel_image(out.image), caption="original")
        mid.image(viz.pixel_image(out.adv_image), caption="adversarial")
        st.plotly_chart(viz.perturbation_figure(out.perturbation, out.linf, out.l2, height=200), key=f"pert_{key}")
        st.plotly_chart(viz.topk_figure(out.clean_probs, out.adv_probs, names_, k=5, label=label), key=f"topk_{key}")
        time_col, fwd_col, bwd_col = st.columns(3)
        time_col.metric("Attacker time", f"{out.seconds * 1000:.0f} ms")
        fwd_col.metric("Forward passes", f"{out.forwards:.0f}")
        bwd_col.metric("Backward passes", f"{out.backwards:.0f}")
        if out.surrogate_forwards is not None:
            st.caption(f"Plus {out.surrogate_forwards:.0f} forward and {out.surrogate_backwards:.0f} backward passes "
                       "on the model that supplied the gradients.")
        if out.gradient_source:
            st.caption(f":material/my_location: Gradients: {out.gradient_source}.")
        st.download_button("Adversarial image (PNG)", handout.image_png(out.adv_image), key=f"png_{key}",
                           file_name=f"qshield-{s.dataset}-{attack}-{key.replace(' ', '_')}-adversarial.png",
                           mime="image/png", icon=":material/image:", on_click="ignore",
                           help=f"At the model's own size ({spec.image_size}×{spec.image_size}), 8-bit PNG: "
                                "rounding to 8 bits moves each pixel by at most 0.5/255.")

with st.expander("Exact attack parameters"):
    st.json({k: o.params for k, o in result.outcomes.items()})


def _report() -> str:
    return handout.comparison_report(result, names_, image_caption=caption, dataset_name=spec.display_name,
                                     settings={"hybrid gradient mode": s.grad_mode, "noise": s.noise_label()})


st.download_button("Download report", _report, file_name=f"qshield-{s.dataset}-{attack}-report.html",
                   mime="text/html", icon=":material/download:", type="primary", key="lab_report", on_click="ignore",
                   help="One HTML file that opens offline: the images, every model's answers before and after, "
                        "the attack's parameters, its cost and the verdict.")
