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
  through torch, never NumPy: NumPy's BLAS keeps a thread pool of its own that would spin beside
  torch's threads and slow both down.

:func:`inference_alpha` fuses the statistics with the MLP and serves evaluation mode only (the
MLP's batch-norm layers use their running statistics there); training runs the MLP's modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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
