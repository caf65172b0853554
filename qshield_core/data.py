"""Datasets: specifications, the data root, offline-safe loading, checksums and shipped samples.

Every dataset is loaded through its standard loader (``torchvision.datasets.MNIST``,
``medmnist.OrganAMNIST``, ``torchvision.datasets.CIFAR10`` or, for the local JPEG copy of
CIFAR-10, ``torchvision.datasets.ImageFolder``) and then held in memory as ``uint8`` tensors
of shape ``(N, C, H, W)``: the three datasets are small, and augmenting whole batches in torch
is much faster on a 2-core CPU than a per-image ``DataLoader`` pipeline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .hashing import file_digest, files_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "assets"
SAMPLES_INDEX = ASSETS_DIR / "samples" / "index.json"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qshield"

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096


class DataError(RuntimeError):
    """Base class of the data errors; the message is meant for a person."""


class UnknownDatasetError(DataError, ValueError):
    """A dataset name that QShield does not know."""


class DataUnavailableError(DataError):
    """The dataset's files are not where they should be and cannot be downloaded."""


class ImageInputError(DataError, ValueError):
    """An uploaded image that cannot be used (corrupt, too large, not an image)."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of QShield needs to know about one dataset."""

    name: str
    display_name: str
    num_classes: int
    channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    paper_eps: float
    """The paper's L-inf epsilon (fraction of the [0, 1] range)."""
    common_eps: float
    """The epsilon that robustness benchmarks commonly use for this dataset."""
    expected_files: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


ORGAN_CLASSES = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
)
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist", display_name="MNIST", num_classes=10, channels=1, image_size=28,
        class_names=tuple(str(i) for i in range(10)), mean=(0.1307,), std=(0.3081,),
        paper_eps=32 / 255, common_eps=0.3,
        expected_files=("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/train-labels-idx1-ubyte",
                        "MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"),
    ),
    "organamnist": DatasetSpec(
        name="organamnist", display_name="OrganAMNIST", num_classes=11, channels=1, image_size=28,
        class_names=ORGAN_CLASSES, mean=(0.4680,), std=(0.2970,),
        paper_eps=8 / 255, common_eps=8 / 255,
        expected_files=("organamnist.npz",),
    ),
    "cifar10": DatasetSpec(
        name="cifar10", display_name="CIFAR-10", num_classes=10, channels=3, image_size=32,
        class_names=CIFAR_CLASSES, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        paper_eps=2 / 255, common_eps=8 / 255,
        expected_files=("cifar-10-batches-py/ (exact, torchvision)",
                        "or cifar10-jpeg/{train,test}/<class>/NNNN.jpg (JPEG copy)"),
    ),
}

# Checksums published with the local copies (../shared/datasets/README.md).
KNOWN_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "organamnist": "7c8c8b0753e2c0d7f70928817eac02be7cbb09f6beff4346e9d0ea79ecb598bd",
    "cifar10-jpeg": "dd89200ef3ace8900ff1354198dbb556809d3f6279e6ec7f75f21a417e15c9e2",
}


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of ``name``, or raise :class:`UnknownDatasetError` listing valid names."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise UnknownDatasetError(
            f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}."
        )
    return DATASETS[key]


# --------------------------------------------------------------------------- data root


@dataclass(frozen=True)
class DataRoot:
    """Where the data lives, and whether a missing dataset may be downloaded there."""

    path: Path
    allow_download: bool
    origin: str


def resolve_data_root(data_root: str | os.PathLike | None = None) -> DataRoot:
    """``--data-root``, else ``$QSHIELD_DATA_ROOT``, else ``../shared/datasets``, else a cache.

    Only the last (a user cache) allows downloads; an explicit root is read as it is.
    """
    if data_root:
        return DataRoot(Path(data_root).expanduser().resolve(), False, "--data-root")
    env = os.environ.get("QSHIELD_DATA_ROOT")
    if env:
        return DataRoot(Path(env).expanduser().resolve(), False, "QSHIELD_DATA_ROOT")
    for candidate in (REPO_ROOT.parent / "shared" / "datasets", Path.cwd().parent / "shared" / "datasets"):
        if candidate.is_dir():
            return DataRoot(candidate.resolve(), False, "../shared/datasets")
    return DataRoot(CACHE_DIR / "datasets", True, "user cache (downloads allowed)")


# --------------------------------------------------------------------------- loading


@dataclass
class ImageSplit:
    """One split held in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    source: str
    """Which loader and files produced it (e.g. ``torchvision.datasets.MNIST``)."""
    exact: bool
    """False for the JPEG re-encoding of CIFAR-10."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def as_float(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.images.float().div_(255.0)


def _missing(spec: DatasetSpec, root: DataRoot, detail: str = "") -> DataUnavailableError:
    files = "\n  ".join(spec.expected_files)
    hint = "" if root.allow_download else (
        " Set --data-root or QSHIELD_DATA_ROOT to a folder that has them, or unset both "
        "(and move ../shared/datasets away) to download into the user cache."
    )
    extra = f" ({detail})" if detail else ""
    return DataUnavailableError(
        f"{spec.display_name} data not found in {root.path} [{root.origin}]{extra}. "
        f"Expected:\n  {files}\n{hint}".rstrip()
    )


def _load_mnist(spec: DatasetSpec, root: DataRoot, train: bool) -> ImageSplit:
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(root=str(root.path), train=train, download=root.allow_download)
    except (RuntimeError, OSError) as err:
        raise _missing(spec, root, str(err).splitlines()[0]) from None
    images = ds.data.unsqueeze(1).contiguous()
    return ImageSplit("mnist", "train" if train else "test", images, ds.targets.long(),
                      "torchvision.datasets.MNIST (idx files)", True)


def _load_organamnist(spec: DatasetSpec, root: DataRoot, split: str) -> ImageSplit:
    npz = root.path / "organamnist.npz"
    if not npz.is_file() and not root.allow_download:
        raise _missing(spec, root)
    try:
        import medmnist
    except ImportError as err:  # pragma: no cover - medmnist is a hard requirement
        raise DataUnavailableError(f"medmnist is not installed: {err}") from None
    try:
        root.path.mkdir(parents=True, exist_ok=True)
        ds = medmnist.OrganAMNIST(split=split, root=str(root.path), download=root.allow_download)
    except (RuntimeError, OSError, KeyError, ValueError) as err:
        raise _missing(spec, root, str(err).splitlines()[0]) from None
    images = torch.from_numpy(np.ascontiguousarray(ds.imgs)).unsqueeze(1)
    labels = torch.from_numpy(ds.labels.reshape(-1).astype(np.int64))
    return ImageSplit("organamnist", split, images, labels, "medmnist.OrganAMNIST (organamnist.npz)", True)


def _load_cifar_exact(root: DataRoot, train: bool) -> ImageSplit:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root=str(root.path), train=train, download=root.allow_download)
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSplit("cifar10", "train" if train else "test", images,
                      torch.tensor(ds.targets, dtype=torch.long), "torchvision.datasets.CIFAR10", True)


def _load_cifar_jpeg(spec: DatasetSpec, root: DataRoot, split: str) -> ImageSplit:
    """Decode the JPEG copy once through ImageFolder and cache the decoded array."""
    from torchvision.datasets import ImageFolder

    folder = root.path / "cifar10-jpeg" / split
    cache = CACHE_DIR / f"cifar10-jpeg-{split}-{_short_hash(str(folder))}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            images, labels = z["images"], z["labels"]
    else:
        ds = ImageFolder(str(folder))
        if tuple(ds.classes) != spec.class_names:
            raise DataUnavailableError(f"Unexpected class folders in {folder}: {ds.classes}")
        images = np.stack([np.asarray(ds.loader(path).convert("RGB")) for path, _ in ds.samples])
        labels = np.asarray(ds.targets, dtype=np.int64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=images, labels=labels)
    return ImageSplit("cifar10", split, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                      torch.from_numpy(labels), "torchvision.datasets.ImageFolder (cifar10-jpeg, JPEG re-encoding)",
                      False)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def load_split(dataset: str, split: str = "train", data_root: str | os.PathLike | None = None) -> ImageSplit:
    """Load ``split`` ("train", "val" for OrganAMNIST, or "test") of ``dataset`` into memory."""
    spec = get_spec(dataset)
    if split not in ("train", "val", "test") or (split == "val" and spec.name != "organamnist"):
        raise ValueError(f"Unknown split {split!r} for {spec.display_name}.")
    root = resolve_data_root(data_root)
    if spec.name == "mnist":
        return _load_mnist(spec, root, split == "train")
    if spec.name == "organamnist":
        return _load_organamnist(spec, root, split)
    if (root.path / "cifar-10-batches-py").is_dir():
        return _load_cifar_exact(root, split == "train")
    if (root.path / "cifar10-jpeg" / split).is_dir():
        return _load_cifar_jpeg(spec, root, split)
    if root.allow_download:
        return _load_cifar_exact(root, split == "train")
    raise _missing(spec, root)


def dataset_available(dataset: str, data_root: str | os.PathLike | None = None) -> bool:
    """True when the local files for ``dataset`` are present (no download attempted)."""
    spec = get_spec(dataset)
    root = resolve_data_root(data_root).path
    if spec.name == "mnist":
        return all((root / f).is_file() for f in spec.expected_files)
    if spec.name == "organamnist":
        return (root / "organamnist.npz").is_file()
    return (root / "cifar-10-batches-py").is_dir() or (root / "cifar10-jpeg" / "test").is_dir()


# --------------------------------------------------------------------------- checksums




def data_checksum(dataset: str, data_root: str | os.PathLike | None = None) -> dict:
    """Checksum of the data files a model was trained on, and whether it matches the published one."""
    spec = get_spec(dataset)
    root = resolve_data_root(data_root).path
    if spec.name == "mnist":
        values = {f: file_digest(root / "MNIST" / "raw" / f, "md5") for f in KNOWN_CHECKSUMS["mnist"]}
        return {"algorithm": "md5", "files": values, "matches_published": values == KNOWN_CHECKSUMS["mnist"]}
    if spec.name == "organamnist":
        value = file_digest(root / "organamnist.npz", "sha256")
        return {"algorithm": "sha256", "file": "organamnist.npz", "value": value,
                "matches_published": value == KNOWN_CHECKSUMS["organamnist"]}
    if (root / "cifar-10-batches-py").is_dir():
        value = files_digest(sorted((root / "cifar-10-batches-py").glob("*_batch*")))
        return {"algorithm": "sha256", "file": "cifar-10-batches-py/*_batch* (sorted)", "value": value}
    value = files_digest(sorted((root / "cifar10-jpeg").rglob("*.jpg")))
    return {"algorithm": "sha256", "file": "cifar10-jpeg/**/*.jpg concatenated in sorted path order",
            "value": value, "matches_published": value == KNOWN_CHECKSUMS["cifar10-jpeg"]}


# --------------------------------------------------------------------------- shipped samples


@dataclass(frozen=True)
class Sample:
    """One shipped test image (``assets/samples``)."""

    file: str
    dataset: str
    split: str
    index: int
    label: int

    @property
    def path(self) -> Path:
        return ASSETS_DIR / "samples" / self.file


def sample_index() -> list[Sample]:
    """All entries of ``assets/samples/index.json``."""
    if not SAMPLES_INDEX.is_file():
        raise DataUnavailableError(f"Sample index missing: {SAMPLES_INDEX}")
    entries = json.loads(SAMPLES_INDEX.read_text())["samples"]
    return [Sample(**e) for e in entries]


def list_samples(dataset: str) -> list[Sample]:
    """The shipped samples of one dataset, in index order."""
    spec = get_spec(dataset)
    return [s for s in sample_index() if s.dataset == spec.name]


def load_sample_image(sample: Sample) -> torch.Tensor:
    """A shipped sample as float32 (C, H, W) in [0, 1]."""
    spec = get_spec(sample.dataset)
    with Image.open(sample.path) as img:
        return pil_to_tensor(img, spec)


def load_samples(dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All shipped samples of ``dataset``: images (N, C, H, W) in [0, 1] and labels (N,)."""
    samples = list_samples(dataset)
    images = torch.stack([load_sample_image(s) for s in samples])
    return images, torch.tensor([s.label for s in samples], dtype=torch.long)


def pil_to_tensor(img: Image.Image, spec: DatasetSpec) -> torch.Tensor:
    """Convert an image of the right size and mode to float32 (C, H, W) in [0, 1]."""
    mode = "L" if spec.channels == 1 else "RGB"
    if img.mode == "F":  # float greyscale in [0, 1] (see prepare_upload for 16-bit images)
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        array = grey if spec.channels == 1 else np.repeat(grey[..., None], 3, axis=-1)
    else:
        array = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass
class PreparedImage:
    """An upload turned into a model input, with what was changed on the way."""

    tensor: torch.Tensor
    notes: list[str]


def prepare_upload(data: bytes, dataset: str) -> PreparedImage:
    """Validate and convert uploaded bytes into a (C, H, W) input for ``dataset``.

    Raises :class:`ImageInputError` with a message for the user when the file is too big, not
    an image, corrupt, or absurdly large in pixels. Colour/greyscale mismatches and sizes are
    converted, and each conversion is reported in ``notes``.
    """
    spec = get_spec(dataset)
    img, fmt = open_image(data)
    return _conform(img, spec, fmt)


def open_image(data: bytes) -> tuple[Image.Image, str | None]:
    """Validate image bytes (uploads, drawings, camera shots) and decode them: (loaded image, format).

    Raises :class:`ImageInputError` with a message for the user when the bytes are empty, over
    :data:`MAX_UPLOAD_BYTES`, over :data:`MAX_UPLOAD_PIXELS`, or not a readable image.
    """
    if len(data) == 0:
        raise ImageInputError("The uploaded file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageInputError(
            f"The file is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB."
        )
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            fmt = probe.format
            if width * height > MAX_UPLOAD_PIXELS:
                raise ImageInputError(
                    f"The image is {width}x{height} pixels; the limit is {MAX_UPLOAD_PIXELS:,} pixels."
                )
            probe.verify()
        img = Image.open(io.BytesIO(data))
        img.load()
        return img, fmt
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageInputError(f"This file is not a readable PNG or JPEG image ({err}).") from None


def _conform(img: Image.Image, spec: DatasetSpec, fmt: str | None) -> PreparedImage:
    notes: list[str] = []
    if img.mode.startswith("I"):  # 16-bit greyscale (e.g. medical PNGs): rescale to a float image
        img = Image.fromarray(np.asarray(img, dtype=np.float32) / 65535.0, mode="F")
        notes.append("Rescaled the 16-bit greyscale image to [0, 1].")
    if fmt not in ("PNG", "JPEG"):
        notes.append(f"Read a {fmt} image; PNG and JPEG are the supported formats.")
    is_colour = img.mode not in ("L", "1", "I", "I;16", "F", "LA")
    if spec.channels == 1 and is_colour:
        notes.append(f"Converted the colour image to greyscale for the {spec.display_name} models.")
    elif spec.channels == 3 and not is_colour:
        notes.append(f"Repeated the greyscale image over 3 channels for the {spec.display_name} models.")
    size = (spec.image_size, spec.image_size)
    if img.size != size:
        notes.append(f"Resized from {img.size[0]}x{img.size[1]} to {size[0]}x{size[1]} pixels.")
        img = img if img.mode == "F" else img.convert("RGB" if is_colour else "L")
        img = img.resize(size, Image.Resampling.BILINEAR)
    return PreparedImage(pil_to_tensor(img, spec), notes)
