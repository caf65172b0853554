"""Drawings and photos become model inputs the way the datasets were made (qshield_core.drawing)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from qshield_core import drawing, lab, zoo
from qshield_core.data import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, ImageInputError

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
CANVAS = 280


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def glyph(text: str, size: int = 200, pen: int = 6, centre: tuple[int, int] = (CANVAS // 2, CANVAS // 2),
          canvas: int = CANVAS, ink: str = "black", ground: str = "white") -> Image.Image:
    """A character from DejaVu Sans drawn like a pen stroke (outlined ``pen`` px thick) on a canvas."""
    img = Image.new("RGB", (canvas, canvas), ground)
    font = ImageFont.truetype(str(FONT), size)
    ImageDraw.Draw(img).text(centre, text, font=font, fill=ink, anchor="mm", stroke_width=pen, stroke_fill=ink)
    return img


def digit(data: bytes) -> np.ndarray:
    return drawing.prepare_drawing(data, "mnist").tensor[0].numpy()


# ----------------------------------------------------------------------------- MNIST: LeCun's procedure


def test_font_digits_are_read_by_the_shipped_mnist_cnn():
    """Digits 0-9 written in a font with a pen-like outline, through the drawing pipeline, are read correctly."""
    if not zoo.model_files("mnist", "classical").weights.is_file():
        pytest.skip("the shipped mnist-classical model is not in pretrained/")
    model = lab.load("mnist", "classical").model
    images = torch.stack([drawing.prepare_drawing(png(glyph(str(d))), "mnist").tensor for d in range(10)])
    with torch.no_grad():
        predictions = model(images).argmax(-1).tolist()
    correct = sum(int(p == d) for d, p in enumerate(predictions))
    assert correct >= 8, f"read {predictions} for 0..9"


def test_the_digit_fits_a_20x20_box_with_its_centre_of_mass_at_the_centre():
    result = digit(png(glyph("7", centre=(90, 190), size=120)))
    assert result.shape == (28, 28) and result.min() >= 0.0 and result.max() <= 1.0
    rows, cols = np.nonzero(result > 0)
    assert max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == 20
    com = ndimage.center_of_mass(result)
    np.testing.assert_allclose(com, (drawing.MNIST_CENTRE, drawing.MNIST_CENTRE), atol=0.5)


def test_the_aspect_ratio_is_kept():
    img = Image.new("L", (CANVAS, CANVAS), 255)
    ImageDraw.Draw(img).rectangle((120, 40, 159, 199), fill=0)  # 40 x 160 px: 1 to 4
    result = digit(png(img))
    rows, cols = np.nonzero(result > 0.5)
    assert rows.max() - rows.min() + 1 == 20 and cols.max() - cols.min() + 1 == 5


def test_position_size_and_polarity_do_not_matter():
    reference = digit(png(glyph("4")))
    small_corner = digit(png(glyph("4", size=90, pen=3, centre=(60, 70))))
    light_on_dark = digit(png(glyph("4", ink="white", ground="black")))
    assert np.abs(small_corner - reference).mean() < 0.05
    np.testing.assert_allclose(light_on_dark, reference, atol=1e-6)
    notes = drawing.prepare_drawing(png(glyph("4", ink="white", ground="black")), "mnist").notes
    assert not any("Inverted" in n for n in notes), "light ink on dark is already MNIST's polarity"


def test_a_thin_pen_is_thickened_to_mnist_strokes():
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    ImageDraw.Draw(img).ellipse((80, 40, 200, 240), outline="black", width=2)
    prepared = drawing.prepare_drawing(png(img), "mnist")
    assert any("Thickened the strokes" in n for n in prepared.notes)
    assert drawing.stroke_thickness(prepared.tensor[0].numpy()) >= drawing.MIN_STROKE
    thick = drawing.prepare_drawing(png(glyph("0")), "mnist")
    assert not any("Thickened" in n for n in thick.notes), "a pen-like stroke is left as it is"


def test_a_transparent_canvas_counts_as_white():
    opaque = digit(png(glyph("2")))
    strokes = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))  # transparent black: a canvas without background
    mask = Image.eval(glyph("2").convert("L"), lambda v: 255 - v)
    strokes.paste((0, 0, 0, 255), mask=mask)
    np.testing.assert_allclose(digit(png(strokes)), opaque, atol=0.02)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("dataset", ["mnist", "organamnist", "cifar10"])
def test_a_blank_canvas_is_a_clear_message(dataset):
    with pytest.raises(drawing.BlankImageError, match="canvas is blank"):
        drawing.prepare_drawing(png(Image.new("RGB", (CANVAS, CANVAS), "white")), dataset)
    with pytest.raises(drawing.BlankImageError, match="photo"):
        drawing.prepare_drawing(png(Image.new("RGB", (640, 480), (30, 30, 30))), dataset, source="photo")


def test_drawings_get_the_uploads_validation():
    with pytest.raises(ImageInputError, match="not a readable PNG or JPEG"):
        drawing.prepare_drawing(b"\x89PNG\r\n\x1a\nnot really", "mnist")
    with pytest.raises(ImageInputError, match="empty"):
        drawing.prepare_drawing(b"", "mnist")
    with pytest.raises(ImageInputError, match="the limit is"):
        drawing.prepare_drawing(b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_BYTES + 1), "mnist")
    side = int(MAX_UPLOAD_PIXELS**0.5) + 1
    with pytest.raises(ImageInputError, match="pixels; the limit is"):
        drawing.prepare_drawing(png(Image.new("1", (side, side))), "mnist")
    with pytest.raises(ValueError, match="source must be one of"):
        drawing.prepare_drawing(png(glyph("1")), "mnist", source="fax")


# ----------------------------------------------------------------------------- OrganAMNIST, CIFAR-10


def stripes(width: int = 640, height: int = 480) -> Image.Image:
    """Red margins left and right of a blue centre square (what a centre crop keeps)."""
    img = Image.new("RGB", (width, height), (200, 0, 0))
    side = min(width, height)
    ImageDraw.Draw(img).rectangle(((width - side) // 2, 0, (width + side) // 2 - 1, height - 1), fill=(0, 0, 200))
    return img


def test_a_cifar_photo_is_centre_cropped_and_resized_in_colour():
    prepared = drawing.prepare_drawing(png(stripes()), "cifar10", source="photo")
    assert prepared.tensor.shape == (3, 32, 32)
    np.testing.assert_allclose(prepared.tensor.mean((1, 2)).numpy(), [0.0, 0.0, 200 / 255], atol=0.01)
    notes = " ".join(prepared.notes)
    assert "centre 480×480 square out of 640×480" in notes and "to 32×32" in notes


def test_an_organamnist_drawing_becomes_greyscale_28x28():
    prepared = drawing.prepare_drawing(png(glyph("o")), "organamnist")
    assert prepared.tensor.shape == (1, 28, 28)
    assert any("greyscale" in n for n in prepared.notes) and not any("Cropped" in n for n in prepared.notes)
    assert prepared.tensor.min() < 0.2 and prepared.tensor.max() > 0.9, "a dark drawing on white stays so"
