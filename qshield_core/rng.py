"""Random state for seeded computations that many threads run at once.

The app serves several people from threads of one process, and two identical requests must give
identical results whatever else runs. Two rules make that hold:

- Code of this project draws from an explicit :class:`torch.Generator`: the paper mode's random
  projection asks :func:`generator` for the one of the seeded scope it runs in.
- Libraries that insist on the process-wide generators (torchattacks' random starts and its
  ``torch.manual_seed`` calls, NumPy's global state in One-Pixel's differential evolution) run
  inside :func:`seeded`: one process-wide re-entrant lock, and the global torch, NumPy and Python
  generators forked (saved, seeded, restored afterwards), so no other thread draws from them or
  re-seeds them meanwhile.

Example::

    >>> with seeded(7) as gen:
    ...     noise = torch.randn(3, generator=gen)
    ...     adv = attack(images, labels)      # torchattacks draws from the (forked, locked) global generator
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import torch

_LOCK = threading.RLock()
_CURRENT: ContextVar[torch.Generator | None] = ContextVar("qshield_generator", default=None)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """A seeded scope: holds the process-wide RNG lock, forks and seeds the global torch, NumPy and
    Python generators with ``seed``, and makes a fresh ``torch.Generator`` seeded with ``seed`` the
    one :func:`generator` returns. Everything is restored on exit; scopes nest in one thread."""
    seed = int(seed)
    with _LOCK, torch.random.fork_rng(devices=[]):
        numpy_state, python_state = np.random.get_state(), random.getstate()
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        gen = torch.Generator().manual_seed(seed)
        token = _CURRENT.set(gen)
        try:
            yield gen
        finally:
            _CURRENT.reset(token)
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def generator() -> torch.Generator | None:
    """The generator of the innermost :func:`seeded` scope of this thread (None outside any scope,
    where callers draw fresh, unseeded randomness)."""
    return _CURRENT.get()


def generator_or_fresh() -> torch.Generator:
    """The innermost scope's generator, or outside any scope a fresh one seeded from the operating
    system's entropy: for code that must never draw from (or disturb) torch's global generator."""
    gen = _CURRENT.get()
    if gen is None:
        gen = torch.Generator()
        gen.seed()
    return gen


def in_seeded_scope() -> bool:
    return _CURRENT.get() is not None


__all__ = ["generator", "generator_or_fresh", "in_seeded_scope", "seeded"]
