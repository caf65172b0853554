"""Write the shipped test samples: real test images as PNG, with an index, under ``assets/samples``.

For every dataset, the first ``--per-class`` test images of each class (in test-split order) are
written to ``assets/samples/{dataset}/{dataset}-test-{index:05d}-{label}.png`` (greyscale for
MNIST and OrganAMNIST, RGB for CIFAR-10), and ``assets/samples/index.json`` lists them in the
format that :func:`qshield_core.data.sample_index` reads. The choice is deterministic, so running
the script again on the same data reproduces the same files.

Usage: ``python scripts/make_samples.py [--per-class 10] [--data-root DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qshield_core.data import ASSETS_DIR, DATASETS, ImageSplit, get_spec, load_split

SAMPLES_DIR = ASSETS_DIR / "samples"
JPEG_NOTE = (
    "The CIFAR-10 samples come from the local JPEG re-encoding of CIFAR-10 (cifar10-jpeg, read in ImageFolder "
    "order: class folders alphabetically, then file names), so their pixels differ slightly from the original "
    "CIFAR-10 test images, and 'index' is the position in that order."
)


def select_indices(labels: torch.Tensor, num_classes: int, per_class: int) -> list[int]:
    """The first ``per_class`` test indices of every class, in split order."""
    chosen: list[int] = []
    for label in range(num_classes):
        hits = torch.nonzero(labels == label).flatten()[:per_class].tolist()
        if len(hits) < per_class:
            raise RuntimeError(f"class {label} has only {len(hits)} test images, {per_class} needed")
        chosen.extend(hits)
    return sorted(chosen)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 (C, H, W) tensor as a greyscale (C = 1) or RGB (C = 3) PIL image."""
    array = image.numpy()
    if array.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(array[0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")


def write_dataset(split: ImageSplit, per_class: int) -> list[dict]:
    """Write one dataset's samples as PNG and return their index entries."""
    spec = get_spec(split.dataset)
    out_dir = SAMPLES_DIR / spec.name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    entries = []
    for index in select_indices(split.labels, spec.num_classes, per_class):
        label = int(split.labels[index])
        name = f"{spec.name}-test-{index:05d}-{label}.png"
        to_pil(split.images[index]).save(out_dir / name, format="PNG", optimize=True)
        entries.append({"file": f"{spec.name}/{name}", "dataset": spec.name, "split": "test",
                        "index": index, "label": label})
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10, help="test images per class (default 10)")
    parser.add_argument("--data-root", default=None, help="data root (default: as qshield_core resolves it)")
    args = parser.parse_args(argv)

    samples: list[dict] = []
    sources: dict[str, str] = {}
    notes = [
        f"The first {args.per_class} test images of each class, in test-split order, written losslessly as PNG "
        "(greyscale for MNIST and OrganAMNIST, RGB for CIFAR-10) by scripts/make_samples.py."
    ]
    for name in DATASETS:
        split = load_split(name, "test", args.data_root)
        samples.extend(write_dataset(split, args.per_class))
        sources[name] = split.source
        if not split.exact:
            notes.append(JPEG_NOTE)
        print(f"{name}: {args.per_class * get_spec(name).num_classes} samples from {split.source}")
    index = {"notes": " ".join(notes), "sources": sources, "samples": samples}
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    (SAMPLES_DIR / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(samples)} samples and {SAMPLES_DIR / 'index.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
