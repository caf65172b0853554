"""Image sources the pages share beyond the shipped samples: a drawing canvas and the camera.

Both hand their PNG/JPEG bytes to :func:`qshield_core.drawing.prepare_drawing`, which validates them
as uploads are validated and turns them into a model input the way the dataset's images were made;
this module only lays out the widgets and says what was done.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from streamlit_drawable_canvas import st_canvas

from qshield_core import viz
from qshield_core.data import ImageInputError, get_spec
from qshield_core.drawing import BlankImageError, prepare_drawing

CANVAS_PX = 280
PEN_PX = 22
"""Default pen on the 280-px canvas: a digit drawn 200 px tall is reduced about 10x, to MNIST's 2-3 px strokes."""


def canvas_key(key: str, dataset: str, clears: int = 0) -> str:
    """The canvas widget's key (a new one after each Clear, which gives a fresh, empty canvas)."""
    return f"{key}_canvas_{dataset}_{clears}"


def drawn_image(dataset: str, key: str) -> np.ndarray | None:
    """A canvas to draw on, its result as a (C, H, W) input for ``dataset``, or None (with a message)."""
    spec = get_spec(dataset)
    clears_key = f"{key}_canvas_clears"
    clears = st.session_state.setdefault(clears_key, 0)
    left, right = st.columns([1, 1])
    with left:
        pen, colour_col, clear_col = st.columns([3, 2, 2], vertical_alignment="bottom")
        width = pen.slider("Pen width (px)", 8, 48, PEN_PX, key=f"{key}_pen",
                           help="Thick strokes survive the reduction to the dataset's small images.")
        colour = "#000000"
        if spec.channels == 3:
            colour = colour_col.color_picker("Pen colour", "#000000", key=f"{key}_pen_colour")
        if clear_col.button("Clear", icon=":material/delete:", key=f"{key}_clear", help="Start on an empty canvas"):
            st.session_state.pop(canvas_key(key, dataset, clears), None)
            clears = st.session_state[clears_key] = clears + 1
        what = "a digit" if spec.name == "mnist" else "something"
        st.caption(f"Draw {what} with the mouse, a pen or a finger; the prediction follows each stroke.")
        result = st_canvas(stroke_width=width, stroke_color=colour, background_color="#ffffff", width=CANVAS_PX,
                           height=CANVAS_PX, drawing_mode="freedraw", return_image_data=True,
                           key=canvas_key(key, dataset, clears))
    with right:
        data = result.image_bytes
        if data is None or not (result.json_data or {}).get("objects"):
            st.info(f"The canvas is blank: draw {what} on it.", icon=":material/draw:")
            return None
        return _prepared(data, dataset, "drawing")


def camera_image(dataset: str, key: str) -> np.ndarray | None:
    """A camera shot as a (C, H, W) input for ``dataset``, or None (with a message)."""
    spec = get_spec(dataset)
    hint = ("Hold up a digit written large in thick dark pen on white paper." if spec.name == "mnist"
            else "Point the camera at something; the middle of the picture is used.")
    left, right = st.columns([1, 1])
    shot = left.camera_input("Take a photo", key=f"{key}_camera_{spec.name}", help=hint)
    with right:
        if shot is None:
            st.info(f"No photo yet. {hint}", icon=":material/photo_camera:")
            return None
        return _prepared(shot.getvalue(), dataset, "photo")


def _prepared(data: bytes, dataset: str, source: str) -> np.ndarray | None:
    """Run the dataset's preprocessing; show the result and what was done, or why it cannot be used."""
    spec = get_spec(dataset)
    try:
        prepared = prepare_drawing(data, dataset, source)
    except BlankImageError as err:
        st.warning(str(err), icon=":material/draw:")
        return None
    except ImageInputError as err:
        st.error(f"This {source} cannot be used: {err}")
        return None
    pixels = prepared.tensor.numpy()
    st.image(viz.pixel_image(pixels, 168), caption=f"what the model sees: {spec.image_size}×{spec.image_size}")
    for note in prepared.notes:
        st.caption(f":material/info: {note}")
    return pixels
