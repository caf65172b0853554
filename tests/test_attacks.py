"""The attack registry: presets as the paper states them, norm bounds, surrogates, EOT."""

from __future__ import annotations

import pytest
import torch

from qshield_core.attacks import (
    ADAPTIVE_ATTACKS,
    ATTACKS,
    EPS_RANGE,
    PAPER_ATTACKS,
    attack_params,
    build_attack,
    expand_attacks,
    validate_eps,
)
from qshield_core.evaluation import CountingModel, run_attack
from qshield_core.models import build_model

# Small budgets so that every attack runs in well under a second on untrained MNIST models.
CHEAP = {
    "pgd": {"steps": 3}, "apgd": {"steps": 3}, "vmifgsm": {"steps": 2, "N": 2}, "cw": {"steps": 2,
    "binary_search_steps": 2}, "deepfool": {"steps": 3}, "onepixel": {"steps": 2}, "square": {"n_queries": 20},
    "pgd100": {"steps": 3, "n_restarts": 2}, "apgd-ce": {"steps": 3}, "apgd-dlr": {"steps": 3},
    "autoattack": {"steps": 2, "n_queries": 10}, "autoattack-rand": {"steps": 2, "eot_iter": 2},
    "eot-pgd": {"steps": 2, "eot_iter": 2}, "bpda": {"steps": 3}, "transfer-classical": {"steps": 3},
    "square5000": {"n_queries": 20},
}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cnn = build_model("mnist", "classical").eval()
    hybrid = build_model("mnist", "hybrid-full", grad_mode="paper").eval()
    twin = build_model("mnist", "hybrid-full", grad_mode="differentiable").eval()
    twin.load_state_dict(hybrid.state_dict())
    return {"cnn": cnn, "hybrid": hybrid, "twin": twin}


def own_labels(model, images):
    """Labels the model gets right, so that every point is a target of the attack."""
    torch.manual_seed(123)
    with torch.no_grad():
        return model(images).argmax(-1)


def surrogate_for(name, models):
    role = ATTACKS[name].surrogate
    return {"classical": models["cnn"], "differentiable-twin": models["twin"]}.get(role)


def test_registry_has_the_paper_and_adaptive_sets():
    assert PAPER_ATTACKS == ("fgsm", "pgd", "apgd", "vmifgsm", "cw", "deepfool", "onepixel", "square")
    assert set(ADAPTIVE_ATTACKS) == {"pgd100", "apgd-ce", "apgd-dlr", "autoattack", "autoattack-rand", "eot-pgd",
                                     "bpda", "transfer-classical", "square5000"}
    assert expand_attacks(["fgsm", "paper-suite", "none"]) == ["fgsm", *PAPER_ATTACKS[1:], "none"]
    for spec in ATTACKS.values():
        assert spec.threat in ("Linf", "L2", "L0") and spec.reference and spec.description
        assert spec.uses_steps == (spec.steps_param is not None)


@pytest.mark.parametrize(("dataset", "eps255", "cw_search"), [("mnist", 32, 10), ("organamnist", 8, 8),
                                                              ("cifar10", 2, 8)])
def test_paper_presets_match_the_appendix(dataset, eps255, cw_search):
    eps = eps255 / 255
    assert attack_params("fgsm", dataset) == {"eps": eps}
    assert attack_params("pgd", dataset) == {"eps": eps, "alpha": 2 / 255, "steps": 10, "random_start": True}
    apgd = attack_params("apgd", dataset)
    assert (apgd["steps"], apgd["n_restarts"], apgd["loss"], apgd["eot_iter"], apgd["rho"]) == (10, 1, "ce", 1, 0.75)
    assert attack_params("vmifgsm", dataset) == {"eps": eps, "alpha": 2 / 255, "steps": 10, "decay": 1.0, "N": 5,
                                                 "beta": 1.5}
    cw = attack_params("cw", dataset)
    assert cw == {"confidence": 0.0, "learning_rate": 0.05, "binary_search_steps": cw_search, "max_iter": 5,
                  "initial_const": 0.01, "max_halving": 5, "max_doubling": 5}
    assert attack_params("deepfool", dataset) == {"steps": 50, "overshoot": 0.05}
    assert attack_params("onepixel", dataset)["pixels"] == 1 and attack_params("onepixel", dataset)["popsize"] == 10
    square = attack_params("square", dataset)
    assert (square["eps"], square["n_queries"], square["p_init"], square["loss"]) == (eps, 500, 0.8, "margin")


def test_overrides_and_relative_step_size():
    p = attack_params("pgd100", "mnist", eps=0.3, steps=7)
    assert p["eps"] == 0.3 and p["steps"] == 7 and p["alpha"] == pytest.approx(0.3 / 4)
    assert attack_params("pgd", "mnist", eps=0.3)["alpha"] == 2 / 255  # the paper's fixed step
    assert attack_params("square", "cifar10", steps=99)["n_queries"] == 99
    assert attack_params("cw", "mnist", eps=0.1) == attack_params("cw", "mnist")  # no eps bound: eps not applied
    with pytest.raises(ValueError, match="no steps"):
        attack_params("fgsm", "mnist", steps=3)
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        attack_params("pgd", "mnist", bogus=1)
    with pytest.raises(ValueError, match="Unknown attack"):
        attack_params("pgd-9000", "mnist")
    with pytest.raises(ValueError, match="Steps must be an integer"):
        attack_params("pgd", "mnist", steps=0)


def test_eps_validation_names_the_range():
    assert EPS_RANGE["mnist"] == (0.0, 0.4) and EPS_RANGE["cifar10"][1] == pytest.approx(32 / 255)
    assert validate_eps(0.3, "mnist") == 0.3
    with pytest.raises(ValueError, match=r"out of range for CIFAR-10.*32/255"):
        validate_eps(0.3, "cifar10")
    with pytest.raises(ValueError, match="out of range"):
        validate_eps(-0.01, "mnist")
    with pytest.raises(ValueError, match="must be a number"):
        validate_eps("lots", "mnist")


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("which", ["cnn", "hybrid"])
def test_every_attack_stays_within_its_bound(models, name, which):
    spec = ATTACKS[name]
    if which == "cnn" and spec.surrogate == "differentiable-twin":
        pytest.skip("BPDA needs a hybrid")
    model = models[which]
    torch.manual_seed(1)
    images = torch.rand(3, 1, 28, 28)
    labels = own_labels(model, images)
    eps = 0.1
    out = run_attack(model, images, labels, name, "mnist", eps=eps, surrogate=surrogate_for(name, models), seed=3,
                     **CHEAP.get(name, {}))
    adv = out.adv_images
    assert adv.shape == images.shape and torch.isfinite(adv).all()
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    delta = adv - images
    if spec.threat == "Linf":
        assert delta.abs().max() <= eps + 1e-6
    if spec.threat == "L0":
        assert int((delta != 0).any(dim=1).flatten(1).sum(1).max()) <= out.params["pixels"]
    assert out.clean_probs.sum(-1).allclose(torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd", "square", "cw", "deepfool"])
def test_an_attack_really_attacks(name):
    """A random linear classifier on noise images has margins far below what eps = 0.1 can move."""
    torch.manual_seed(2)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    images = torch.rand(8, 1, 28, 28)
    labels = own_labels(linear, images)
    if ATTACKS[name].uses_eps:
        assert int(run_attack(linear, images, labels, name, "mnist", eps=0.0).flipped.sum()) == 0
    out = run_attack(linear, images, labels, name, "mnist", eps=0.1)
    assert int(out.flipped.sum()) >= 7


def test_batched_deepfool_takes_torchattacks_steps(models):
    """Image by image, the batched DeepFool returns what ``torchattacks.DeepFool`` returns, at the same cost."""
    import torchattacks

    from qshield_core.attacks import BatchedDeepFool

    torch.manual_seed(4)
    images = torch.rand(6, 1, 28, 28)
    labels = own_labels(models["cnn"], images)
    counted = CountingModel(models["cnn"])
    batched = BatchedDeepFool(counted, steps=5, overshoot=0.05)(images, labels)
    batched_passes = (counted.forward_samples, counted.backward_samples)
    counted.reset()
    for i in range(len(images)):
        reference = torchattacks.DeepFool(counted, steps=5, overshoot=0.05)(images[i:i + 1], labels[i:i + 1])
        assert torch.allclose(batched[i:i + 1], reference, atol=1e-4), f"image {i}"
    assert (batched != images).any(), "it moved the images"
    assert batched_passes == (counted.forward_samples, counted.backward_samples), "same passes, counted"
    assert counted.backward_samples == 10 * counted.forward_samples, "one backward pass per class per step"


def test_cw_keeps_the_smallest_successful_example_and_returns_failures_unchanged():
    torch.manual_seed(3)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    images = torch.rand(6, 1, 28, 28)
    labels = own_labels(linear, images)
    labels[0] = (labels[0] + 1) % 10  # already misclassified: returned as it is (L2 = 0)
    full = run_attack(linear, images, labels, "cw", "mnist", initial_const=10.0)
    short = run_attack(linear, images, labels, "cw", "mnist", initial_const=10.0, binary_search_steps=1, max_iter=1)
    assert torch.equal(full.adv_images[0], images[0])
    l2 = (full.adv_images - images).flatten(1).norm(dim=1)
    l2_short = (short.adv_images - images).flatten(1).norm(dim=1)
    both = full.flipped & short.flipped
    assert full.flipped[1:].all() and bool(both.any())
    assert (l2[both] <= l2_short[both] + 1e-6).all()  # more search never returns a larger successful example
    stuck = run_attack(linear, images, labels, "cw", "mnist", binary_search_steps=1, max_iter=1, learning_rate=0.0)
    assert torch.equal(stuck.adv_images, images)  # no step, no success: the clean images come back


def test_transfer_takes_gradients_on_the_classical_cnn_only(models):
    torch.manual_seed(4)
    images = torch.rand(4, 1, 28, 28)
    labels = own_labels(models["hybrid"], images)
    out = run_attack(models["hybrid"], images, labels, "transfer-classical", "mnist", eps=0.1,
                     surrogate=models["cnn"], steps=4, seed=5)
    assert out.forwards_per_image == 0 and out.backwards_per_image == 0
    assert out.surrogate_forwards_per_image == 4 and out.surrogate_backwards_per_image == 4
    torch.manual_seed(5)
    direct = build_attack("pgd100", models["cnn"], "mnist", eps=0.1, steps=4, n_restarts=1)(images, labels)
    assert torch.equal(direct, out.adv_images)  # the examples are PGD's on the CNN, whatever the target


def test_bpda_differentiates_the_twin_and_reads_the_target(models):
    torch.manual_seed(6)
    images = torch.rand(4, 1, 28, 28)
    labels = own_labels(models["hybrid"], images)
    out = run_attack(models["hybrid"], images, labels, "bpda", "mnist", eps=0.1, surrogate=models["twin"], steps=5)
    assert out.backwards_per_image == 0  # the paper-mode target is never differentiated
    assert out.forwards_per_image == 5  # ... but its outputs are what the loss is computed on
    assert out.surrogate_forwards_per_image == 5 and out.surrogate_backwards_per_image == 5


@pytest.mark.parametrize("name", ["bpda", "transfer-classical"])
def test_surrogate_attacks_refuse_to_run_without_one(models, name):
    with pytest.raises(ValueError, match="surrogate"):
        build_attack(name, models["hybrid"], "mnist")


def test_eot_averages_over_several_forward_passes_per_step(models):
    hybrid = models["hybrid"]
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():  # the paper mode is stochastic: two calls give two outputs
        assert not torch.allclose(hybrid(x), hybrid(x))
    labels = own_labels(hybrid, x)
    counted = CountingModel(hybrid)
    torch.manual_seed(0)
    build_attack("eot-pgd", counted, "mnist", eps=0.1, steps=3, eot_iter=4)(x, labels)
    assert counted.forward_samples == 3 * 4 * 2 and counted.backward_samples == 3 * 4 * 2
    assert attack_params("autoattack-rand", "mnist")["eot_iter"] == 20


def test_stochastic_only_and_surrogate_attacks_apply_where_they_make_sense():
    assert not ATTACKS["eot-pgd"].applies_to("classical", None)
    assert not ATTACKS["eot-pgd"].applies_to("hybrid-full", "differentiable")
    assert ATTACKS["eot-pgd"].applies_to("hybrid-full", "paper")
    assert ATTACKS["bpda"].applies_to("hybrid-none", "paper") and not ATTACKS["bpda"].applies_to("classical", None)
    assert ATTACKS["transfer-classical"].applies_to("hybrid-star", "differentiable")
    assert ATTACKS["pgd"].applies_to("classical", None)
    # A finite-shot circuit is randomised in every mode: EOT applies, the paper mode's BPDA twin still does not.
    assert ATTACKS["eot-pgd"].applies_to("hybrid-mine", "differentiable", randomised=True)
    assert not ATTACKS["bpda"].applies_to("hybrid-mine", "differentiable", randomised=True)
