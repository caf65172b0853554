"""Gallery: one shipped image per class, attacked as the paper does and as an adaptive attacker would."""

from __future__ import annotations

import html

import streamlit as st

from pages import _shared as ui
from qshield_core import gallery, lab
from qshield_core.attacks import get_attack
from qshield_core.data import get_spec

s = ui.sidebar()
spec = get_spec(s.dataset)
st.title("Gallery")
st.caption(
    f"The first shipped {spec.display_name} test image of every class, attacked three ways at the paper's "
    f"ε = {spec.paper_eps * 255:.0f}/255: the classical CNN and the hybrid ({s.hybrid}, always in the paper's "
    "gradient mode here) under the paper's own PGD, and the same hybrid under an adaptive attack. "
    "**Flipped**: correct before, wrong after. **Held**: correct before and after. **Wrong before**: the model "
    "already erred on the clean image, so the attack proves nothing there."
)

records = ui.committed_records()
choice = gallery.choose_adaptive(records, s.dataset, s.hybrid)
options = gallery.adaptive_options()
left, right = st.columns([3, 1])
adaptive_key = f"gal_adaptive_{s.dataset}_{s.hybrid}"
ui.drop_invalid(adaptive_key, options)
st.session_state.setdefault(adaptive_key, choice.attack)
adaptive = left.selectbox("Adaptive attack (third column)", options, key=adaptive_key,
                          format_func=lambda n: get_attack(n).display_name + (" (default)" if n == choice.attack
                                                                              else ""))
per_class = int(right.number_input("Images per class", 1, 3, 1, key="gal_per_class"))
if adaptive == choice.attack:
    st.info(f"**Why {choice.display_name}?** {choice.reason}", icon=":material/help:")
else:
    st.info(f"You chose {get_attack(adaptive).display_name}. The default would be {choice.display_name}: "
            f"{choice.reason}", icon=":material/help:")

settings = gallery.Settings(spec.name, adaptive, s.hybrid, per_class)
classical = ui.get_model(s.dataset, "classical")
hybrid = ui.get_model(s.dataset, s.hybrid, "paper", s.noise)
twin = ui.get_model(s.dataset, s.hybrid, "differentiable", s.noise) if lab.needs_twin(adaptive) else None
for loaded in (classical, hybrid, twin):
    if loaded is not None and not loaded.available:
        st.error(f"**{loaded.label}** is unavailable, so the Gallery cannot be drawn: {loaded.error}",
                 icon=":material/block:")
        st.stop()
checksums = gallery.model_checksums({"classical": classical, "hybrid": hybrid})
cache_key = (settings.key(), s.noise_key, tuple(sorted(checksums.items())))

try:
    committed = gallery.load_committed(s.dataset)
except ValueError as err:
    st.error(str(err))
    committed = None
committed_fits = committed is not None and s.noise is None and gallery.matches(committed, settings, checksums)


@st.cache_data(max_entries=32, show_spinner=False)
def _compute(key: tuple, _settings: gallery.Settings, _classical, _hybrid, _twin, _choice, _progress, _cancel
             ) -> gallery.Gallery:
    """One grid per ``key`` (settings, noise model, weights); a stopped run raises and is not cached."""
    return gallery.build_gallery(_settings, _classical, _hybrid, _twin, _choice, progress=_progress, cancel=_cancel)


def _start() -> None:
    chosen = choice if adaptive == choice.attack else gallery.AdaptiveChoice(
        adaptive, get_attack(adaptive).display_name, f"{get_attack(adaptive).display_name}, chosen on the page.")

    def work(progress: lab.Progress, cancel) -> tuple[tuple, gallery.Gallery | None]:
        try:
            return cache_key, _compute(cache_key, settings, classical, hybrid, twin, chosen, progress, cancel)
        except gallery.GalleryCancelled:
            return cache_key, None

    n_images = len(gallery.gallery_entries(s.dataset, per_class))
    ui.start_job("gal_job", f"Attacking {n_images} images three ways", work)


def _keep(result: tuple) -> None:
    key, grid = result
    if grid is not None:
        st.session_state.setdefault("gal_live", {})[key] = grid


live = st.session_state.get("gal_live", {}).get(cache_key)
running = ui.job_of("gal_job") is not None
if live is not None:
    shown, origin = live, "live"
elif committed_fits:
    shown, origin = committed, "committed"
else:
    shown, origin = None, None

button_label = "Recompute live" if origin == "committed" else "Compute again" if origin == "live" else "Compute"
if st.button(button_label, key="gal_compute", type="primary" if origin is None else "secondary",
             disabled=running, icon=":material/play_arrow:"):
    _start()
ui.show_job("gal_job", _keep)

if origin == "committed":
    st.caption(f":material/inventory_2: The committed grid (`results/{gallery.committed_path(s.dataset).name}`, "
               f"written by `{committed.command or 'scripts/make_gallery.py'}`), shown because these are its "
               "settings and its models' checksums match the shipped weights. **Recompute live** runs it again here.")
elif origin == "live":
    same = committed_fits and [r.cells for r in committed.rows] == [r.cells for r in live.rows]
    st.caption(":material/bolt: Computed in this app just now" + (
        "; every mark and thumbnail equals the committed grid's." if same else
        "; the committed grid has other settings or other marks." if committed is not None else "."))
elif not running:
    st.info("These settings have no committed grid: press **Compute** (about a second an image on two CPU cores; "
            "the slowest attacks run with the app's smaller budget).", icon=":material/info:")

if shown is None:
    st.stop()

for attack in dict.fromkeys(c.attack for c in shown.columns):
    note = gallery.budget_note(attack, s.dataset) if shown.settings.app_budget else None
    if note:
        st.caption(f":material/info: {note}")

BADGES = {gallery.FLIPPED: ":red-badge[:material/warning: FLIPPED]",
          gallery.HELD: ":green-badge[:material/verified_user: HELD]",
          gallery.WRONG_BEFORE: ":gray-badge[:material/remove: WRONG BEFORE]"}
WIDTHS = [1.4, 2, 2, 2]
THUMB_PX = 84


def thumb(b64: str, alt: str) -> str:
    """A thumbnail enlarged with crisp pixels (the markdown renderer keeps an image's own size)."""
    big = gallery.encode_png(gallery.enlarge(gallery.decode_png(b64), THUMB_PX))
    return f'<img src="data:image/png;base64,{big}" alt="{html.escape(alt)}" style="vertical-align:middle">'


names = spec.class_names
totals = shown.totals()
head = st.columns(WIDTHS)
head[0].markdown("**Image** (true class, test #)")
for column, col in zip(head[1:], shown.columns, strict=True):
    counts = totals[col.key]
    correct = counts[gallery.FLIPPED] + counts[gallery.HELD]
    column.markdown(f"**{col.title}**")
    column.metric("flipped", f"{counts[gallery.FLIPPED]} / {correct}", help="flipped out of the images the model "
                  "got right before the attack")
    column.caption(f"held {counts[gallery.HELD]} · wrong before {counts[gallery.WRONG_BEFORE]}")

table = {row["file"]: row for row in ui.samples_of(s.dataset)}
for row in shown.rows:
    cells = st.columns(WIDTHS)
    entry = table.get(row.file)
    original = gallery.original_thumbnail(entry) if entry is not None else next(iter(row.cells.values())).thumbnail
    cells[0].markdown(f"{thumb(original, row.title)} &nbsp; **{html.escape(names[row.label])}** "
                      f"<small>#{row.index}</small>", unsafe_allow_html=True)
    for column, col in zip(cells[1:], shown.columns, strict=True):
        cell = row.cells[col.key]
        column.markdown(
            f'<span data-gallery-col="{col.key}" data-gallery-mark="{cell.mark}"></span>'
            f"{thumb(cell.thumbnail, f'{col.title}: adversarial')} &nbsp; {BADGES[cell.mark]} "
            f"→ **{html.escape(names[cell.adv_pred])}**", unsafe_allow_html=True)

with st.expander("Exact attack parameters of each column"):
    st.json(shown.params)
