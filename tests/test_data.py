"""Datasets: specs, loaders on the local data (skipped when absent), checksums, shipped samples, uploads."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import DATASET_NAMES, require_dataset, require_samples
from PIL import Image

from qshield_core.data import (
    DATASETS,
    KNOWN_CHECKSUMS,
    MAX_UPLOAD_PIXELS,
    SAMPLES_INDEX,
    DataError,
    DataUnavailableError,
    ImageInputError,
    UnknownDatasetError,
    data_checksum,
    get_spec,
    list_samples,
    load_samples,
    load_split,
    prepare_upload,
    sample_index,
)

# --------------------------------------------------------------------------- specs


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(UnknownDatasetError) as info:
        get_spec("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    assert all(name in message for name in DATASETS)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("alias, name", [("MNIST", "mnist"), ("organ-a-mnist", "organamnist"), ("CIFAR_10", "cifar10")])
def test_spec_aliases(alias, name):
    assert get_spec(alias).name == name


def test_specs_match_the_datasets():
    assert [(s.num_classes, s.input_shape) for s in DATASETS.values()] == [
        (10, (1, 28, 28)), (11, (1, 28, 28)), (10, (3, 32, 32))]
    assert all(len(s.class_names) == s.num_classes for s in DATASETS.values())
    assert get_spec("mnist").paper_eps == pytest.approx(32 / 255)


# --------------------------------------------------------------------------- local data

SPLIT_SIZES = {
    ("mnist", "train"): 60000, ("mnist", "test"): 10000,
    ("organamnist", "train"): 34561, ("organamnist", "val"): 6491, ("organamnist", "test"): 17778,
    ("cifar10", "train"): 50000, ("cifar10", "test"): 10000,
}


@pytest.mark.parametrize("dataset, split", list(SPLIT_SIZES))
def test_local_split_sizes_shapes_and_labels(dataset, split):
    require_dataset(dataset)
    spec = get_spec(dataset)
    data = load_split(dataset, split)
    n = SPLIT_SIZES[(dataset, split)]
    assert len(data) == n
    assert data.images.shape == (n, *spec.input_shape) and data.images.dtype == torch.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
    counts = torch.bincount(data.labels, minlength=spec.num_classes)
    assert counts.numel() == spec.num_classes and bool((counts > 0).all())
    assert int(data.images.max()) > 200  # real images, not an all-black placeholder
    assert data.exact == (dataset != "cifar10" or "JPEG" not in data.source)


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_missing_data_names_the_folder_and_files(dataset, tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_split(dataset, "test", data_root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert get_spec(dataset).expected_files[0] in message


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="val"):
        load_split("mnist", "val")


def test_mnist_checksums_match_published():
    require_dataset("mnist")
    result = data_checksum("mnist")
    assert result["files"] == KNOWN_CHECKSUMS["mnist"]
    assert result["matches_published"] is True


def test_organamnist_checksum_matches_published():
    require_dataset("organamnist")
    assert data_checksum("organamnist")["matches_published"] is True


@pytest.mark.slow
def test_cifar10_jpeg_checksum_matches_published():
    require_dataset("cifar10")
    result = data_checksum("cifar10")
    if "matches_published" not in result:
        pytest.skip("exact CIFAR-10 files present; the published hash is for the JPEG copy")
    assert result["matches_published"] is True


# --------------------------------------------------------------------------- shipped samples


def test_sample_index_format():
    require_samples()
    raw = json.loads(SAMPLES_INDEX.read_text())
    assert "JPEG" in raw["notes"]
    entries = sample_index()
    assert len({e.file for e in entries}) == len(entries)
    for entry in entries:
        assert entry.split == "test"
        assert entry.path.is_file(), entry.file
        assert entry.file == f"{entry.dataset}/{entry.dataset}-test-{entry.index:05d}-{entry.label}.png"


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_shipped_samples_load(dataset):
    require_samples()
    spec = get_spec(dataset)
    images, labels = load_samples(dataset)
    assert images.shape == (len(labels), *spec.input_shape) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0 and float(images.max()) > 0.5
    counts = torch.bincount(labels, minlength=spec.num_classes)
    assert counts.numel() == spec.num_classes and int(counts.min()) >= 10
    with Image.open(list_samples(dataset)[0].path) as img:
        assert img.format == "PNG" and img.mode == ("L" if spec.channels == 1 else "RGB")


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_shipped_samples_equal_the_test_split(dataset):
    require_samples()
    require_dataset(dataset)
    test = load_split(dataset, "test")
    images, labels = load_samples(dataset)
    index = torch.tensor([s.index for s in list_samples(dataset)])
    assert torch.equal(labels, test.labels[index])
    assert torch.equal((images * 255).round().to(torch.uint8), test.images[index])


# --------------------------------------------------------------------------- uploads


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def grey_digit(size: int = 28) -> Image.Image:
    array = np.zeros((size, size), dtype=np.uint8)
    array[size // 4: 3 * size // 4, size // 2 - 2: size // 2 + 2] = 255
    return Image.fromarray(array, mode="L")


def png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = encode(Image.new("L", (8, 8)))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def test_upload_of_the_right_kind_is_unchanged():
    prepared = prepare_upload(encode(grey_digit()), "mnist")
    assert prepared.notes == []
    assert prepared.tensor.shape == (1, 28, 28)
    assert torch.equal(prepared.tensor[0], torch.from_numpy(np.asarray(grey_digit())).float() / 255)


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"just some text, not an image\n" * 10, "not a readable"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a readable"),
])
def test_unusable_uploads_are_refused(data, match):
    with pytest.raises(ImageInputError, match=match):
        prepare_upload(data, "mnist")


def test_truncated_png_is_refused():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    with pytest.raises(ImageInputError):
        prepare_upload(data[: len(data) // 2], "mnist")


def test_image_over_the_pixel_limit_is_refused():
    side = int(MAX_UPLOAD_PIXELS**0.5) + 1
    data = encode(Image.new("L", (side, side)))
    with pytest.raises(ImageInputError, match="pixels"):
        prepare_upload(data, "mnist")


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(ImageInputError, match="pixels"):
        prepare_upload(png_with_header_size(100_000, 100_000), "cifar10")


def test_colour_upload_for_greyscale_is_converted_with_a_note():
    colour = Image.merge("RGB", [grey_digit()] * 3)
    prepared = prepare_upload(encode(colour), "organamnist")
    assert prepared.tensor.shape == (1, 28, 28)
    assert any("greyscale" in note for note in prepared.notes)
    expected = torch.from_numpy(np.asarray(grey_digit())).float() / 255
    assert torch.allclose(prepared.tensor[0], expected, atol=1 / 255)


def test_greyscale_upload_for_colour_is_converted_with_a_note():
    prepared = prepare_upload(encode(grey_digit(32)), "cifar10")
    assert prepared.tensor.shape == (3, 32, 32)
    assert any("3 channels" in note for note in prepared.notes)
    assert torch.equal(prepared.tensor[0], prepared.tensor[1]) and torch.equal(prepared.tensor[1], prepared.tensor[2])


@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_wrong_size_is_resized_with_a_note(dataset):
    spec = get_spec(dataset)
    prepared = prepare_upload(encode(grey_digit(100).convert("RGB"), "JPEG"), dataset)
    assert prepared.tensor.shape == spec.input_shape
    assert any("Resized from 100x100" in note for note in prepared.notes)
    assert float(prepared.tensor.min()) >= 0.0 and float(prepared.tensor.max()) <= 1.0
