"""The dynamic fusion's stages as single autograd nodes whose backward passes are written out.

The fusion rule is the paper's (QShield, Azimi et al., arXiv 2604.10933): seven statistics of
the CNN logits and of the quantum log-probabilities feed an MLP that gives alpha, and the output is
normalise((alpha sqrt(p_cnn) + sqrt(1 - alpha^2) sqrt(p_quantum))^2). On one image each stage is a
few dozen operations on ten numbers: recorded by autograd op by op, their backward passes cost more
than the CNN's, and an attack on one image would mostly time autograd's per-operation overhead.
Here each stage is one :class:`torch.autograd.Function`:

- its forward pass runs exactly the operations of the reference formulas (:func:`reference_statistics`,
  :func:`reference_fuse`, the MLP's own layers), in the same order, so its values are bit-identical;
- its backward pass is the chain rule written out in NumPy (an operation on a few numbers costs a
  third of a torch operation), with autograd's subgradient conventions at the clamps, the max, the
  leaky ReLU and a zero norm. The gradients equal autograd's on the reference formulas up to float
  rounding (tests/test_fusion_ops.py); they are not twice differentiable. Matrix products go
  through torch, not NumPy: NumPy's BLAS keeps a thread pool of its own that would spin beside
  torch's threads and slow both down (below :data:`SMALL_MATMUL` multiply-adds it never starts it,
  and the whole-head node multiplies in NumPy there).

:func:`inference_alpha` fuses the statistics with the MLP and serves evaluation mode only (the
MLP's batch-norm layers use their running statistics there); training runs the MLP's modules.

:class:`HybridHead` goes further for the shipped circuits: encoder, circuit and fusion (everything
after the CNN) as one node, equal to the stage-by-stage path to rounding rather than bit for bit, so
the hybrid uses it for recorded (attack) passes only (tests/test_fast_path.py). Its formulas are
written here in NumPy (:func:`_head_forward`, :func:`_head_backward`: the reference) and run compiled
(:mod:`qshield_core.fusion_jit`, tested equal to them to 1e-12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .simulator import bloch_vectors, bloch_vectors_backward, kron_rows, kron_rows_backward

VAR_FLOOR = 1e-12
NORM_FLOOR = 1e-8
PROB_FLOOR = 1e-12
LOG_FLOOR = 1e-10
ALPHA_MIN, ALPHA_MAX = 1e-6, 1 - 1e-6


# --------------------------------------------------------------------------- references (autograd)


def reference_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row std, max and kurtosis."""
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    var = centred.pow(2).mean(-1)
    std = var.clamp_min(VAR_FLOOR).sqrt()
    kurtosis = centred.pow(4).mean(-1) / var.clamp_min(VAR_FLOOR).pow(2)
    return std, x.max(-1).values, kurtosis


def reference_statistics(cnn_logits: torch.Tensor, quantum_log_probs: torch.Tensor) -> torch.Tensor:
    """The paper's 7 statistics: std, max, kurtosis of each branch, and their Pearson correlation."""
    a = cnn_logits - cnn_logits.mean(-1, keepdim=True)
    b = quantum_log_probs - quantum_log_probs.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(NORM_FLOOR)
    return torch.stack([*reference_moments(cnn_logits), *reference_moments(quantum_log_probs), corr], -1)


def reference_alpha(mlp: nn.Module, cnn_logits: torch.Tensor, quantum_probs: torch.Tensor) -> torch.Tensor:
    """Alpha = MLP(7 statistics of the logits and of log(max(p_quantum, 1e-10)))."""
    return mlp(reference_statistics(cnn_logits, quantum_probs.clamp_min(LOG_FLOOR).log())).squeeze(-1)


def reference_fuse(cnn_logits: torch.Tensor, quantum_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Amplitude-level fusion; returns log-probabilities (N, C)."""
    a = alpha.clamp(ALPHA_MIN, ALPHA_MAX).unsqueeze(-1)
    amplitude = a * F.softmax(cnn_logits, -1).clamp_min(PROB_FLOOR).sqrt() + (1 - a**2).sqrt() * (
        quantum_probs.clamp_min(PROB_FLOOR).sqrt())
    probs = amplitude.pow(2)
    probs = probs / probs.sum(-1, keepdim=True)
    return probs.clamp_min(PROB_FLOOR).log()


# --------------------------------------------------------------------------- statistics


_TINY = {np.float32: np.finfo(np.float32).tiny, np.float64: np.finfo(np.float64).tiny}


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _statistics_forward(cnn_logits: torch.Tensor, quantum_log_probs: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """:func:`reference_statistics` op for op (bit-identical), and what its backward pass needs."""
    saved = []
    columns = []
    for x in (cnn_logits, quantum_log_probs):
        centred = x - x.mean(-1, keepdim=True)
        var = centred.pow(2).mean(-1)
        floored = var.clamp_min(VAR_FLOOR)
        std = floored.sqrt()
        kurtosis = centred.pow(4).mean(-1) / floored.pow(2)
        top, where = x.max(-1)
        columns += [std, top, kurtosis]
        saved += [centred, var, floored, std, kurtosis, where]
    a, b = saved[0], saved[6]
    norm_a, norm_b = a.norm(dim=-1), b.norm(dim=-1)
    product = norm_a * norm_b
    denominator = product.clamp_min(NORM_FLOOR)
    corr = (a * b).sum(-1) / denominator
    return torch.stack([*columns, corr], -1), (*saved, norm_a, norm_b, product, denominator, corr)


def _statistics_backward(grad: np.ndarray, saved: Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The gradients of the two inputs of :func:`reference_statistics` from the (B, 7) gradient."""
    (c_a, var_a, floor_a, std_a, kurt_a, where_a, c_b, var_b, floor_b, std_b, kurt_b, where_b,
     norm_a, norm_b, product, denominator, corr) = (t.numpy() for t in saved)
    g_corr = grad[:, 6]
    g_sum = g_corr / denominator
    g_product = (product >= NORM_FLOOR) * (-g_corr * corr / denominator)
    results = []
    for branch, (centred, other, var, floored, std, kurtosis, where, norm, other_norm) in enumerate((
            (c_a, c_b, var_a, floor_a, std_a, kurt_a, where_a, norm_a, norm_b),
            (c_b, c_a, var_b, floor_b, std_b, kurt_b, where_b, norm_b, norm_a))):
        g_std, g_max, g_kurt = grad[:, 3 * branch], grad[:, 3 * branch + 1], grad[:, 3 * branch + 2]
        direction = centred / np.maximum(norm, _TINY[centred.dtype.type])[:, None]  # 0 where the norm is 0
        g_var = (var >= VAR_FLOOR) * (g_std / (2 * std) - 2 * g_kurt * kurtosis / floored)
        n = centred.shape[-1]
        g_centred = (other * g_sum[:, None] + direction * (g_product * other_norm)[:, None]
                     + centred * (2 / n * g_var)[:, None] + centred**3 * (4 / n * g_kurt / floored**2)[:, None])
        g_x = g_centred - g_centred.sum(-1, keepdims=True) * (1 / n)
        g_x[np.arange(len(g_x)), where] += g_max
        results.append(g_x)
    return results[0], results[1]


class FusionStatistics(torch.autograd.Function):
    """:func:`reference_statistics` as one autograd node (bit-identical values, gradient in NumPy)."""

    @staticmethod
    def forward(ctx, cnn_logits: torch.Tensor, quantum_log_probs: torch.Tensor) -> torch.Tensor:
        stats, ctx.stash = _statistics_forward(cnn_logits, quantum_log_probs)
        return stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        g_a, g_b = _statistics_backward(_array(grad), ctx.stash)
        return (torch.from_numpy(g_a) if ctx.needs_input_grad[0] else None,
                torch.from_numpy(g_b) if ctx.needs_input_grad[1] else None)


def fusion_statistics(cnn_logits: torch.Tensor, quantum_log_probs: torch.Tensor) -> torch.Tensor:
    """:func:`reference_statistics`, one autograd node (the reference itself when autograd is off)."""
    if not torch.is_grad_enabled():
        return reference_statistics(cnn_logits, quantum_log_probs)
    return FusionStatistics.apply(cnn_logits, quantum_log_probs)


# --------------------------------------------------------------------------- alpha (evaluation mode)

_LAYERS = (nn.Linear, nn.LeakyReLU, nn.BatchNorm1d, nn.Sigmoid)


def supports_inference_alpha(mlp: nn.Sequential) -> bool:
    """Whether :func:`inference_alpha` can run ``mlp``: the layer types it knows, batch norm in eval mode."""
    return not mlp.training and all(isinstance(layer, _LAYERS) and not getattr(layer, "inplace", False)
                                    and (not isinstance(layer, nn.BatchNorm1d) or layer.running_var is not None)
                                    for layer in mlp)


def _layer_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer(x)`` computes in evaluation mode, called without the module machinery."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, layer.weight, layer.bias)
    if isinstance(layer, nn.LeakyReLU):
        return F.leaky_relu(x, layer.negative_slope)
    if isinstance(layer, nn.BatchNorm1d):
        return F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
    return torch.sigmoid(x)


def _layer_backward(layer: nn.Module, x: np.ndarray, y: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """d loss / d x from d loss / d y = ``grad``, for y = ``layer``(x) in evaluation mode."""
    if isinstance(layer, nn.Linear):
        return (torch.from_numpy(grad) @ layer.weight.detach()).numpy()  # see the module docstring on matmuls
    if isinstance(layer, nn.LeakyReLU):
        return np.where(x > 0, grad, grad * layer.negative_slope)
    if isinstance(layer, nn.BatchNorm1d):
        scale = 1 / np.sqrt(_array(layer.running_var) + layer.eps)
        return grad * (scale if layer.weight is None else _array(layer.weight) * scale)
    return grad * y * (1 - y)


def _parameter_grads(layer: nn.Module, x: np.ndarray, grad: np.ndarray) -> list[torch.Tensor]:
    """The gradients of ``layer``'s parameters (in ``layer.parameters()`` order) from d loss / d output."""
    g = torch.from_numpy(grad)
    if isinstance(layer, nn.Linear):
        return [g.T @ torch.from_numpy(x)] + ([g.sum(0)] if layer.bias is not None else [])
    if isinstance(layer, nn.BatchNorm1d) and layer.weight is not None:
        normalised = (x - _array(layer.running_mean)) / np.sqrt(_array(layer.running_var) + layer.eps)
        return [torch.from_numpy((grad * normalised).sum(0)), g.sum(0)]
    return []


class InferenceAlpha(torch.autograd.Function):
    """:func:`reference_alpha` in evaluation mode as one autograd node (bit-identical values).

    Inputs: the logits, the quantum probabilities, the MLP, then the MLP's parameters when any of
    them requires a gradient (they then get theirs; the app's models have none to compute).
    """

    @staticmethod
    def forward(ctx, cnn_logits: torch.Tensor, quantum_probs: torch.Tensor, mlp: nn.Sequential,
                *parameters: torch.Tensor) -> torch.Tensor:
        floored = quantum_probs.clamp_min(LOG_FLOOR)
        stats, ctx.stash = _statistics_forward(cnn_logits, floored.log())
        activations = [stats]
        for layer in mlp:
            activations.append(_layer_forward(layer, activations[-1]))
        ctx.mlp, ctx.activations, ctx.quantum = mlp, activations, (quantum_probs, floored)
        return activations[-1].squeeze(-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        values = [t.numpy() for t in ctx.activations]
        g = _array(grad).reshape(values[-1].shape)
        wanted = ctx.needs_input_grad
        parameter_grads: list[torch.Tensor] = []
        for index in range(len(ctx.mlp) - 1, -1, -1):
            if len(wanted) > 3:
                parameter_grads = _parameter_grads(ctx.mlp[index], values[index], g) + parameter_grads
            g = _layer_backward(ctx.mlp[index], values[index], values[index + 1], g)
        g_logits, g_log = _statistics_backward(g, ctx.stash)
        quantum_probs, floored = (_array(t) for t in ctx.quantum)
        g_quantum = (quantum_probs >= LOG_FLOOR) * (g_log / floored)
        return (torch.from_numpy(g_logits) if wanted[0] else None,
                torch.from_numpy(g_quantum) if wanted[1] else None, None,
                *(p if w else None for p, w in zip(parameter_grads, wanted[3:], strict=True)))


def inference_alpha(mlp: nn.Sequential, cnn_logits: torch.Tensor, quantum_probs: torch.Tensor) -> torch.Tensor:
    """:func:`reference_alpha` for an MLP in evaluation mode (:func:`supports_inference_alpha`), one node
    (the reference itself when autograd is off)."""
    if not torch.is_grad_enabled():
        return reference_alpha(mlp, cnn_logits, quantum_probs)
    parameters = [p for layer in mlp for p in layer._parameters.values() if p is not None]  # mlp.parameters(), faster
    if not any(p.requires_grad for p in parameters):
        parameters = []
    return InferenceAlpha.apply(cnn_logits, quantum_probs, mlp, *parameters)


# --------------------------------------------------------------------------- fusion


class AmplitudeFusion(torch.autograd.Function):
    """:func:`reference_fuse` as one autograd node (bit-identical values, gradient in NumPy)."""

    @staticmethod
    def forward(ctx, cnn_logits: torch.Tensor, quantum_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        a = alpha.clamp(ALPHA_MIN, ALPHA_MAX).unsqueeze(-1)
        soft = F.softmax(cnn_logits, -1)
        root_cnn = soft.clamp_min(PROB_FLOOR).sqrt()
        complement = (1 - a**2).sqrt()
        root_quantum = quantum_probs.clamp_min(PROB_FLOOR).sqrt()
        amplitude = a * root_cnn + complement * root_quantum
        unnormalised = amplitude.pow(2)
        total = unnormalised.sum(-1, keepdim=True)
        probs = unnormalised / total
        ctx.stash = (alpha, a, soft, root_cnn, complement, quantum_probs, root_quantum, amplitude, total, probs)
        return probs.clamp_min(PROB_FLOOR).log()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        alpha, a, soft, root_cnn, complement, quantum_probs, root_quantum, amplitude, total, probs = (
            _array(t) for t in ctx.stash)
        g = _array(grad)
        g_probs = (probs >= PROB_FLOOR) * (g / np.maximum(probs, PROB_FLOOR))
        g_amplitude = 2 * amplitude * (g_probs - (g_probs * probs).sum(-1, keepdims=True)) / total
        g_cnn = g_quantum = g_alpha = None
        if ctx.needs_input_grad[0]:
            g_soft = (soft >= PROB_FLOOR) * (a * g_amplitude / (2 * root_cnn))
            g_cnn = torch.from_numpy(soft * (g_soft - (g_soft * soft).sum(-1, keepdims=True)))
        if ctx.needs_input_grad[1]:
            g_root = complement * g_amplitude / (2 * root_quantum)
            g_quantum = torch.from_numpy((quantum_probs >= PROB_FLOOR) * g_root)
        if ctx.needs_input_grad[2]:
            g_a = (g_amplitude * (root_cnn - a / complement * root_quantum)).sum(-1)
            g_alpha = torch.from_numpy(((alpha >= ALPHA_MIN) & (alpha <= ALPHA_MAX)) * g_a)
        return g_cnn, g_quantum, g_alpha


def fuse(cnn_logits: torch.Tensor, quantum_probs: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """:func:`reference_fuse`, one autograd node (the reference itself when autograd is off)."""
    if not torch.is_grad_enabled():
        return reference_fuse(cnn_logits, quantum_probs, alpha)
    return AmplitudeFusion.apply(cnn_logits, quantum_probs, alpha)


# --------------------------------------------------------------------------- the whole head (one node)
#
# Everything after the CNN's logits (encoder, circuit, fusion) as one autograd node, for a hybrid with the
# enhanced encoding, a circuit without trainable rotations on the product path and the fusion MLP in
# evaluation mode: forward and backward in NumPy (float64; the MLP in its weights' precision). At batch 1
# the stage-by-stage path's separate nodes and the torch operations between them (standardise, project,
# tanh, class renormalisation, dtype conversions) cost several times the arithmetic, and so does every
# NumPy call here (one to ten microseconds each, the most when the caches are cold): the formulas below
# are arranged for few calls. Values equal the reference path's to rounding (float64 models: 1e-13;
# float32 models: within float32's own rounding), not bit for bit, so the hybrid takes this path only for
# forward passes autograd records (attack gradients); passes without autograd keep the bit-identical
# stages above (QShieldHybrid.fused_head).

SMALL_MATMUL = 65536
"""Largest rows x matrix size (multiply-adds) multiplied in NumPy: a quarter of OpenBLAS's threshold for
threading a matrix product (65536 x 4; on this project's machine up to 16 x 128 x 128 ran on one thread),
so its thread pool never wakes; larger products go through torch."""
PROJECTION_STD_FLOOR = 1e-8
"""The encoder's ``std + 1e-8`` (:class:`~qshield_core.quantum.FeatureEncoder`)."""
CLASS_NORM_FLOOR = 1e-12
"""The floor on the sum of the kept class probabilities (``QShieldHybrid.quantum_branch``)."""
_TINY64 = np.finfo(np.float64).tiny
_STATS_ORDER = (0, 3, 1, 4, 2, 5, 6)
"""Where :func:`_statistics` puts each of the paper's 7 statistics: (std, max, kurtosis) of each branch,
correlation, are stored as (std, std, max, max, kurtosis, kurtosis, correlation); the first layer's
weight rows are permuted to match."""


def _mm(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """x @ matrix: in NumPy when small (:data:`SMALL_MATMUL`), else in torch (the module docstring says why)."""
    if x.shape[0] * matrix.size <= SMALL_MATMUL:
        return x @ matrix
    return (torch.from_numpy(np.ascontiguousarray(x)) @ torch.from_numpy(matrix)).numpy()


class FoldedLayer(NamedTuple):
    """An affine layer of the fusion MLP, batch norm folded in, then its activation (in the MLP's precision)."""

    weight: np.ndarray  # (in, out): x @ weight
    bias: np.ndarray  # (out,)
    activation: float | str | None  # a leaky ReLU's negative slope, "sigmoid", or None


class FusedHead(NamedTuple):
    """The constants of :class:`HybridHead` (float64; the MLP's in its weights' precision)."""

    projection: tuple[np.ndarray, np.ndarray]  # the encoder's fixed (C, 3n) projection and its transpose
    transfer: np.ndarray  # (4^n, C): the product path's map, its class outcomes only
    centring: np.ndarray  # (C, C): x @ centring = x - mean(x)
    layers: tuple[FoldedLayer, ...]
    kernel: tuple  # the layers as the compiled kernels take them (:func:`kernel_layers`)


SIGMOID_CODE, LINEAR_CODE = -1.0, -2.0
"""Activation codes of :func:`kernel_layers` (a leaky ReLU is its negative slope, in [0, 1))."""


def kernel_layers(layers: Sequence[FoldedLayer]) -> tuple[tuple, tuple, np.ndarray]:
    """The folded MLP as (weights, biases, activation codes) for :mod:`qshield_core.fusion_jit`."""
    codes = np.array([SIGMOID_CODE if layer.activation == "sigmoid" else LINEAR_CODE if layer.activation is None
                      else float(layer.activation) for layer in layers])
    return tuple(layer.weight for layer in layers), tuple(layer.bias for layer in layers), codes


def _float64(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float64).copy()


def projection_pair(projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float64 (C, 3n) projection and its (contiguous) transpose."""
    return projection, np.ascontiguousarray(projection.T)


def fused_head(projection: torch.Tensor, transfer: torch.Tensor, mlp: nn.Sequential) -> FusedHead | None:
    """The head's constants: the encoder's fixed ``projection`` (C, 3n), the circuit's product-path
    ``transfer`` (4^n, 2^n), the fusion's ``mlp`` (evaluation mode); None when the MLP's layers do not have the
    shape :func:`fold_mlp` knows."""
    layers = fold_mlp(mlp)
    num_classes = projection.shape[0]
    if layers is None or transfer.shape[1] < num_classes:
        return None
    kept = _float64(transfer[:, :num_classes])
    centring = np.eye(num_classes) - 1 / num_classes
    return FusedHead(projection_pair(_float64(projection)), kept, centring, layers, kernel_layers(layers))


def fold_mlp(mlp: nn.Sequential) -> tuple[FoldedLayer, ...] | None:
    """The evaluation-mode MLP (7 statistics -> 1) as affine layers (each batch norm folded into the
    linear layer before it) with their activations; None for other layer sequences."""
    layers: list[list] = []  # [weight (in, out), bias, activation, batch norm folded]
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            bias = torch.zeros(layer.out_features) if layer.bias is None else layer.bias.detach()
            layers.append([layer.weight.detach().double().T, bias.double(), None, False])
        elif not layers or layers[-1][2] is not None:
            return None
        elif isinstance(layer, nn.BatchNorm1d) and not layers[-1][3] and layer.running_var is not None:
            scale = (layer.running_var.detach().double() + layer.eps).rsqrt()
            shift = -layer.running_mean.detach().double() * scale
            if layer.weight is not None:
                scale, shift = scale * layer.weight.detach().double(), shift * layer.weight.detach().double()
            if layer.bias is not None:
                shift = shift + layer.bias.detach().double()
            layers[-1][:2] = layers[-1][0] * scale, layers[-1][1] * scale + shift
            layers[-1][3] = True
        elif isinstance(layer, nn.LeakyReLU) and not layer.inplace and 0 <= layer.negative_slope < 1:
            layers[-1][2] = float(layer.negative_slope)
        elif isinstance(layer, nn.Sigmoid):
            layers[-1][2] = "sigmoid"
        else:
            return None
    if not layers or layers[0][0].shape[0] != len(_STATS_ORDER) or layers[-1][0].shape[1] != 1:
        return None
    layers[0][0] = layers[0][0][list(_STATS_ORDER)]
    dtype = np.float64 if mlp[0].weight.dtype == torch.float64 else np.float32
    return tuple(FoldedLayer(_float64(w).astype(dtype), _float64(b).astype(dtype), act) for w, b, act, _ in layers)


def _mlp_forward(layers: Sequence[FoldedLayer], x: np.ndarray) -> tuple[np.ndarray, list]:
    """The folded MLP's output (float64) and, per layer, what its activation's derivative needs. It runs in its
    weights' precision, as the reference does: float64 copies of a float32 model's weights would take 0.27 MB
    of a core's L2 cache (0.5 MB) at every step, evicting the CNN's data."""
    stash = []
    x = x.astype(layers[0].weight.dtype, copy=False)
    for layer in layers:
        h = _mm(x, layer.weight)
        h += layer.bias
        if layer.activation == "sigmoid":
            x = np.tanh(h * 0.5) * 0.5 + 0.5  # the logistic function, without overflow
            stash.append(x)
        elif layer.activation is not None:
            slope = np.maximum(np.sign(h), layer.activation)  # 1 where h > 0, else the slope (autograd's at 0)
            x = h * slope
            stash.append(slope)
        else:
            x = h
            stash.append(None)
    return x.astype(np.float64, copy=False), stash


def _mlp_backward(layers: Sequence[FoldedLayer], grad: np.ndarray, stash: Sequence) -> np.ndarray:
    """The MLP input's gradient (float64) from its output's."""
    grad = grad.astype(layers[0].weight.dtype, copy=False)
    for layer, saved in zip(reversed(layers), reversed(stash), strict=True):
        if layer.activation == "sigmoid":
            grad = grad * (saved - saved * saved)
        elif saved is not None:
            grad = grad * saved
        grad = _mm(grad, layer.weight.T)
    return grad.astype(np.float64, copy=False)


def _encode(features: np.ndarray, head: FusedHead, projection: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The enhanced encoding's (B, 3n) angles pi tanh(standardised features @ projection), and its stash."""
    centred = _mm(features, head.centring)
    std = np.sqrt(np.add.reduce(centred * centred, -1, keepdims=True) * (1 / centred.shape[-1]))
    denominator = std + PROJECTION_STD_FLOOR
    t = np.tanh(_mm(centred / denominator, projection))
    return t * np.pi, (centred, std, denominator, t)


def _encode_backward(grad: np.ndarray, stash: tuple, head: FusedHead, projection_t: np.ndarray) -> np.ndarray:
    """The features' gradient from the angles' (B, 3n) gradient."""
    centred, std, denominator, t = stash
    g_standardised = _mm(grad * (np.pi - np.pi * t * t), projection_t) / denominator
    g_std = np.add.reduce(g_standardised * centred, -1, keepdims=True) / (denominator * std * -centred.shape[-1])
    return _mm(g_standardised + g_std * centred, head.centring)


def _circuit(angles: np.ndarray, head: FusedHead) -> tuple[np.ndarray, tuple]:
    """The product path's probabilities of the C class outcomes, (B, C), from the (B, 3n) angles."""
    shape = (len(angles), -1, 3)
    cos, sin = np.cos(angles).reshape(shape), np.sin(angles).reshape(shape)
    vectors = bloch_vectors(cos, sin, "enhanced")
    products = kron_rows(vectors)
    return _mm(products[-1], head.transfer), (cos, sin, vectors, products)


def _circuit_backward(grad: np.ndarray, stash: tuple, head: FusedHead) -> np.ndarray:
    """The (B, 3n) angles' gradient from the class outcomes' (B, C) gradient."""
    cos, sin, vectors, products = stash
    vector_grads = kron_rows_backward(_mm(grad, head.transfer.T), vectors, products)
    return bloch_vectors_backward(vector_grads, cos, sin, vectors, "enhanced").reshape(len(grad), -1)


def _statistics(x: np.ndarray, head: FusedHead) -> tuple[np.ndarray, tuple]:
    """:func:`reference_statistics` of the stacked (logits, quantum log-probabilities) ``x`` (B, 2, C), in the
    order of :data:`_STATS_ORDER`, and the stash of :func:`_statistics_grad`."""
    batch, _, n = x.shape
    centred = _mm(x.reshape(2 * batch, n), head.centring).reshape(x.shape)
    squares = centred * centred
    sums = np.add.reduce(squares, -1)
    var = sums * (1 / n)
    floored = np.maximum(var, VAR_FLOOR)
    std = np.sqrt(floored)
    kurtosis = np.add.reduce(squares * squares, -1) / (floored * floored * n)
    norms = np.sqrt(sums)
    product = norms[:, 0] * norms[:, 1]
    denominator = np.maximum(product, NORM_FLOOR)
    corr = np.add.reduce(centred[:, 0] * centred[:, 1], -1) / denominator
    stats = np.concatenate([std, np.maximum.reduce(x, -1), kurtosis, corr[:, None]], 1)
    first_max = np.arange(n) == x.argmax(-1)[..., None]  # where the max's gradient goes (torch.max's index)
    return stats, (centred, squares, var, floored, std, kurtosis, first_max, norms, product, denominator, corr)


def _statistics_grad(grad: np.ndarray, stash: tuple, head: FusedHead) -> np.ndarray:
    """The (B, 2, C) gradient of :func:`_statistics`' input from the (B, 7) one (the formulas of
    :func:`_statistics_backward`, both branches at once)."""
    centred, squares, var, floored, std, kurtosis, first_max, norms, product, denominator, corr = stash
    batch, _, n = centred.shape
    g_std, g_max, g_kurt, g_corr = grad[:, 0:2], grad[:, 2:4], grad[:, 4:6], grad[:, 6:]
    g_sum = g_corr / denominator[:, None]
    g_product = (product >= NORM_FLOOR)[:, None] * (-g_corr * corr[:, None] / denominator[:, None])
    g_norm = g_product * norms[:, ::-1] / np.maximum(norms, _TINY64)  # 0 where the norm is 0
    g_var = (var >= VAR_FLOOR) * (g_std / (2 * std) - 2 * g_kurt * kurtosis / floored)
    g_square = (g_var * (2 / n) + g_norm)[..., None] + squares * (g_kurt * (4 / n) / (floored * floored))[..., None]
    g_centred = centred[:, ::-1] * g_sum[..., None] + centred * g_square
    g_x = _mm(g_centred.reshape(2 * batch, n), head.centring).reshape(centred.shape)
    return g_x + first_max * g_max[..., None]


def _fuse_forward(logits: np.ndarray, top: np.ndarray, quantum: np.ndarray,
                  alpha: np.ndarray) -> tuple[np.ndarray, tuple]:
    """:func:`reference_fuse` ((B, 1) ``alpha``; ``top`` the logits' row maxima) and its stash."""
    a = np.minimum(np.maximum(alpha, ALPHA_MIN), ALPHA_MAX)
    exp = np.exp(logits - top)
    soft = exp / np.add.reduce(exp, -1, keepdims=True)
    root_cnn = np.sqrt(np.maximum(soft, PROB_FLOOR))
    complement = np.sqrt(1 - a * a)
    root_quantum = np.sqrt(np.maximum(quantum, PROB_FLOOR))
    amplitude = a * root_cnn + complement * root_quantum
    unnormalised = amplitude * amplitude
    total = np.add.reduce(unnormalised, -1, keepdims=True)
    probs = unnormalised / total
    return np.log(np.maximum(probs, PROB_FLOOR)), (alpha, a, soft, root_cnn, complement, root_quantum, amplitude,
                                                   total, probs)


def _fuse_grad(grad: np.ndarray, stash: tuple, quantum: np.ndarray,
               through_quantum: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The gradients of :func:`_fuse_forward`'s logits, quantum probabilities (if ``through_quantum``) and alpha
    (the formulas of :class:`AmplitudeFusion`'s backward pass)."""
    alpha, a, soft, root_cnn, complement, root_quantum, amplitude, total, probs = stash
    g_probs = (probs >= PROB_FLOOR) * grad / np.maximum(probs, PROB_FLOOR)
    g_amplitude = (2 * amplitude / total) * (g_probs - np.add.reduce(g_probs * probs, -1, keepdims=True))
    g_soft = (soft >= PROB_FLOOR) * (a * g_amplitude / (2 * root_cnn))
    g_logits = soft * (g_soft - np.add.reduce(g_soft * soft, -1, keepdims=True))
    g_quantum = None
    if through_quantum:
        g_quantum = (quantum >= PROB_FLOOR) * (complement * g_amplitude / (2 * root_quantum))
    g_a = np.add.reduce(g_amplitude * (root_cnn - a / complement * root_quantum), -1, keepdims=True)
    return g_logits, g_quantum, ((alpha >= ALPHA_MIN) & (alpha <= ALPHA_MAX)) * g_a


def _head_forward(features: np.ndarray, head: FusedHead, projection: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The hybrid's log-probabilities (B, C) from its CNN's logits (float64), and the backward's stash: the
    reference of the compiled :func:`qshield_core.fusion_jit.head_forward`."""
    angles, encoded = _encode(features, head, projection)
    kept, circuit = _circuit(angles, head)
    total = np.add.reduce(kept, -1, keepdims=True)
    quantum = kept / np.maximum(total, CLASS_NORM_FLOOR)
    stacked = np.empty((len(features), 2, features.shape[-1]))
    stacked[:, 0] = features
    floored = np.maximum(quantum, LOG_FLOOR)
    np.log(floored, out=stacked[:, 1])
    stats, statistics = _statistics(stacked, head)
    alpha, mlp = _mlp_forward(head.layers, stats)
    log_probs, fusion = _fuse_forward(features, stats[:, 2:3], quantum, alpha)
    return log_probs, (encoded, circuit, quantum, total, floored, statistics, mlp, fusion)


def _head_backward(grad: np.ndarray, head: FusedHead, projection_t: np.ndarray, stash: tuple,
                   through_quantum: bool) -> np.ndarray:
    """The logits' gradient; with ``through_quantum`` False the quantum probabilities count as constants (the
    reference of :func:`qshield_core.fusion_jit.head_backward`)."""
    encoded, circuit, quantum, total, floored, statistics, mlp, fusion = stash
    g_logits, g_quantum, g_alpha = _fuse_grad(grad, fusion, quantum, through_quantum)
    g_stacked = _statistics_grad(_mlp_backward(head.layers, g_alpha, mlp), statistics, head)
    g_logits += g_stacked[:, 0]
    if through_quantum:
        g_quantum += (quantum >= LOG_FLOOR) * g_stacked[:, 1] / floored
        floored_total = np.maximum(total, CLASS_NORM_FLOOR)
        dot = (total >= CLASS_NORM_FLOOR) * np.add.reduce(g_quantum * quantum, -1, keepdims=True)
        g_angles = _circuit_backward((g_quantum - dot) / floored_total, circuit, head)
        g_logits += _encode_backward(g_angles, encoded, head, projection_t)
    return g_logits


class HybridHead(torch.autograd.Function):
    """The hybrid after its CNN (logits -> log-probabilities) as one node (section comment above), computed by
    the compiled kernels of :mod:`qshield_core.fusion_jit` (the formulas of :func:`_head_forward` and
    :func:`_head_backward`, one machine-code loop per image; the backward recomputes the forward's intermediates).

    ``projection`` is this call's (C, 3n) projection and its transpose (:func:`projection_pair`);
    ``through_quantum`` False cuts the quantum branch from the gradient (the paper mode), True
    differentiates through it. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, cnn_logits: torch.Tensor, head: FusedHead, projection: tuple[np.ndarray, np.ndarray],
                through_quantum: bool) -> torch.Tensor:
        from .fusion_jit import head_forward

        features = cnn_logits.detach().numpy().astype(np.float64)
        log_probs = head_forward(features, head, projection[0])
        ctx.features, ctx.head, ctx.projection, ctx.through_quantum = features, head, projection[0], through_quantum
        return torch.from_numpy(log_probs if cnn_logits.dtype == torch.float64 else log_probs.astype(np.float32))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        from .fusion_jit import head_backward

        g = head_backward(ctx.features, grad.numpy().astype(np.float64), ctx.head, ctx.projection,
                          ctx.through_quantum)
        return torch.from_numpy(g if grad.dtype == torch.float64 else g.astype(np.float32)), None, None, None


def hybrid_head(cnn_logits: torch.Tensor, head: FusedHead, projection: np.ndarray | None = None,
                through_quantum: bool = True) -> torch.Tensor:
    """:class:`HybridHead`; ``projection`` (float64, C x 3n) None: the head's fixed one."""
    pair = head.projection if projection is None else projection_pair(projection)
    return HybridHead.apply(cnn_logits, head, pair, through_quantum)
