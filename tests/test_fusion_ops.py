"""The fusion's single-node stages against their op-by-op references.

Forward values must be bit-identical (the committed results were computed with the references);
gradients must equal autograd's on the references to rounding (float64), with the same
subgradient conventions at the clamps, the max and a zero norm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qshield_core import fusion_ops
from qshield_core.models import DynamicFusion, build_model

TOL64 = 1e-10


def fusion_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The fusion MLP with random weights and non-trivial batch-norm running statistics, in eval mode."""
    torch.manual_seed(seed)
    mlp = DynamicFusion().mlp.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    for layer in mlp:
        if isinstance(layer, nn.BatchNorm1d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=gen, dtype=dtype))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=gen, dtype=dtype) + 0.5)
            layer.weight.data.copy_(torch.randn(layer.num_features, generator=gen, dtype=dtype))
    return mlp.eval()


def inputs(batch: int, seed: int, dtype: torch.dtype = torch.float64, classes: int = 10):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=gen, dtype=dtype) * 4
    quantum = torch.softmax(torch.randn(batch, classes, generator=gen, dtype=dtype) * 3, -1)
    alpha = torch.rand(batch, generator=gen, dtype=dtype)
    return logits, quantum, alpha


def both(reference, fast, args: tuple, wrt: list[torch.Tensor], seed: int = 0):
    """Values and gradients of <cotangent, output> of ``reference`` and ``fast``."""
    results = []
    for fn in (reference, fast):
        out = fn(*args)
        cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
        results.append((out.detach(), torch.autograd.grad((out * cotangent).sum(), wrt)))
    return results


def stages(mlp: nn.Sequential):
    """(name, reference, fast, which inputs of (logits, quantum, alpha) each takes)."""
    return [
        ("statistics", fusion_ops.reference_statistics, fusion_ops.fusion_statistics, "lq_log"),
        ("alpha", lambda lo, q: fusion_ops.reference_alpha(mlp, lo, q),
         lambda lo, q: fusion_ops.inference_alpha(mlp, lo, q), "lq"),
        ("fuse", fusion_ops.reference_fuse, fusion_ops.fuse, "lqa"),
    ]


def stage_args(kind: str, logits, quantum, alpha) -> tuple:
    if kind == "lq_log":
        return logits, quantum.clamp_min(1e-10).log().detach().requires_grad_(True)
    return (logits, quantum) if kind == "lq" else (logits, quantum, alpha)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 5])
def test_values_are_bit_identical_and_gradients_agree(dtype, batch):
    mlp = fusion_mlp(dtype=dtype)
    for seed in range(10):
        logits, quantum, alpha = (t.requires_grad_(True) for t in inputs(batch, seed, dtype))
        for name, reference, fast, kind in stages(mlp):
            args = stage_args(kind, logits, quantum, alpha)
            (ref, ref_grads), (got, got_grads) = both(reference, fast, args, list(args), seed)
            assert torch.equal(got, ref), name
            for r, g in zip(ref_grads, got_grads, strict=True):
                assert g.dtype == r.dtype and g.shape == r.shape
                scale = float(r.abs().max()) + 1e-30
                assert float((g - r).abs().max()) / scale < (TOL64 if dtype == torch.float64 else 1e-4), name


def test_gradcheck():
    mlp = fusion_mlp()
    logits, quantum, alpha = inputs(3, 1)
    quantum = torch.softmax(quantum.log() / 6, -1)  # no probability near 0: finite differences of log stay accurate
    for t in (logits, quantum, alpha):
        t.requires_grad_(True)
    log_quantum = quantum.detach().log().requires_grad_(True)
    assert torch.autograd.gradcheck(fusion_ops.fusion_statistics, (logits, log_quantum))
    assert torch.autograd.gradcheck(fusion_ops.fuse, (logits, quantum, alpha))
    bn_weight = mlp[3].weight  # the MLP's own parameter: gradcheck perturbs it in place
    others = [p.detach() for p in mlp.parameters()]

    def alpha_of(lo, q, w):
        return fusion_ops.InferenceAlpha.apply(lo, q, mlp, *others[:4], w, *others[5:])

    assert torch.autograd.gradcheck(alpha_of, (logits, quantum, bn_weight))


def test_parameter_gradients_in_evaluation_mode():
    """In eval mode the MLP's parameters still get their gradients when they require them."""
    mlp = fusion_mlp()
    logits, quantum, _ = inputs(4, 2)
    params = list(mlp.parameters())
    (_, ref), (_, got) = both(lambda lo, q: fusion_ops.reference_alpha(mlp, lo, q),
                              lambda lo, q: fusion_ops.inference_alpha(mlp, lo, q), (logits, quantum), params)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=TOL64, rtol=TOL64)
    mlp.requires_grad_(False)  # the app's models: nothing to compute for the parameters
    logits.requires_grad_(True)
    (_, ref), (_, got) = both(lambda lo: fusion_ops.reference_alpha(mlp, lo, quantum),
                              lambda lo: fusion_ops.inference_alpha(mlp, lo, quantum), (logits,), [logits])
    torch.testing.assert_close(got[0], ref[0], atol=TOL64, rtol=TOL64)


def test_floors_max_ties_and_zero_norms_follow_autograd():
    """Constant rows (variance under its floor, zero norms), tied maxima, probabilities under the
    floors and alpha at its clamps: the same subgradients as autograd on the references."""
    mlp = fusion_mlp()
    logits = torch.tensor([[0.0] * 10, [50.0] + [-50.0] * 9, [1.0, 1.0] + [0.0] * 8], dtype=torch.float64)
    quantum = torch.tensor([[0.1] * 10, [1.0] + [0.0] * 9, [0.5, 0.5] + [0.0] * 8], dtype=torch.float64)
    alpha = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    for t in (logits, quantum, alpha):
        t.requires_grad_(True)
    for name, reference, fast, kind in stages(mlp):
        args = stage_args(kind, logits, quantum, alpha)
        (ref, ref_grads), (got, got_grads) = both(reference, fast, args, list(args))
        assert torch.equal(got, ref), name
        for r, g in zip(ref_grads, got_grads, strict=True):
            assert bool(torch.isfinite(g).all()), name
            torch.testing.assert_close(g, r, atol=1e-12, rtol=1e-9)


def test_training_mode_and_no_grad_use_the_references():
    fusion = DynamicFusion().double()
    logits, quantum, alpha = inputs(8, 3)
    assert not fusion_ops.supports_inference_alpha(fusion.train().mlp)  # batch norm on batch statistics
    assert fusion_ops.supports_inference_alpha(fusion.eval().mlp)
    with torch.no_grad():
        assert torch.equal(fusion.alpha(logits, quantum), fusion_ops.reference_alpha(fusion.mlp, logits, quantum))
        fused = DynamicFusion.fuse(logits, quantum, alpha)
        assert torch.equal(fused, fusion_ops.reference_fuse(logits, quantum, alpha))


def test_not_twice_differentiable():
    logits, quantum, alpha = (t.requires_grad_(True) for t in inputs(2, 4))
    (grad,) = torch.autograd.grad(fusion_ops.fuse(logits, quantum, alpha)[:, 0].sum(), logits, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(grad.sum(), logits)


@pytest.mark.parametrize("grad_mode", ["paper", "differentiable"])
def test_hybrid_outputs_and_image_gradients_unchanged(grad_mode):
    """The whole hybrid in eval mode: the same log-probabilities, bit for bit, as with the references,
    and the same image gradient to rounding (the circuit path is the same in both runs)."""
    torch.manual_seed(0)
    model = build_model("organamnist", "hybrid-full", grad_mode=grad_mode).double().eval()
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([1, 4, 7])
    fusion, results = model.fusion, []
    for use_references in (True, False):
        if use_references:
            fusion.alpha = lambda lo, q: fusion_ops.reference_alpha(fusion.mlp, lo, q)
            fusion.fuse = fusion_ops.reference_fuse
        x = images.clone().requires_grad_(True)
        torch.manual_seed(1)  # paper mode draws its projection: the same draw for both runs
        out = model(x)
        (grad,) = torch.autograd.grad(torch.nn.functional.nll_loss(out, labels), x)
        results.append((out.detach(), grad))
        for attribute in ("alpha", "fuse"):
            fusion.__dict__.pop(attribute, None)
    (ref_out, ref_grad), (out, grad) = results
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=1e-9)
