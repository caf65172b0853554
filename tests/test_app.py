"""Headless tests of every page of the Streamlit app (``streamlit.testing.v1.AppTest``).

Each test drives the real app (``app.py`` and its ``st.navigation``) on the shipped models and
samples, changes widgets, and asserts on what the page then shows. Results files are isolated in a
temporary ``results/`` unless a test says otherwise, so the pages' "not there yet" paths and their
plots of given records are both exercised.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from qshield_core import evaluation, lab, zoo
from qshield_core.data import MAX_UPLOAD_BYTES

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PAGES = ("pages/attack_lab.py", "pages/robustness_explorer.py", "pages/quantum_circuit.py",
         "pages/attacker_cost.py", "pages/claims.py", "pages/certified.py", "pages/about.py")
TIMEOUT = 600  # per AppTest run: a first run imports torch, PennyLane and torchattacks on a busy 2-core machine

# A shipped MNIST sample that the shipped classical CNN keeps under PGD (paper preset, seed 0) at
# EPS_HELD/255 and loses at EPS_FLIPPED/255: class 0, first sample (test image #3). Found with
# lab.compare_attack over eps in {4, 8, ..., 48}/255; test_flip_precondition re-checks it on the model.
FLIP_CLASS, FLIP_POSITION, EPS_HELD, EPS_FLIPPED = 0, 0, 8, 24


def require_models(dataset: str, *names: str) -> None:
    missing = [n for n in names if not zoo.model_files(dataset, n).weights.is_file()]
    if missing:
        pytest.skip(f"shipped model(s) {', '.join(missing)} for {dataset} not in {zoo.PRETRAINED_DIR} yet")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """An empty results folder, and fresh Streamlit caches around every test."""
    monkeypatch.setattr(lab, "RESULTS_DIR", tmp_path / "results")
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def run_app(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def badges(at: AppTest) -> dict[str, str]:
    """{model column: 'FLIPPED' | 'HELD'} as the Attack Lab shows them."""
    out = {}
    for column in at.columns:
        children = list(column.children.values())
        if len(children) >= 2 and children[0].type == "subheader":
            text = children[1].value
            out[children[0].value] = "FLIPPED" if "FLIPPED" in text else "HELD" if "HELD" in text else text
    return out


def plotly_data(at: AppTest, key: str) -> list[dict]:
    """The traces of the Plotly chart with ``key``, typed arrays decoded to NumPy."""
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(f"-{key}")]
    assert charts, f"no chart {key!r}"

    def decode(value):
        if isinstance(value, dict) and "bdata" in value:
            array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            return array.reshape(value["shape"]) if "shape" in value and isinstance(value["shape"], list) else array
        if isinstance(value, dict):
            return {k: decode(v) for k, v in value.items()}
        return value

    return [decode(trace) for trace in json.loads(charts[0].proto.spec)["data"]]


def assert_no_missing_shown(at: AppTest) -> None:
    """No table shows None or NaN (a value that does not apply is an en dash)."""
    for frame in (d.value for d in at.dataframe):
        assert not frame.isna().any().any(), frame[frame.isna().any(axis=1)]


def texts(at: AppTest) -> str:
    parts = [*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success]
    return "\n".join(p.value for p in parts)


def png_bytes(size: tuple[int, int], mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- every page


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_exception(page):
    require_models("mnist", "classical", "hybrid-full")
    at = run_app(page)
    no_exceptions(at)
    assert at.title, "each page has a title"
    assert at.selectbox(key="qs_dataset").value == "mnist"


@pytest.mark.parametrize("dataset", ["organamnist", "cifar10"])
def test_every_page_works_for_the_other_datasets(dataset):
    require_models(dataset, "classical", "hybrid-full")
    at = run_app(dataset=dataset)
    no_exceptions(at)
    assert set(badges(at)) == {"classical", "hybrid-full (paper)"}
    for page in PAGES[1:]:
        at.switch_page(page).run()
        no_exceptions(at)
        assert at.selectbox(key="qs_dataset").value == dataset, f"{page} kept the session's dataset"


# ----------------------------------------------------------------------------- Attack Lab


def test_flip_precondition():
    """The sample and epsilons the badge test relies on still behave so on the shipped model."""
    require_models("mnist", "classical")
    classical = lab.load("mnist", "classical")
    entry = [r for r in lab.sample_table("mnist") if r["label"] == FLIP_CLASS][FLIP_POSITION]
    image = lab.sample_image(entry)
    verdicts = [lab.compare_attack("mnist", image, FLIP_CLASS, "pgd", {"c": classical}, eps=e / 255).outcomes["c"]
                for e in (EPS_HELD, EPS_FLIPPED)]
    assert [v.verdict for v in verdicts] == ["held", "flipped"], (
        "the shipped mnist-classical model changed: pick a new FLIP_* sample and epsilons")


def test_raising_epsilon_flips_the_classical_badge():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app()
    at.selectbox(key="lab_class").set_value(FLIP_CLASS)
    at.selectbox(key="lab_pos").set_value(FLIP_POSITION)
    at.slider(key="lab_eps_mnist").set_value(EPS_HELD).run()
    no_exceptions(at)
    assert badges(at)["classical"] == "HELD"
    at.slider(key="lab_eps_mnist").set_value(EPS_FLIPPED).run()
    no_exceptions(at)
    assert badges(at)["classical"] == "FLIPPED"
    assert {m.label for m in at.metric} == {"Attacker time", "Forward passes", "Backward passes"}
    assert [m.value for m in at.metric if m.label == "Forward passes"] == ["10", "10"], "PGD-10: 10 passes each"


def test_perturbation_stays_within_epsilon_and_both_modes_appear():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app()
    at.slider(key="lab_eps_mnist").set_value(6).run()
    assert set(badges(at)) == {"classical", "hybrid-full (paper)"}
    at.toggle(key="lab_both_modes").set_value(True).run()
    no_exceptions(at)
    assert set(badges(at)) == {"classical", "hybrid-full (paper)", "hybrid-full (differentiable)"}
    for key in badges(at):
        heat = plotly_data(at, f"pert_{key}")[0]
        assert np.abs(np.asarray(heat["z"], dtype=float)).max() <= 6 / 255 + 1e-6


def test_the_dnn_baseline_joins_the_comparison_on_request():
    require_models("mnist", "classical", "dnn", "hybrid-full")
    at = run_app()
    at.slider(key="lab_eps_mnist").set_value(6).run()
    assert "dnn" not in badges(at), "off by default: the page compares the CNN and the hybrid"
    at.toggle(key="lab_with_dnn").set_value(True).run()
    no_exceptions(at)
    assert list(badges(at)) == ["classical", "dnn", "hybrid-full (paper)"]
    assert [m.value for m in at.metric if m.label == "Forward passes"] == ["10"] * 3, "PGD-10 on each model"
    assert np.abs(np.asarray(plotly_data(at, "pert_dnn")[0]["z"], dtype=float)).max() <= 6 / 255 + 1e-6


def test_bpda_takes_its_gradients_from_the_differentiable_twin_within_the_app_budget():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app()
    at.selectbox(key="lab_attack").set_value("bpda").run()
    no_exceptions(at)
    captions = " ".join(c.value for c in at.caption)
    assert "BPDA: values from hybrid-full (paper), gradients from hybrid-full (differentiable)" in captions
    assert "already differentiable: BPDA is white-box PGD on this model" in captions, "the classical column"
    assert any("smaller budget: steps=40 (preset 100)" in i.value for i in at.info)
    forwards = {m.value for m in at.metric if m.label == "Forward passes"}
    assert forwards == {"40"}, "40 steps on each model (the target is evaluated once per step)"


def test_url_query_presets_the_session():
    require_models("organamnist", "classical", "hybrid-full")
    at = run_app(dataset="organamnist", attack="fgsm", eps="3", **{"class": "6"})
    no_exceptions(at)
    assert at.selectbox(key="qs_dataset").value == "organamnist"
    assert at.selectbox(key="lab_attack").value == "fgsm"
    assert at.slider(key="lab_eps_organamnist").value == 3
    assert "true class **liver**" in texts(at)


def test_invalid_upload_shows_an_error_and_the_page_keeps_working():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app()
    at.radio(key="lab_source").set_value("Upload").run()
    uploader = at.get("file_uploader")[0]
    uploader.set_value(("notes.png", b"this is not an image", "image/png")).run()
    no_exceptions(at)
    assert any("cannot be used" in e.value and "not a readable PNG or JPEG" in e.value for e in at.error)
    assert not badges(at)

    huge = b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES + 1)
    at.get("file_uploader")[0].set_value(("huge.png", huge, "image/png")).run()
    assert any("the limit is" in e.value for e in at.error)

    at.get("file_uploader")[0].set_value(("photo.png", png_bytes((64, 48), "RGB"), "image/png")).run()
    no_exceptions(at)
    notes = " ".join(i.value for i in at.info)
    assert "Converted the colour image to greyscale" in notes and "Resized from 64x48 to 28x28" in notes
    assert set(badges(at)) == {"classical", "hybrid-full (paper)"}, "the page works again with a valid file"
    assert "each model is attacked away from its own prediction" in texts(at)


def test_greyscale_upload_is_repeated_over_three_channels_for_cifar10():
    require_models("cifar10", "classical")
    at = run_app(dataset="cifar10")
    at.radio(key="lab_source").set_value("Upload").run()
    at.get("file_uploader")[0].set_value(("digit.png", png_bytes((32, 32), "L"), "image/png")).run()
    no_exceptions(at)
    assert any("Repeated the greyscale image over 3 channels" in i.value for i in at.info)
    assert "classical" in badges(at)


def digit_png(text: str = "3", ink: str = "black", size: int = 200) -> bytes:
    """A digit in DejaVu Sans (matplotlib's bundled font) on a white 280-px canvas, as the canvas sends it."""
    import matplotlib
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    img = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    ImageDraw.Draw(img).text((140, 140), text, font=font, fill=ink, anchor="mm", stroke_width=4, stroke_fill=ink)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def draw_on_canvas(at: AppTest, key: str, data: bytes, strokes: int = 1) -> AppTest:
    """What streamlit-drawable-canvas sends after a stroke: the Fabric.js objects and the canvas as a PNG data URL."""
    url = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    at.session_state[key] = {"drawing": {"raw": {"objects": [{"type": "path"}] * strokes}, "data": url},
                             "backgroundFit": None}
    return at.run()


def test_a_drawn_digit_is_prepared_like_mnist_and_attacked():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app()
    at.radio(key="lab_source").set_value("Draw").run()
    no_exceptions(at)
    assert any("The canvas is blank" in i.value for i in at.info) and not badges(at)
    draw_on_canvas(at, "lab_canvas_mnist_0", digit_png("3"))
    no_exceptions(at)
    captions = " ".join(c.value for c in at.caption)
    assert "20×20 box" in captions and "centre of mass" in captions and "LeCun" in captions
    assert "what the model sees: 28×28" in [c for img in at.image for c in img.captions], "the 28x28 result is shown"
    verdicts = [m.value for m in at.markdown if "-badge[" in m.value]
    assert len(verdicts) == 2 and all("CHANGED" in v for v in verdicts), "no true class: changed / unchanged"
    assert all("**3** →" in v for v in verdicts), "both models read the drawn 3 before the attack"
    at.selectbox(key="lab_draw_label_mnist").set_value(3).run()
    assert set(badges(at).values()) <= {"FLIPPED", "HELD"} and len(badges(at)) == 2
    assert [b.label for b in at.get("download_button")][-1] == "Download report"

    draw_on_canvas(at, "lab_canvas_mnist_0", digit_png("3", ink="white"))  # strokes, but nothing visible
    assert any("The canvas is blank" in w.value for w in at.warning) and not badges(at)
    at.selectbox(key="lab_attack").set_value("fgsm").run()
    assert at.selectbox(key="lab_attack").value == "fgsm", "the rest of the page is kept"
    at.button(key="lab_clear").click().run()
    no_exceptions(at)
    assert "lab_canvas_mnist_1" in at.session_state and any("The canvas is blank" in i.value for i in at.info)


def test_camera_photos_are_validated_and_prepared_for_every_dataset():
    require_models("cifar10", "classical")
    at = run_app(dataset="cifar10")
    at.radio(key="lab_source").set_value("Camera").run()
    assert any("No photo yet" in i.value for i in at.info)
    at.camera_input[0].set_value(("shot.jpg", b"\xff\xd8\xff not a jpeg", "image/jpeg")).run()
    no_exceptions(at)
    assert any("This photo cannot be used" in e.value and "not a readable" in e.value for e in at.error)
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo, "JPEG")
    at.camera_input[0].set_value(("shot.jpg", photo.getvalue(), "image/jpeg")).run()
    no_exceptions(at)
    captions = " ".join(c.value for c in at.caption)
    assert "centre 480×480 square out of 640×480" in captions and "to 32×32" in captions
    assert "classical" in badges(at)


def test_an_image_wrong_before_the_attack_is_not_called_held():
    """OrganAMNIST's first shipped kidney-left (test #0) is read as pancreas by both shipped models."""
    require_models("organamnist", "classical", "hybrid-full")
    at = run_app(dataset="organamnist", attack="fgsm", sample="0", **{"class": "4"})
    no_exceptions(at)
    verdicts = [m.value for m in at.markdown if "-badge[" in m.value]
    assert len(verdicts) == 2 and all("WRONG BEFORE" in v and "HELD" not in v for v in verdicts), verdicts


def test_the_quantum_page_takes_a_drawing():
    require_models("mnist", "hybrid-full")
    at = run_app("pages/quantum_circuit.py")
    at.radio(key="qc_source").set_value("Draw").run()
    assert any("The canvas is blank" in i.value for i in at.info)
    draw_on_canvas(at, "qc_canvas_mnist_0", digit_png("7"))
    no_exceptions(at)
    assert "fused (the hybrid's answer): **7**" in texts(at)


def _copy_pretrained(tmp_path: Path) -> Path:
    target = tmp_path / "pretrained"
    shutil.copytree(zoo.PRETRAINED_DIR, target)
    return target


def test_tampered_weights_mark_that_model_unavailable_and_the_rest_works(tmp_path, monkeypatch):
    require_models("mnist", "classical", "hybrid-full")
    directory = _copy_pretrained(tmp_path)
    weights = directory / "mnist-hybrid-full.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", directory)
    at = run_app()
    no_exceptions(at)
    errors = " ".join(e.value for e in at.error)
    assert "hybrid-full (paper)** is unavailable" in errors and "does not match its model card" in errors
    assert "mnist-hybrid-full.safetensors" in errors
    assert any("hybrid-full: unavailable" in e.value for e in at.error)
    assert set(badges(at)) == {"classical"}, "the classical CNN is still attacked"

    at.switch_page("pages/quantum_circuit.py").run()
    no_exceptions(at)
    assert any("hybrid-full is unavailable" in e.value for e in at.error)


def test_missing_weights_file_is_named(tmp_path, monkeypatch):
    require_models("mnist", "classical", "hybrid-full")
    directory = _copy_pretrained(tmp_path)
    (directory / "mnist-classical.safetensors").unlink()
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", directory)
    at = run_app()
    no_exceptions(at)
    assert any("Weights file not found" in e.value and "mnist-classical.safetensors" in e.value for e in at.error)
    assert set(badges(at)) == {"hybrid-full (paper)"}


# ----------------------------------------------------------------------------- Robustness Explorer


def _record(model: str, mode: str | None, attack: str, eps: float, robust: float, asr: float, n: int = 100,
            suite: str = "paper", seconds: float = 0.01, forwards: float = 10.0) -> dict:
    """A record in the committed results' schema (qshield_core.evaluation), for the pages to read."""
    return {"schema": "qshield.results/1", "dataset": "mnist", "model": model, "grad_mode": mode, "attack": attack,
            "attack_display": attack.upper(), "suite": suite, "eps": eps, "n": n, "clean_accuracy": 0.99,
            "robust_accuracy": robust, "robust_accuracy_ci": [robust - 0.05, min(robust + 0.05, 1.0)],
            "asr": asr, "asr_ci": [max(asr - 0.05, 0.0), min(asr + 0.05, 1.0)],
            "seconds_per_image": seconds, "forwards_per_image": forwards, "backwards_per_image": forwards,
            "key": f"mnist/{model}/{mode or '-'}/{attack}/eps={eps:.6f}/steps=preset/n={n}/seed=0/fast/auto",
            "command": "python -m qshield_core evaluate --dataset mnist --attack pgd --json results/test.json"}


def _write_results(name: str, records: list[dict]) -> None:
    lab.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (lab.RESULTS_DIR / name).write_text(json.dumps({"schema": "qshield.results/1", "records": records}))


def test_explorer_says_when_no_results_are_committed():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/robustness_explorer.py")
    no_exceptions(at)
    assert any("No attack results for MNIST are committed yet" in w.value for w in at.warning)
    assert not [c for c in at.get("plotly_chart") if c.proto.id.endswith("-rx_committed")]
    assert at.dataframe, "the paper's reported table is still shown"


def test_explorer_plots_the_committed_records_with_their_intervals():
    require_models("mnist", "classical", "hybrid-full")
    _write_results("test.json", [
        _record("classical", None, "pgd", 8 / 255, robust=0.70, asr=0.29),
        _record("classical", None, "pgd", 32 / 255, robust=0.10, asr=0.90),
        _record("hybrid-full", "paper", "pgd", 8 / 255, robust=0.80, asr=0.19),
        _record("hybrid-full", "paper", "pgd", 32 / 255, robust=0.40, asr=0.60),
    ])
    at = run_app("pages/robustness_explorer.py")
    no_exceptions(at)
    traces = {t["name"]: t for t in plotly_data(at, "rx_committed")}
    assert set(traces) == {"classical · PGD", "hybrid-full (paper) · PGD"}
    np.testing.assert_allclose(traces["classical · PGD"]["y"], [70.0, 10.0])
    np.testing.assert_allclose(traces["classical · PGD"]["x"], [8.0, 32.0])
    np.testing.assert_allclose(traces["classical · PGD"]["error_y"]["array"], [5.0, 5.0], atol=1e-9)
    assert "python -m qshield_core evaluate" in at.code[0].value
    assert any(e.label.startswith("Regenerate these results") for e in at.expander)
    cells = at.dataframe[0].value
    assert list(cells[cells["model"] == "classical"]["grad_mode"]) == ["–", "–"]
    assert_no_missing_shown(at)

    at.radio(key="rx_metric").set_value("asr").run()
    names = [t["name"] for t in plotly_data(at, "rx_committed")]
    assert any(n.startswith("paper: ") for n in names), "the paper's ASR is drawn as a reference"


def test_explorer_fresh_sweep_runs_in_the_background_and_reports():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/robustness_explorer.py")
    at.selectbox(key="rx_attack").set_value("fgsm")
    at.multiselect(key="rx_eps").set_value([0, 16])
    at.slider(key="rx_n").set_value(10)
    at.checkbox(key="rx_both").uncheck()
    submit = next(b for b in at.get("form_submit_button") if b.label == "Run sweep")
    submit.click().run()
    no_exceptions(at)
    job = at.session_state["rx_job"]
    result = job.future.result(timeout=TIMEOUT)
    assert len(result.records) == 4 and not result.cancelled
    at.run()
    no_exceptions(at)
    frame = at.dataframe[-1].value
    assert len(frame) == 4 and set(frame["n"]) == {10}
    at_zero = frame[frame["eps_255"] == 0]
    assert (at_zero["asr"] == 0).all(), "an attack of strength 0 changes nothing"
    assert (at_zero["robust_accuracy"] == at_zero["clean_accuracy"]).all()


# ----------------------------------------------------------------------------- Quantum Circuit


def test_quantum_page_noise_controls_move_the_output():
    require_models("mnist", "hybrid-full")
    at = run_app("pages/quantum_circuit.py")
    no_exceptions(at)
    assert at.image, "the circuit diagram is drawn"
    at.selectbox(key="qs_noise_kind").set_value("none").run()
    no_exceptions(at)
    assert "Total variation distance between the two: 0.0000" in texts(at)
    at.selectbox(key="qs_noise_kind").set_value("depolarizing").run()
    at.select_slider(key="qs_noise_p").set_value(1.0).run()
    no_exceptions(at)
    noisy = np.asarray(plotly_data(at, "qc_basis")[1]["y"], dtype=float)
    np.testing.assert_allclose(noisy, np.full(16, 1 / 16), atol=1e-6)
    assert "depolarizing (p=1)" in texts(at)


def test_quantum_page_shows_the_committed_studies_for_its_dataset():
    """Each study's table (the README's), by dataset; none for CIFAR-10; a damaged results file is named. The
    seed study's table comes with its check of the paper's ordering."""
    from qshield_core import studies

    require_models("mnist", "hybrid-full")
    lab.RESULTS_DIR.mkdir(parents=True)
    for name in ("design-study.json", "advtrain.json"):  # the committed MNIST cells
        records = [r for r in evaluation.load_results(REPO / "results" / name) if r["dataset"] == "mnist"]
        evaluation.save_results(lab.RESULTS_DIR / name, records)
    as_seed_study = {"classical": "classical@scratch-s0", "hybrid-paper-full-s0": "hybrid-full@scratch-s0",
                     "hybrid-paper-full-s1": "hybrid-full@scratch-s1"}  # design cells standing in for seed-study ones
    evaluation.save_results(lab.RESULTS_DIR / "seed-study.json", [
        dict(r, model=as_seed_study[r["model"]]) for r in evaluation.load_results(REPO / "results/design-study.json")
        if r["dataset"] == "mnist" and r["model"] in as_seed_study])
    at = run_app("pages/quantum_circuit.py")
    no_exceptions(at)
    shown = texts(at)
    assert "Design study: can a richer circuit be a real defence?" in shown
    assert "Adversarial training: does the circuit add to a real defence?" in shown
    assert "Seed study: the paper's entanglement ordering over training seeds" in shown
    assert "The paper's ordering: not enough seeds yet" in shown, "hybrid-none, -linear and -star have no seed"
    assert "Adversarial training: against the extra-epoch control" in shown, "the control has met AutoAttack"
    design, advtrain, against_control, seed = (frame.value for frame in at.dataframe[:4])
    assert seed.set_index("model").loc["hybrid-full@scratch", "seeds"] == "2"
    assert against_control["model"].tolist()[0] == studies.ADVTRAIN_CONTROL
    assert against_control.set_index("model").loc["classical@pgd-at", "above the CNN?"].startswith("below")
    assert advtrain.set_index("model").loc[studies.ADVTRAIN_CONTROL, "above the CNN?"] == "above, every seed (1)", \
        "no Markdown asterisks in a data frame"
    assert sorted(design.columns) == sorted(studies.HEADER) and list(design.columns)[3] == "above the CNN?"
    assert design.set_index("model").loc["paper-full", ["mode", "seeds"]].tolist() == ["paper", "3"]
    assert advtrain["model"].tolist()[0] == "classical@pgd-at"
    assert any("python -m qshield_core study design results/design-study.json" in c.value for c in at.code)
    (lab.RESULTS_DIR / "advtrain.json").write_text("{broken")
    at.run()
    assert any("advtrain.json could not be read" in e.value for e in at.error)
    assert "Design study: can a richer circuit" in texts(at), "the other study is still shown"
    require_models("cifar10", "hybrid-full")
    at.selectbox(key="qs_dataset").set_value("cifar10").run()
    no_exceptions(at)
    assert "The studies do not cover CIFAR-10" in texts(at)
    require_models("organamnist", "hybrid-full")
    at.selectbox(key="qs_dataset").set_value("organamnist").run()
    assert "No cell of the studies has run on OrganAMNIST yet" in texts(at), "these files hold MNIST's cells only"


def test_quantum_page_paper_mode_redraws_the_projection():
    require_models("mnist", "hybrid-full")
    at = run_app("pages/quantum_circuit.py")
    before = np.asarray(plotly_data(at, "qc_angles")[0]["z"], dtype=float)
    at.button(key="qc_redraw").click().run()
    after = np.asarray(plotly_data(at, "qc_angles")[0]["z"], dtype=float)
    assert not np.allclose(before, after), "paper mode: a new random projection gives new angles"

    at.radio(key="qs_grad_mode").set_value("differentiable").run()
    first = np.asarray(plotly_data(at, "qc_angles")[0]["z"], dtype=float)
    at.run()
    assert not [b for b in at.button if b.key == "qc_redraw"], "no redraw in the deterministic mode"
    np.testing.assert_array_equal(first, np.asarray(plotly_data(at, "qc_angles")[0]["z"], dtype=float))


# ----------------------------------------------------------------------------- Attacker Cost


def test_cost_page_reads_committed_timings_and_says_when_absent():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/attacker_cost.py")
    assert any("No attack timings for MNIST are committed yet" in w.value for w in at.warning)
    _write_results("cost.json", [
        _record("classical", None, "pgd", 32 / 255, 0.1, 0.9, seconds=0.002),
        _record("hybrid-full", "paper", "pgd", 32 / 255, 0.4, 0.6, seconds=0.006),
    ])
    at = run_app("pages/attacker_cost.py")
    no_exceptions(at)
    bars = plotly_data(at, "ac_committed")
    np.testing.assert_allclose(bars[0]["y"], [3.0])
    assert bars[0]["name"] == "hybrid-full (paper)"


def test_cost_page_measures_on_demand():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/attacker_cost.py")
    at.multiselect(key="ac_attacks").set_value(["fgsm"])
    next(b for b in at.get("form_submit_button") if b.label == "Measure").click().run()
    at.session_state["ac_job"].future.result(timeout=TIMEOUT)
    at.run()
    no_exceptions(at)
    series = {t["name"] for t in plotly_data(at, "ac_fresh")}
    assert series == {"hybrid-full (paper)", "hybrid-full (differentiable)"}
    assert "Measured just now" in texts(at)


# ----------------------------------------------------------------------------- About


def test_about_page_reads_the_adaptive_results_only_when_committed():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/about.py")
    no_exceptions(at)
    assert any("not in this checkout yet" in w.value for w in at.warning)
    _write_results("adaptive.json", [
        _record("hybrid-full", "paper", "pgd", 32 / 255, 0.60, 0.391),
        _record("hybrid-full", "paper", "bpda", 32 / 255, 0.01, 0.987, suite="adaptive"),
    ])
    at = run_app("pages/about.py")
    no_exceptions(at)
    table = at.dataframe[0].value
    assert list(table["its ASR (%)"]) == [98.7] and list(table["paper-protocol PGD ASR (%)"]) == [39.1]
    assert "fools 98.7 %" not in texts(at), "the table is not repeated as a list"
    assert_no_missing_shown(at)


def test_shared_models_stay_in_eval_mode_after_attacks():
    """torchattacks switches model modes; the app's shared instances must never leave eval mode."""
    require_models("mnist", "classical")
    classical = lab.load("mnist", "classical")
    image = lab.sample_image(lab.sample_table("mnist")[0])
    lab.compare_attack("mnist", image, None, "pgd", {"c": classical})
    assert not any(m.training for m in classical.model.modules())
    assert all(not p.requires_grad for p in classical.model.parameters())
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- Claim cards


def _claim_card(model: str, mode: str | None, admitted: bool) -> dict:
    flag = {"name": "randomised_forward", "title": "randomised forward pass", "raised": not admitted,
            "evidence": "two identical calls differ", "advice": "use EOT" if not admitted else ""}
    figure = {"attack": "pgd", "robust_accuracy": 0.31, "robust_accuracy_ci": [0.28, 0.34], "n": 1000,
              "key": "k", "draws": {"n_draws": 5, "robust_accuracy": {"mean": 0.308, "std": 0.002, "min": 0.306,
                                                                       "max": 0.312, "values": []}}}
    return {"dataset": "mnist", "model": model, "grad_mode": mode, "eps": 32 / 255,
            "clean_accuracy": {"accuracy": 0.992, "ci": [0.98, 0.996], "n": 1000}, "paper_protocol": figure,
            "autoattack": None, "worst_case": None, "flags": [flag], "robustbench_admissible": admitted,
            "admission_reasons": [] if admitted else ["randomised forward pass"]}


def test_claims_page_shows_the_committed_cards_and_says_when_there_are_none():
    require_models("mnist", "classical", "hybrid-full")
    at = run_app("pages/claims.py")
    no_exceptions(at)
    assert any("No claim cards committed yet" in i.value for i in at.info)
    lab.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (lab.RESULTS_DIR / "claims.json").write_text(json.dumps({"schema": "qshield.claims/1", "command": "x", "cards": [
        _claim_card("classical", None, True), _claim_card("hybrid-full", "paper", False)]}))
    at = run_app("pages/claims.py")
    no_exceptions(at)
    assert [h.value for h in at.subheader][:2] == ["MNIST · classical · ε = 32/255",
                                                  "MNIST · hybrid-full (paper) · ε = 32/255"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["paper-protocol PGD"] == "31.0 % (±0.2)" and metrics["AutoAttack"] == "–"
    assert any("RobustBench would not admit it: randomised forward pass" in w.value for w in at.warning)
    assert any("RobustBench would admit" in s.value for s in at.success)
    assert_no_missing_shown(at)


# ----------------------------------------------------------------------------- Certified


def _certified_record(model: str, sigma: float) -> dict:
    curve = [{"radius": r, "value": v, "hits": round(v * 10), "ci": [max(v - 0.2, 0), min(v + 0.2, 1)]}
             for r, v in ((0.0, 0.9), (0.25, 0.7), (0.5, 0.4))]
    empirical = [{"radius": r, "robust": {"value": v, "hits": round(v * 10), "ci": [0.1, 0.9]},
                  "certified": {"value": c, "hits": round(c * 10), "ci": [0.1, 0.9]}, "certified_but_broken": []}
                 for r, v, c in ((0.25, 0.8, 0.7), (0.5, 0.6, 0.4))]
    return {"schema": "qshield.certified/1", "key": f"mnist/{model}/sigma={sigma}", "dataset": "mnist",
            "model": model, "sigma": sigma, "n": 10, "curve": curve, "empirical": empirical,
            "certify": {"n0": 100, "n": 1000, "alpha": 0.001, "max_radius": 2.46 * sigma}}


def test_certified_page_the_certificate_follows_the_noise_slider_and_says_what_it_covers():
    require_models("mnist", "hybrid-full")
    at = run_app("pages/certified.py")
    no_exceptions(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Circuit's answer"] == "0"  # the shipped circuit answers class 0 for every input (proved)
    radius_shipped = float(metrics["Certified trace distance"])
    message = [*at.success, *at.warning][0].value
    target = float(metrics["An attack at eps = 32/255 moves it"])
    assert ("covers what the attack does" in message) == (radius_shipped >= target)
    assert "shipped samples the circuit alone is right on 10%" in message
    at.select_slider(key="cert_p").set_value(0.5).run()
    no_exceptions(at)
    radius_noisy = float({m.label: m.value for m in at.metric}["Certified trace distance"])
    assert radius_noisy > radius_shipped  # amplitude damping pulls every state towards the class-0 state
    at.radio(key="cert_kind").set_value("global depolarizing (Du et al.'s setting)").run()
    at_half = {m.label: m.value for m in at.metric}
    at.select_slider(key="cert_p").set_value(0.005).run()
    at_shipped = {m.label: m.value for m in at.metric}
    assert at_half["Certified trace distance"] == at_shipped["Certified trace distance"]  # the exact radius stays
    assert float(at_half["Du et al.'s bound"]) > float(at_shipped["Du et al.'s bound"]) > 0  # the bound grows
    assert float(at_half["Du et al.'s bound"]) < float(at_half["Certified trace distance"])


def test_certified_page_plots_committed_smoothing_results_and_says_when_there_are_none():
    require_models("mnist", "hybrid-full")
    at = run_app("pages/certified.py")
    assert any("certified.json is not committed yet" in i.value for i in at.info)
    lab.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (lab.RESULTS_DIR / "certified.json").write_text(json.dumps({"schema": "qshield.certified/1", "records": [
        _certified_record("classical", 0.25), _certified_record("hybrid-full", 0.25)]}))
    at = run_app("pages/certified.py")
    no_exceptions(at)
    traces = plotly_data(at, "cert_smoothing")
    assert [t["name"] for t in traces] == ["classical, σ = 0.25: certified", "classical, σ = 0.25: attacked",
                                          "hybrid-full, σ = 0.25: certified", "hybrid-full, σ = 0.25: attacked"]
    assert list(traces[0]["y"]) == [0.9, 0.7, 0.4] and list(traces[1]["y"]) == [0.8, 0.6]
    table = at.dataframe[0].value
    assert len(table) == 4 and {str(v) for v in table["gap (points)"]} == {"1", "2"} and "n" not in table
    assert any("Both on the same 10 test points" in c.value for c in at.caption)
    assert len(at.dataframe) == 1, "records without per-point outcomes are not paired"
    assert_no_missing_shown(at)
    per_point = {"classical": [[1, 1, 0.3, 900]] * 7 + [[1, 0, 0.0, 500]] * 3,  # certified at 0.25 on 7 points
                 "hybrid-full": [[1, 1, 0.3, 900]] * 6 + [[1, 0, 0.0, 500]] * 4}
    records = [dict(_certified_record(m, 0.25), points_sha256="same", per_point=per_point[m],
                    empirical=[dict(e, predictions=[1] * 8 + [0] * 2) for e in _certified_record(m, 0.25)["empirical"]])
               for m in ("classical", "hybrid-full")]
    (lab.RESULTS_DIR / "certified.json").write_text(json.dumps({"schema": "qshield.certified/1", "records": records}))
    at = run_app("pages/certified.py")
    no_exceptions(at)
    pairs = at.dataframe[1].value
    assert list(pairs["L2 radius"]) == [0.25, 0.5]
    assert pairs["certified: hybrid - CNN, points [95 % CI]"].iloc[0].startswith("-10.0 [")
    assert pairs["attacked: hybrid - CNN, points [95 % CI]"].iloc[0].startswith("+0.0 [")
    assert any("point by point on the same test points" in c.value for c in at.caption)
