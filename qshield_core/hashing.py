"""File checksums: the one helper that the data checks, the model zoo and training use."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of one file, read in 1 MiB blocks."""
    return files_digest([path], algorithm)


def files_digest(paths: Iterable[Path], algorithm: str = "sha256") -> str:
    """The hex digest of several files' bytes concatenated in the given order."""
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()
