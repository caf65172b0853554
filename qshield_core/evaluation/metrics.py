"""Metrics of an attacked set of points, their 95 % intervals, and the per-point bit strings.

Definitions (the paper's, made explicit):

- clean accuracy: share of the n points the model classifies correctly;
- robust accuracy: share of the n points classified correctly both before and after the attack;
- attack success rate (ASR): among the points classified correctly before the attack, the share
  misclassified after it (so robust accuracy = clean accuracy x (1 - ASR));
- 95 % Wilson score intervals for all three (Wilson 1927; Newcombe 1998's formulation, the one
  ``scipy.stats.binomtest(...).proportion_ci(method="wilson")`` implements, written out here so that the app's
  first page does not import ``scipy.stats``: about 1.5 s of its start; its ``ndtri`` is imported on the first
  interval, since the first page draws none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}.")
    from scipy.special import ndtri  # not at the top: scipy.special is 0.3-0.6 s of the app's start

    z = float(ndtri(0.5 + 0.5 * confidence))
    p = successes / trials
    denom = 2 * (trials + z**2)
    center = (2 * trials * p + z**2) / denom
    delta = z / denom * math.sqrt(4 * trials * p * (1 - p) + z**2)
    low = 0.0 if successes == 0 else center - delta
    high = 1.0 if successes == trials else center + delta
    return (max(0.0, low), min(1.0, high))


def difference_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10, 1998) for the difference of two independent
    proportions, a - b, built from their Wilson intervals."""
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    (low_a, high_a), (low_b, high_b) = (wilson_interval(successes_a, trials_a, confidence),
                                        wilson_interval(successes_b, trials_b, confidence))
    d = p_a - p_b
    return (d - math.hypot(p_a - low_a, high_b - p_b), d + math.hypot(high_a - p_a, p_b - low_b))


def paired_table(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int, int]:
    """The 2x2 table of two outcomes on the same points, as :func:`paired_difference_interval` takes it: points
    where a and b succeed, a only, b only, neither."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"Paired outcomes need the same points, got {a.shape} and {b.shape}.")
    return int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for the difference of two proportions measured on the same points
    (his method 10, 1998b), a - b: the Wilson intervals of both, combined with the correction ``phi`` for the
    correlation of the paired outcomes (``ad - bc`` shrunk towards 0 by n/2 when positive). The four counts
    are the 2x2 table: points where a and b succeed, a only, b only, neither."""
    counts = (both, only_a, only_b, neither)
    if min(counts) < 0:
        raise ValueError(f"Paired counts must be non-negative, got {counts}.")
    n = sum(counts)
    if n == 0:
        return (-1.0, 1.0)
    k_a, k_b = both + only_a, both + only_b
    p_a, p_b = k_a / n, k_b / n
    (low_a, high_a), (low_b, high_b) = wilson_interval(k_a, n, confidence), wilson_interval(k_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    shrunk = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = shrunk / math.sqrt(margins) if margins > 0 else 0.0
    d = p_a - p_b
    lower = math.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2))
    upper = math.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2))
    return (max(-1.0, d - lower), min(1.0, d + upper))


def attack_metrics(labels: torch.Tensor, clean_pred: torch.Tensor, adv_pred: torch.Tensor | None = None) -> dict:
    """Clean accuracy, robust accuracy and ASR (see the module docstring) with Wilson intervals."""
    labels, clean_pred = torch.as_tensor(labels), torch.as_tensor(clean_pred)
    n = int(labels.numel())
    correct = clean_pred == labels
    k_clean = int(correct.sum())
    out = {"n": n, "n_clean_correct": k_clean, "clean_accuracy": k_clean / n if n else float("nan"),
           "clean_accuracy_ci": list(wilson_interval(k_clean, n))}
    if adv_pred is None:
        return out
    robust = correct & (torch.as_tensor(adv_pred) == labels)
    k_robust = int(robust.sum())
    k_fooled = k_clean - k_robust
    out.update({
        "n_robust": k_robust, "n_fooled": k_fooled,
        "robust_accuracy": k_robust / n if n else float("nan"),
        "robust_accuracy_ci": list(wilson_interval(k_robust, n)),
        "asr": k_fooled / k_clean if k_clean else None,
        "asr_ci": list(wilson_interval(k_fooled, k_clean)) if k_clean else None,
    })
    return out


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, minimum and maximum of a few repeated measurements."""
    arr = np.asarray(values, dtype=float)
    return {"values": [float(v) for v in arr], "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "min": float(arr.min()), "max": float(arr.max())}


def perturbation_norms(images: torch.Tensor, adv_images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L-inf and L2 norms of the perturbation and the number of pixels changed (L0)."""
    delta = (adv_images - images).flatten(1)
    changed = (adv_images != images).any(dim=1).flatten(1).sum(1)
    return {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l0_pixels": changed}


def pack_bits(mask: torch.Tensor | np.ndarray) -> str:
    """A boolean vector as the hex string the records store (``per_point``)."""
    array = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return np.packbits(array.astype(np.uint8)).tobytes().hex()


def unpack_bits(hex_text: str, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a boolean vector."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hex_text), dtype=np.uint8))[:n].astype(bool)


def format_percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals ("n/a" when missing)."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def format_interval(ci: Sequence[float] | None) -> str:
    """A 95 % interval as "[lo, hi]" in percent ("" when missing)."""
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
