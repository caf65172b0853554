"""A drawing or a photo turned into a model input the way each dataset's own images were made.

MNIST follows the procedure that made MNIST (LeCun, Bottou, Bengio & Haffner, "Gradient-based
learning applied to document recognition", Proc. IEEE 1998; http://yann.lecun.com/exdb/mnist/):
the bilevel digit is "size normalized to fit in a 20x20 pixel box while preserving [its] aspect
ratio", which anti-aliasing turns into grey levels, and then "centered in a 28x28 image by
computing the center of mass of the pixels, and translating the image so as to position this
point at the center of the 28x28 field". MNIST digits are light ink on a dark ground, so a dark
pen on a light page is inverted first, and a pen stroke too thin to survive the ~10x reduction is
thickened until it is as thick as MNIST's thinnest strokes.

OrganAMNIST and CIFAR-10 images are small square crops: a drawing or photo is centre-cropped to a
square (proportions kept), reduced to the dataset's size with anti-aliasing, and converted to the
dataset's channels.

Every input first goes through :func:`qshield_core.data.open_image`, the uploads' validation
(bytes and pixel limits, corrupt data); an empty canvas raises :class:`BlankImageError`.

Example::

    >>> prepared = prepare_drawing(png_bytes, "mnist")
    >>> prepared.tensor.shape, prepared.notes[0]
    (torch.Size([1, 28, 28]), 'Found the digit ...')
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .data import DatasetSpec, ImageInputError, PreparedImage, get_spec, open_image
from .deferred import defer_import

ndimage = defer_import("scipy.ndimage")  # on the first drawing: the pages import this module at their start

MNIST_SIZE = 28
MNIST_BOX = 20
MNIST_CENTRE = 14.0
"""Where MNIST's centre of mass sits (row, column index): measured on the shipped samples (14.03 +- 0.28)."""
MIN_STROKE = 3.5
"""Thinnest stroke wanted in the 28x28 result, in the units of :func:`stroke_thickness`: the shipped MNIST
samples measure 4.5 (median) and 4.1 (10th percentile)."""
INK_LEVEL = 0.5
"""Ink at or above this fraction counts as the digit's (bilevel) pixels."""
MIN_CONTRAST = 0.1
"""A picture whose ink never rises this far above its background is blank."""
SOURCES = ("drawing", "photo")


class BlankImageError(ImageInputError):
    """A drawing (or photo) with nothing on it."""


def prepare_drawing(data: bytes, dataset: str, source: str = "drawing") -> PreparedImage:
    """Validate a drawing's or photo's PNG/JPEG bytes and turn them into a (C, H, W) input for ``dataset``.

    Args:
        data: the encoded image (a canvas' PNG, a camera's JPEG).
        dataset: ``mnist`` (LeCun's procedure), ``organamnist`` or ``cifar10`` (centre crop and resize).
        source: ``"drawing"`` or ``"photo"``, only for the messages.

    Returns:
        :class:`~qshield_core.data.PreparedImage`: the float32 tensor in [0, 1] and one note per step taken.

    Raises:
        ImageInputError: too large, not an image, corrupt; :class:`BlankImageError` when nothing is on it.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    spec = get_spec(dataset)
    img, _ = open_image(data)
    if spec.name == "mnist":
        tensor, notes = mnist_digit(grey_of(img), source)
    else:
        tensor, notes = fit_to_spec(img, spec, source)
    return PreparedImage(tensor, notes)


# --------------------------------------------------------------------------- pixels


def flatten_alpha(img: Image.Image) -> Image.Image:
    """The image as RGB, transparent parts composited onto white (a canvas' background)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        array = np.asarray(img, dtype=np.float32)
        scale = 65535.0 if array.max() > 255 else 255.0 if array.max() > 1 else 1.0
        return Image.fromarray(np.clip(array / scale * 255, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def grey_of(img: Image.Image) -> np.ndarray:
    """(H, W) float greyscale in [0, 1] (ITU-R 601 luma, as PIL's ``convert("L")``)."""
    return np.asarray(flatten_alpha(img).convert("L"), dtype=np.float32) / 255.0


def ink_of(grey: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ink in [0, 1] (1 = full stroke) and whether the picture was inverted (dark pen on a light ground).

    The ground's brightness is the median of the border pixels; the ink is the distance from it,
    stretched so that the strongest stroke reaches 1.
    """
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ground = float(np.median(border))
    inverted = ground >= 0.5
    ink = np.clip(ground - grey if inverted else grey - ground, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        return np.zeros_like(grey), inverted
    return np.clip(ink / peak, 0.0, 1.0), inverted


def stroke_thickness(ink: np.ndarray) -> float:
    """Mean stroke thickness in pixels (0 when there is no ink): 4 x the mean distance of an ink pixel to the ground.

    For a straight band of width w this is about w + 2 on a pixel grid; only used to compare a result with MNIST.
    """
    mask = ink >= INK_LEVEL
    if not mask.any():
        return 0.0
    return float(4.0 * ndimage.distance_transform_edt(mask)[mask].mean())


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float (H, W) array to ``size`` = (width, height): area-averaged when reducing."""
    img = Image.fromarray(array.astype(np.float32), mode="F")
    reducing = size[0] < img.width or size[1] < img.height
    resample = Image.Resampling.BOX if reducing else Image.Resampling.BILINEAR
    return np.clip(np.asarray(img.resize(size, resample), dtype=np.float32), 0.0, 1.0)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


# --------------------------------------------------------------------------- MNIST


def mnist_digit(grey: np.ndarray, source: str = "drawing") -> tuple[torch.Tensor, list[str]]:
    """LeCun's MNIST procedure on a greyscale picture of one digit: (1, 28, 28) tensor and the notes.

    Bounding box of the ink, scaled (aspect kept, area-averaged) into 20x20, placed in 28x28 so that its
    centre of mass falls on the field's centre. Strokes thinner than :data:`MIN_STROKE` after the reduction
    are thickened in the picture first, by a disk as wide as the shortfall.
    """
    ink, inverted = ink_of(grey)
    if not (ink >= INK_LEVEL).any():
        what = "canvas is blank" if source == "drawing" else "photo shows no digit (it is nearly uniform)"
        raise BlankImageError(f"The {what}: draw a digit with the mouse or a finger, large and in the middle.")
    notes = [f"Inverted the {source} (dark on light): MNIST digits are light ink on a dark ground."] if inverted else []
    (width, height), size, digit = _normalise(ink)
    for _ in range(3):
        thickness = stroke_thickness(digit)
        if thickness >= MIN_STROKE:
            break
        radius = max(1, math.ceil((MIN_STROKE - thickness) / 2 * max(width, height) / MNIST_BOX))
        ink = ndimage.grey_dilation(ink, footprint=_disk(radius))
        (width, height), size, digit = _normalise(ink)
        notes.append(f"Thickened the strokes by {2 * radius} px so that they survive the reduction.")
    notes.insert(0, (
        f"Found the digit's bounding box ({width}×{height} px of the {grey.shape[1]}×{grey.shape[0]} {source}), "
        f"scaled it to {size[0]}×{size[1]} to fit a 20×20 box with its proportions kept (area-averaged, so the "
        "edges turn grey), and centred its centre of mass in the 28×28 field: how MNIST was made "
        "(LeCun et al. 1998)."))
    return torch.from_numpy(digit[None].copy()), notes


def _normalise(ink: np.ndarray) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    """Bounding box (width, height), its size scaled into 20x20 (width, height), and the centred 28x28 digit."""
    rows, cols = np.nonzero(ink >= INK_LEVEL)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    height, width = int(bottom - top), int(right - left)
    scale = MNIST_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return (width, height), size, _place(_resize(ink[top:bottom, left:right], size))


def _place(box: np.ndarray) -> np.ndarray:
    """Put ``box`` (at most 20x20) in a 28x28 field with its centre of mass at the centre, never cut off."""
    field = np.zeros((MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    height, width = box.shape
    com_row, com_col = ndimage.center_of_mass(box) if box.sum() > 0 else (height / 2, width / 2)
    top = min(max(round(MNIST_CENTRE - com_row), 0), MNIST_SIZE - height)
    left = min(max(round(MNIST_CENTRE - com_col), 0), MNIST_SIZE - width)
    field[top:top + height, left:left + width] = box
    return field


# --------------------------------------------------------------------------- OrganAMNIST, CIFAR-10


def fit_to_spec(img: Image.Image, spec: DatasetSpec, source: str = "photo") -> tuple[torch.Tensor, list[str]]:
    """Centre-crop to a square, reduce to the dataset's size (anti-aliased), convert the channels."""
    rgb = flatten_alpha(img)
    low, high = np.percentile(np.asarray(rgb, dtype=np.float32).reshape(-1, 3), [1, 99], axis=0)
    if float((high - low).max()) < 255 * MIN_CONTRAST:
        what = "canvas is blank" if source == "drawing" else "photo is nearly uniform (is the camera covered?)"
        raise BlankImageError(f"The {what}: there is nothing for the model to look at.")
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    target = spec.image_size
    notes = []
    if side != max(width, height):
        notes.append(f"Cropped the {source}'s centre {side}×{side} square out of {width}×{height} px "
                     "(the dataset's images are square; proportions kept).")
    notes.append(f"Resized {side}×{side} to {target}×{target} px (anti-aliased).")
    resample = Image.Resampling.LANCZOS if side > target else Image.Resampling.BILINEAR
    small = square.resize((target, target), resample)
    if spec.channels == 1:
        notes.append(f"Converted to greyscale for the {spec.display_name} models.")
        array = np.asarray(small.convert("L"), dtype=np.float32)[None] / 255.0
    else:
        array = np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)), notes
