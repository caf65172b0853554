"""The one-node hybrid head (:class:`~qshield_core.fusion_ops.HybridHead`) compiled with Numba.

On one image the head after the CNN (encoder, product-state circuit, the paper's seven statistics, the
fusion MLP, the amplitude fusion) is some 150 NumPy operations on ten numbers: each costs a microsecond of
interpreter and dispatch, so the head cost a third of the small MNIST CNN's forward and backward pass,
and an attack on one image timed Python, not the model (issue 11, item 6). Here the same formulas, in
the same order, run as one compiled loop per image: :func:`head_forward` and :func:`head_backward` (which
recomputes the forward's intermediates, a few thousand multiply-adds, rather than passing them through
Python). They equal the NumPy formulas of :mod:`qshield_core.fusion_ops` to float rounding
(tests/test_fast_path.py: against the stage-by-stage path, values and gradients).

The MLP runs in its weights' precision, as the reference does. Compiled once per machine (``cache=True``:
the machine code is kept beside this file in ``__pycache__``); :func:`qshield_core.lab.warm_up` triggers
it when the app loads a model.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numba import njit

from .fusion_ops import (
    ALPHA_MAX,
    ALPHA_MIN,
    CLASS_NORM_FLOOR,
    LOG_FLOOR,
    NORM_FLOOR,
    PROB_FLOOR,
    PROJECTION_STD_FLOOR,
    VAR_FLOOR,
    FusedHead,
)
from .fusion_ops import LINEAR_CODE as LINEAR
from .fusion_ops import SIGMOID_CODE as SIGMOID

_TINY64 = np.finfo(np.float64).tiny


@njit(cache=True)
def _encode(f, projection, centred, t):
    """Fills ``centred`` (C) and ``t`` = tanh(standardised f @ projection) (3n); returns (std, denominator)."""
    c = f.shape[0]
    mean = 0.0
    for i in range(c):
        mean += f[i]
    mean /= c
    total = 0.0
    for i in range(c):
        centred[i] = f[i] - mean
        total += centred[i] * centred[i]
    std = math.sqrt(total * (1.0 / c))
    denominator = std + PROJECTION_STD_FLOOR
    for k in range(t.shape[0]):
        s = 0.0
        for i in range(c):
            s += (centred[i] / denominator) * projection[i, k]
        t[k] = math.tanh(s)
    return std, denominator


@njit(cache=True)
def _bloch(t, cos, sin, vectors):
    """Each qubit's (1, x, y, z) after RZ(c) RY(b) RX(a)|0>, the angles pi t (simulator.bloch_vectors)."""
    for w in range(vectors.shape[0]):
        for j in range(3):
            angle = t[3 * w + j] * math.pi
            cos[w, j] = math.cos(angle)
            sin[w, j] = math.sin(angle)
        ca, cb, cc = cos[w, 0], cos[w, 1], cos[w, 2]
        sa, sb, sc = sin[w, 0], sin[w, 1], sin[w, 2]
        u = ca * sb
        vectors[w, 0] = 1.0
        vectors[w, 1] = u * cc + sa * sc
        vectors[w, 2] = u * sc - sa * cc
        vectors[w, 3] = ca * cb


@njit(cache=True)
def _kron(vectors, products):
    """products[w, :4^(w+1)] = vectors[0] (x) ... (x) vectors[w] (simulator.kron_rows)."""
    for j in range(4):
        products[0, j] = vectors[0, j]
    size = 4
    for w in range(1, vectors.shape[0]):
        for i in range(size):
            for j in range(4):
                products[w, i * 4 + j] = products[w - 1, i] * vectors[w, j]
        size *= 4


@njit(cache=True)
def _moments(x, centred, squares):
    """One branch of the statistics: fills ``centred`` and ``squares``; returns (sum of squares, var, floored var,
    std, kurtosis, max, index of the first max)."""
    n = x.shape[0]
    mean = 0.0
    for i in range(n):
        mean += x[i]
    mean /= n
    sums, fourth, top, where = 0.0, 0.0, x[0], 0
    for i in range(n):
        centred[i] = x[i] - mean
        squares[i] = centred[i] * centred[i]
        sums += squares[i]
        fourth += squares[i] * squares[i]
        if x[i] > top:
            top, where = x[i], i
    var = sums * (1.0 / n)
    floored = max(var, VAR_FLOOR)
    return sums, var, floored, math.sqrt(floored), fourth / (floored * floored * n), top, where


@njit(cache=True)
def _mlp(stats, weights, biases, codes, saved):
    """The folded MLP on the 7 statistics in its weights' precision; ``saved[l]`` keeps each layer's activation
    derivative (leaky ReLU) or output (sigmoid). Returns alpha (float64)."""
    dtype = weights[0].dtype
    x = stats.astype(dtype)
    for layer in range(len(weights)):
        weight, bias, code = weights[layer], biases[layer], codes[layer]
        acc = np.zeros(weight.shape[1])  # float64 sums: each output correctly rounded to the weights' precision
        for i in range(weight.shape[0]):
            for o in range(weight.shape[1]):
                acc[o] += x[i] * weight[i, o]
        h = np.empty(weight.shape[1], dtype=dtype)
        for o in range(weight.shape[1]):
            h[o] = acc[o]
            h[o] += bias[o]
        out = saved[layer]
        for o in range(h.shape[0]):
            if code == SIGMOID:
                out[o] = math.tanh(h[o] * 0.5) * 0.5 + 0.5
                h[o] = out[o]
            elif code != LINEAR:
                out[o] = 1.0 if h[o] > 0 else code
                h[o] = h[o] * out[o]
        x = h
    return float(x[0])


@njit(cache=True)
def _sample(f, projection, transfer, weights, biases, codes, n_qubits, grad, through_quantum, log_probs, g_f):
    """One image: fills ``log_probs`` (C) and, when ``grad`` has rows, ``g_f`` (the logits' gradient)."""
    c = f.shape[0]
    centred = np.empty(c)
    t = np.empty(3 * n_qubits)
    std, denominator = _encode(f, projection, centred, t)
    cos, sin = np.empty((n_qubits, 3)), np.empty((n_qubits, 3))
    vectors = np.empty((n_qubits, 4))
    _bloch(t, cos, sin, vectors)
    products = np.zeros((n_qubits, 4 ** n_qubits))
    _kron(vectors, products)
    full = products[n_qubits - 1]
    kept = np.zeros(c)
    for k in range(full.shape[0]):
        for j in range(c):
            kept[j] += full[k] * transfer[k, j]
    total = 0.0
    for j in range(c):
        total += kept[j]
    quantum, floored, log_q = np.empty(c), np.empty(c), np.empty(c)
    for j in range(c):
        quantum[j] = kept[j] / max(total, CLASS_NORM_FLOOR)
        floored[j] = max(quantum[j], LOG_FLOOR)
        log_q[j] = math.log(floored[j])
    c0, s0, c1, s1 = np.empty(c), np.empty(c), np.empty(c), np.empty(c)
    sums0, var0, fl0, std0, kurt0, top0, arg0 = _moments(f, c0, s0)
    sums1, var1, fl1, std1, kurt1, top1, arg1 = _moments(log_q, c1, s1)
    norm0, norm1 = math.sqrt(sums0), math.sqrt(sums1)
    product = norm0 * norm1
    corr_den = max(product, NORM_FLOOR)
    cross = 0.0
    for i in range(c):
        cross += c0[i] * c1[i]
    corr = cross / corr_den
    stats = np.array([std0, std1, top0, top1, kurt0, kurt1, corr])
    width = 0
    for w in weights:
        width = max(width, w.shape[1])
    saved = np.empty((len(weights), width), dtype=weights[0].dtype)
    alpha = _mlp(stats, weights, biases, codes, saved)
    a = min(max(alpha, ALPHA_MIN), ALPHA_MAX)
    soft, root_cnn, root_q, amplitude, probs = np.empty(c), np.empty(c), np.empty(c), np.empty(c), np.empty(c)
    exp_total = 0.0
    for j in range(c):
        soft[j] = math.exp(f[j] - top0)
        exp_total += soft[j]
    complement = math.sqrt(1 - a * a)
    fused_total = 0.0
    for j in range(c):
        soft[j] /= exp_total
        root_cnn[j] = math.sqrt(max(soft[j], PROB_FLOOR))
        root_q[j] = math.sqrt(max(quantum[j], PROB_FLOOR))
        amplitude[j] = a * root_cnn[j] + complement * root_q[j]
        fused_total += amplitude[j] * amplitude[j]
    for j in range(c):
        probs[j] = amplitude[j] * amplitude[j] / fused_total
        log_probs[j] = math.log(max(probs[j], PROB_FLOOR))
    if grad.shape[0] == 0:
        return
    # the fusion (fusion_ops._fuse_grad)
    g_probs = np.empty(c)
    dot = 0.0
    for j in range(c):
        g_probs[j] = grad[j] / max(probs[j], PROB_FLOOR) if probs[j] >= PROB_FLOOR else 0.0
        dot += g_probs[j] * probs[j]
    g_amp, g_soft = np.empty(c), np.empty(c)
    soft_dot, g_a = 0.0, 0.0
    for j in range(c):
        g_amp[j] = (2 * amplitude[j] / fused_total) * (g_probs[j] - dot)
        g_soft[j] = a * g_amp[j] / (2 * root_cnn[j]) if soft[j] >= PROB_FLOOR else 0.0
        soft_dot += g_soft[j] * soft[j]
        g_a += g_amp[j] * (root_cnn[j] - a / complement * root_q[j])
    g_q = np.zeros(c)
    for j in range(c):
        g_f[j] = soft[j] * (g_soft[j] - soft_dot)
        if through_quantum and quantum[j] >= PROB_FLOOR:
            g_q[j] = complement * g_amp[j] / (2 * root_q[j])
    g_alpha = g_a if ALPHA_MIN <= alpha <= ALPHA_MAX else 0.0
    # the MLP (fusion_ops._mlp_backward), in its weights' precision
    g = np.full(1, g_alpha).astype(weights[0].dtype)
    for layer in range(len(weights) - 1, -1, -1):
        weight, code, out = weights[layer], codes[layer], saved[layer]
        for o in range(g.shape[0]):
            if code == SIGMOID:
                g[o] = g[o] * (out[o] - out[o] * out[o])
            elif code != LINEAR:
                g[o] = g[o] * out[o]
        acc = np.zeros(weight.shape[0])
        for i in range(weight.shape[0]):
            for o in range(weight.shape[1]):
                acc[i] += g[o] * weight[i, o]
        g = acc.astype(weight.dtype)
    g_stats = g.astype(np.float64)
    # the statistics (fusion_ops._statistics_grad), both branches
    g_sum = g_stats[6] / corr_den
    g_product = -g_stats[6] * corr / corr_den if product >= NORM_FLOOR else 0.0
    g_norm0 = g_product * norm1 / max(norm0, _TINY64)
    g_norm1 = g_product * norm0 / max(norm1, _TINY64)
    g_var0 = g_stats[0] / (2 * std0) - 2 * g_stats[4] * kurt0 / fl0 if var0 >= VAR_FLOOR else 0.0
    g_var1 = g_stats[1] / (2 * std1) - 2 * g_stats[5] * kurt1 / fl1 if var1 >= VAR_FLOOR else 0.0
    k0, k1 = g_stats[4] * (4 / c) / (fl0 * fl0), g_stats[5] * (4 / c) / (fl1 * fl1)
    gc0, gc1 = np.empty(c), np.empty(c)
    mean0, mean1 = 0.0, 0.0
    for i in range(c):
        gc0[i] = c1[i] * g_sum + c0[i] * ((g_var0 * (2 / c) + g_norm0) + s0[i] * k0)
        gc1[i] = c0[i] * g_sum + c1[i] * ((g_var1 * (2 / c) + g_norm1) + s1[i] * k1)
        mean0 += gc0[i]
        mean1 += gc1[i]
    mean0, mean1 = mean0 / c, mean1 / c
    for i in range(c):
        g_f[i] += gc0[i] - mean0 + (g_stats[2] if i == arg0 else 0.0)
    if not through_quantum:
        return
    # the quantum branch: log floor, renormalisation, circuit, encoder
    q_dot = 0.0
    for j in range(c):
        g_x1 = gc1[j] - mean1 + (g_stats[3] if j == arg1 else 0.0)
        if quantum[j] >= LOG_FLOOR:
            g_q[j] += g_x1 / floored[j]
        q_dot += g_q[j] * quantum[j]
    if total < CLASS_NORM_FLOOR:
        q_dot = 0.0
    floored_total = max(total, CLASS_NORM_FLOOR)
    g_full = np.zeros(full.shape[0])
    for k in range(full.shape[0]):
        for j in range(c):
            g_full[k] += transfer[k, j] * ((g_q[j] - q_dot) / floored_total)
    g_vectors = np.empty((n_qubits, 4))
    size = full.shape[0]
    g_cur = g_full
    for w in range(n_qubits - 1, 0, -1):
        size //= 4
        nxt = np.zeros(size)
        for j in range(4):
            g_vectors[w, j] = 0.0
        for i in range(size):
            for j in range(4):
                g_vectors[w, j] += products[w - 1, i] * g_cur[i * 4 + j]
                nxt[i] += g_cur[i * 4 + j] * vectors[w, j]
        g_cur = nxt
    for j in range(4):
        g_vectors[0, j] = g_cur[j]
    g_t = np.empty(3 * n_qubits)
    for w in range(n_qubits):
        r_x, r_y, r_z = vectors[w, 1], vectors[w, 2], vectors[w, 3]
        g_x, g_y, g_z = g_vectors[w, 1], g_vectors[w, 2], g_vectors[w, 3]
        w_x, w_y, w_z = r_y * g_z - r_z * g_y, r_z * g_x - r_x * g_z, r_x * g_y - r_y * g_x
        cb, cc, sb, sc = cos[w, 1], cos[w, 2], sin[w, 1], sin[w, 2]
        angle_grads = (cb * (cc * w_x + sc * w_y) - sb * w_z, cc * w_y - sc * w_x, w_z)
        for j in range(3):
            tk = t[3 * w + j]
            g_t[3 * w + j] = angle_grads[j] * (math.pi - math.pi * tk * tk)
    g_std_dot = 0.0
    g_standardised = np.empty(c)
    for i in range(c):
        s = 0.0
        for k in range(g_t.shape[0]):
            s += g_t[k] * projection[i, k]
        g_standardised[i] = s / denominator
        g_std_dot += g_standardised[i] * centred[i]
    g_std = g_std_dot / (denominator * std * -c)
    mean = 0.0
    for i in range(c):
        mean += g_standardised[i] + g_std * centred[i]
    mean /= c
    for i in range(c):
        g_f[i] += g_standardised[i] + g_std * centred[i] - mean


@njit(cache=True)
def _batch(features, projection, transfer, weights, biases, codes, n_qubits, grad, through_quantum, log_probs,
           g_features):
    empty = np.empty(0)
    for b in range(features.shape[0]):
        row_grad = grad[b] if grad.shape[0] else empty
        _sample(features[b], projection, transfer, weights, biases, codes, n_qubits, row_grad, through_quantum,
                log_probs[b], g_features[b])


def _n_qubits(head: FusedHead) -> int:
    return head.projection[0].shape[1] // 3


def head_forward(features: np.ndarray, head: FusedHead, projection: np.ndarray) -> np.ndarray:
    """The hybrid's log-probabilities (B, C) from its CNN's float64 logits (fusion_ops._head_forward's values)."""
    log_probs = np.empty_like(features)
    _batch(features, projection, head.transfer, *head.kernel, _n_qubits(head), np.empty((0, 0)), False, log_probs,
           np.empty_like(features))
    return log_probs


def head_backward(features: np.ndarray, grad: np.ndarray, head: FusedHead, projection: np.ndarray,
                  through_quantum: bool) -> np.ndarray:
    """The logits' gradient from the log-probabilities' ``grad``; with ``through_quantum`` False the quantum
    probabilities count as constants (the paper mode)."""
    g_features = np.zeros_like(features)
    _batch(features, projection, head.transfer, *head.kernel, _n_qubits(head), np.ascontiguousarray(grad),
           through_quantum, np.empty_like(features), g_features)
    return g_features


def precompile(dtypes: tuple = (np.float32, np.float64), n_layers: int = 4) -> None:
    """Compile (or load from the cache) the kernels for MLPs of these weight precisions: ``make setup`` runs it, so
    that the app's first attack does not wait for the compiler."""
    from .fusion_ops import FoldedLayer, kernel_layers

    rng = np.random.default_rng(0)
    c, n_qubits = 10, 4
    features = rng.normal(size=(1, c))
    for dtype in dtypes:
        widths = [7] + [8] * (n_layers - 1) + [1]
        activations = [0.2] * (n_layers - 1) + ["sigmoid"]
        layers = tuple(FoldedLayer(rng.normal(size=(a, b)).astype(dtype), np.zeros(b, dtype), act)
                       for (a, b), act in zip(itertools.pairwise(widths), activations, strict=True))
        projection = rng.normal(size=(c, 3 * n_qubits))
        head = FusedHead((projection, projection.T.copy()), rng.random((4 ** n_qubits, c)), np.eye(c) - 1 / c,
                         layers, kernel_layers(layers))
        head_backward(features, np.ones_like(features), head, projection, True)
        head_forward(features, head, projection)


if __name__ == "__main__":
    precompile()
