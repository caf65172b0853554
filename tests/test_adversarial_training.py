"""Adversarial training (qshield_core.adversarial_training) and the variant names its models take."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import require_samples
from torch import nn

from qshield_core import evaluation
from qshield_core.adversarial_training import AdversarialConfig, attack_mode, perturb, robustness_check
from qshield_core.cli import main
from qshield_core.data import load_samples
from qshield_core.models import build_model, classical_of, is_hybrid_name, split_variant
from qshield_core.train import default_config
from qshield_core.zoo import default_directory, is_variant_name, load_model

EPS = 0.1


def linear_model(weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    model[1].weight.data.copy_(weight)
    return model.train()


def test_fgsm_without_start_is_the_closed_form_on_a_linear_model():
    # two classes on 4 pixels: the loss of class 0 grows fastest along sign(w1 - w0), so FGSM moves there
    weight = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 1.0, 2.0, 0.0]])
    x = torch.full((1, 1, 2, 2), 0.5)
    adv = perturb(linear_model(weight), x, torch.tensor([0]), AdversarialConfig("pgd", EPS, 1, EPS), None)
    direction = torch.sign(weight[1] - weight[0]).view_as(x)
    assert torch.allclose(adv, x + EPS * direction)


def test_pgd_stays_in_the_ball_raises_the_loss_and_draws_only_from_its_generator():
    torch.manual_seed(0)
    model = linear_model(torch.randn(3, 16))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    config = AdversarialConfig.preset("pgd", EPS, steps=5)
    assert config.alpha == pytest.approx(2.5 * EPS / 5)
    state = torch.get_rng_state()
    first = perturb(model, x, y, config, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state), "the global generator was drawn from"
    again = perturb(model, x, y, config, torch.Generator().manual_seed(1))
    other = perturb(model, x, y, config, torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first - x).abs().max() <= EPS + 1e-6 and first.min() >= 0 and first.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(first), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient accumulates"
    assert model.training, "the training mode is restored"


def test_configs_are_checked():
    assert AdversarialConfig.preset("fgsm-rs", 0.3) == AdversarialConfig("fgsm-rs", 0.3, 1, 0.375)
    assert AdversarialConfig.from_dict(AdversarialConfig.preset("pgd", 8 / 255).to_dict()).steps == 10
    for bad, message in [(("fgsm", 0.3, 1, 0.3), "Unknown adversarial"), (("fgsm-rs", 0.3, 2, 0.3), "one step"),
                         (("pgd", 0.0, 5, 0.1), r"\(0, 1\]"), (("pgd", 0.1, 5, 0.5), "2 eps")]:
        with pytest.raises(ValueError, match=message):
            AdversarialConfig(*bad)


def test_a_hybrid_is_attacked_through_its_circuit_in_evaluation_mode():
    hybrid = build_model("mnist", "hybrid-full", grad_mode="paper").train()
    with attack_mode(hybrid):
        assert hybrid.grad_mode == "differentiable" and not hybrid.training
    assert hybrid.grad_mode == "paper" and hybrid.training


def test_variant_names():
    assert split_variant("classical@fgsm-at") == ("classical", "fgsm-at") and split_variant("dnn") == ("dnn", None)
    assert classical_of("hybrid-full@fgsm-at") == "classical@fgsm-at" and classical_of("hybrid-full") == "classical"
    assert is_hybrid_name("hybrid-full@x") and not is_hybrid_name("classical@x")
    assert is_variant_name("hybrid-full@fgsm-at") and not is_variant_name("hybrid-mine@x")
    assert not is_variant_name("classical@a/b") and not is_variant_name("classical")
    assert default_directory("classical@fgsm-at").name != "pretrained"  # never beside the shipped models
    with pytest.raises(ValueError, match="needs a variant name"):
        default_config("mnist", "classical", adversarial=AdversarialConfig.preset("fgsm-rs", 0.3).to_dict())
    cfg = default_config("mnist", "classical@fgsm-at", adversarial=AdversarialConfig.preset("fgsm-rs", 0.3).to_dict())
    assert cfg.init_from == "classical" and cfg.epochs == 3  # fine-tuned from the shipped CNN
    assert default_config("mnist", "hybrid-full@fgsm-at").init_from == "classical@fgsm-at"


def test_train_a_variant_and_its_hybrid_then_evaluate_them_by_name(tmp_path, capsys):
    require_samples()
    common = ["--dataset", "mnist", "--adversarial", "fgsm-rs", "--adv-eps", "0.3", "--data", "samples",
              "--batch-size", "50", "--out-dir", str(tmp_path), "--checkpoint-dir", str(tmp_path / "ck"),
              "--threads", "1"]
    assert main(["train", "--model", "classical@fgsm-at", "--epochs", "1", *common]) == 0
    assert main(["train", "--model", "hybrid-full@fgsm-at", *common]) == 0
    cnn = json.loads((tmp_path / "mnist-classical@fgsm-at.json").read_text())
    hybrid = json.loads((tmp_path / "mnist-hybrid-full@fgsm-at.json").read_text())
    assert cnn["adversarial_training"]["method"] == "fgsm-rs" and cnn["adversarial_training"]["alpha"] == 0.375
    assert cnn["init_from"]["model"] == "mnist-classical"  # the shipped CNN, found by name
    assert hybrid["init_from"]["weights_sha256"] == cnn["weights_sha256"]
    check = hybrid["history"][-1]["robust_check"]
    assert check["eps"] == 0.3 and set(check["accuracy"]) == {"clean", "fgsm", "pgd20"}

    model, _ = load_model("mnist", "hybrid-full@fgsm-at", directory=tmp_path)
    images, labels = load_samples("mnist")
    again = robustness_check(model, images, labels, 0.3, seed=0)
    assert again == robustness_check(model, images, labels, 0.3, seed=0)  # seeded, the paper mode's draws too

    capsys.readouterr()
    out = tmp_path / "r.json"
    assert main(["evaluate", "--dataset", "mnist", "--model", "hybrid-full@fgsm-at", "--attack", "transfer-classical",
                 "--n", "10", "--source", "samples", "--model-dir", str(tmp_path), "--json", str(out), "--quiet",
                 "--threads", "1"]) == 0
    (record,) = evaluation.load_results(out)
    assert record["model"] == "hybrid-full@fgsm-at"
    assert record["surrogate"]["model"] == "classical@fgsm-at"  # transfer from the defended CNN, not the shipped one
    assert record["surrogate"]["weights_sha256"] == cnn["weights_sha256"]


def test_the_scratch_recipe_trains_any_model_from_nothing_with_adam_under_a_variant_name(tmp_path):
    from qshield_core.train import make_optimizer

    with pytest.raises(ValueError, match="needs a variant name"):
        default_config("mnist", "hybrid-full", recipe="scratch")
    cfg = default_config("mnist", "hybrid-none@scratch-s3", recipe="scratch", seed=3)
    assert (cfg.init_from, cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.seed) == (None, 1e-3, 128, 1e-4, 3)
    model = build_model("mnist", "hybrid-none@scratch-s3")
    opt, sched = make_optimizer(model, cfg, steps=10)
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1  # every parameter at one rate
    assert opt.param_groups[0]["lr"] == 1e-3 and isinstance(sched, torch.optim.lr_scheduler.ConstantLR)
    assert model.circuit_config.entanglement == "none"
    require_samples()
    assert main(["train", "--dataset", "mnist", "--model", "classical@scratch-s0", "--recipe", "scratch",
                 "--data", "samples", "--epochs", "1", "--batch-size", "50", "--out-dir", str(tmp_path),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]) == 0
    card = json.loads((tmp_path / "mnist-classical@scratch-s0.json").read_text())
    assert card["hyperparameters"]["recipe"] == "scratch" and card.get("init_from") is None
