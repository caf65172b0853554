"""The paper's CNN, torchvision's ResNet-18 trained from scratch, and hybrid-full on it: the architecture against
torchvision's, the names, the cards (round trip, tampering), a smoke training on the shipped samples, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torchvision
from conftest import require_samples
from torch import nn

from qshield_core import grid, zoo
from qshield_core.cli import main
from qshield_core.data import REPO_ROOT, get_spec, load_samples
from qshield_core.evaluation import plan_cells, runner
from qshield_core.models import (
    BASELINES,
    MODEL_NAMES,
    Normalize,
    QShieldHybrid,
    build_model,
    classical_of,
    count_parameters,
    extra_epoch_control_of,
    extra_epoch_source,
    is_hybrid_name,
    split_backbone,
)
from qshield_core.resnet import SCRATCH, PaperResNet18
from qshield_core.train import default_config, fit, init_weights, make_optimizer

PARAMETERS = {"mnist": 11_175_370, "organamnist": 11_175_883, "cifar10": 11_181_642}
"""torchvision's resnet18 has 11,689,512 parameters (1000 classes, 3 channels); fc 512 -> C and, for greyscale, a
1-channel conv1 (64 x 49 weights instead of 64 x 3 x 49) give these."""


def torchvision_reference(dataset: str) -> nn.Module:
    """What the paper's code builds, without ImageNet weights: resnet18, conv1 replaced for greyscale, fc C-way."""
    spec = get_spec(dataset)
    net = torchvision.models.resnet18(weights=None)
    if spec.channels == 1:
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Linear(net.fc.in_features, spec.num_classes)
    return net


@pytest.mark.parametrize("dataset", ["mnist", "organamnist", "cifar10"])
def test_the_architecture_is_torchvisions_resnet18(dataset):
    spec = get_spec(dataset)
    torch.manual_seed(0)
    ours, reference = build_model(dataset, "resnet18").eval(), torchvision_reference(dataset).eval()
    assert isinstance(ours, PaperResNet18) and count_parameters(ours) == PARAMETERS[dataset]
    assert count_parameters(reference) == PARAMETERS[dataset]
    shapes = {k.removeprefix("resnet18."): v.shape for k, v in ours.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}, "same layers, same shapes"
    net = ours.resnet18
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (spec.channels, 64, (7, 7))
    assert (net.conv1.stride, net.conv1.padding, net.conv1.bias) == ((2, 2), (3, 3), None)
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (3, 2, 1), "max pool kept"
    assert (net.fc.in_features, net.fc.out_features) == (512, spec.num_classes)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert not any(isinstance(m, Normalize) for m in ours.modules()), "inputs in [0, 1], no normalisation"
    ours.resnet18.load_state_dict(reference.state_dict())
    x = torch.rand(3, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=0, rtol=0)  # the same computation


def test_names_say_backbone_and_quantum_branch():
    assert {"resnet18", "resnet18-hybrid-full"} <= set(MODEL_NAMES) and "resnet18" in BASELINES
    assert split_backbone("resnet18") == ("resnet18", "classical")
    assert split_backbone("resnet18-hybrid-full") == ("resnet18", "hybrid-full")
    assert split_backbone("hybrid-full") == (None, "hybrid-full") and split_backbone("classical") == (None, "classical")
    assert [is_hybrid_name(m) for m in ("resnet18", "resnet18-hybrid-full", "hybrid-x", "dnn")] == [
        False, True, True, False]
    assert classical_of("resnet18-hybrid-full") == "resnet18" and classical_of("hybrid-full") == "classical"
    assert zoo.is_builtin_name("resnet18-hybrid-full") and zoo.default_directory("resnet18") == zoo.PRETRAINED_DIR
    assert zoo.user_model_name("resnet18") == "hybrid-resnet18", "a design name is still hybrid-<name>"
    hybrid = build_model("organamnist", "resnet18-hybrid-full")
    assert isinstance(hybrid, QShieldHybrid) and isinstance(hybrid.cnn, PaperResNet18)
    assert hybrid.circuit_config.entanglement == "full" and hybrid.circuit_config.n_qubits == 4
    with pytest.raises(ValueError, match="not built on backbone"):
        build_model("mnist", "classical", backbone="resnet18")
    cells = plan_cells(["mnist"], ["resnet18", "resnet18-hybrid-full"], ["paper", "differentiable"],
                       ["none", "transfer-classical"], source="samples")
    assert sorted((c.model, c.grad_mode, c.attack) for c in cells) == [  # transfer: hybrids only, both modes
        ("resnet18", None, "none"), *(("resnet18-hybrid-full", mode, attack) for mode in ("differentiable", "paper")
                                       for attack in ("none", "transfer-classical"))]


def test_init_weights_draws_torchvisions_initialisation_from_the_generator():
    model = init_weights(build_model("mnist", "resnet18"), torch.Generator().manual_seed(3))
    again = init_weights(build_model("mnist", "resnet18"), torch.Generator().manual_seed(3))
    other = init_weights(build_model("mnist", "resnet18"), torch.Generator().manual_seed(4))
    state, same, different = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not torch.equal(state["resnet18.conv1.weight"], different["resnet18.conv1.weight"])
    conv = model.resnet18.layer3[0].conv2.weight  # Kaiming normal, fan-out: std sqrt(2 / (256 * 9))
    assert conv.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    bn = model.resnet18.layer1[0].bn1
    assert bool((bn.weight == 1).all()) and bool((bn.bias == 0).all())


def test_the_recipe_is_the_papers():
    cfg = default_config("mnist", "resnet18")
    assert (cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.augment, cfg.label_smoothing) == (128, 1e-3, 1e-4, "none", 0)
    assert (cfg.epochs, default_config("organamnist", "resnet18").epochs) == (2, 3)
    opt, sched = make_optimizer(build_model("mnist", "resnet18"), cfg, steps=10)
    assert isinstance(opt, torch.optim.Adam) and isinstance(sched, torch.optim.lr_scheduler.ConstantLR)
    hybrid = default_config("mnist", "resnet18-hybrid-full")
    assert (hybrid.init_from, hybrid.epochs, hybrid.cnn_lr_scale, hybrid.augment) == ("resnet18", 1, 0.1, "none")
    with pytest.raises(ValueError, match="on a backbone this project trains only"):
        default_config("mnist", "resnet18-hybrid-none")


CNN_RECIPE_FIELDS = ("epochs", "batch_size", "lr", "cnn_lr_scale", "weight_decay", "augment", "label_smoothing", "seed",
                     "init_from")


def test_the_extra_epoch_control_trains_resnet18_as_the_hybrid_recipe_trains_its_cnn():
    """resnet18@extra-epoch: the hybrid's recipe field for field, and the learning rate step for step that
    resnet18-hybrid-full's CNN group follows (Adam, one cycle peaking at 1e-4), with no circuit."""
    control = default_config("mnist", "resnet18@extra-epoch", recipe="extra-epoch")
    hybrid = default_config("mnist", "resnet18-hybrid-full")
    assert [getattr(control, f) for f in CNN_RECIPE_FIELDS] == [getattr(hybrid, f) for f in CNN_RECIPE_FIELDS]
    torch.manual_seed(0)
    schedules = []
    models = build_model("mnist", "resnet18"), build_model("mnist", "resnet18-hybrid-full")
    for cfg, model in zip((control, hybrid), models, strict=True):
        opt, sched = make_optimizer(model, cfg, steps=12)
        assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 1e-4
        lrs = []
        for _ in range(12):
            lrs.append(opt.param_groups[0]["lr"])  # the control's only group; the hybrid's CNN group
            opt.step()
            sched.step()
        schedules.append(lrs)
    assert schedules[0] == pytest.approx(schedules[1]) and max(schedules[0]) == pytest.approx(1e-4, rel=0.01)
    assert extra_epoch_control_of("resnet18-hybrid-full") == "resnet18@extra-epoch"
    assert extra_epoch_control_of("hybrid-full") == "classical@extra-epoch"
    assert extra_epoch_control_of("resnet18") is None
    assert extra_epoch_control_of("hybrid-full@pgd-at") == "classical@pgd-at-extra-epoch"
    assert [extra_epoch_source(m) for m in ("resnet18@extra-epoch", "classical@pgd-at-extra-epoch", "resnet18",
                                            "classical@pgd-at")] == ["resnet18", "classical@pgd-at", None, None]
    pgd = {"method": "pgd", "eps": 0.3, "steps": 7, "alpha": 0.3 * 2.5 / 7}
    defended = default_config("mnist", "classical@pgd-at-extra-epoch", recipe="extra-epoch", adversarial=pgd)
    its_hybrid = default_config("mnist", "hybrid-full@pgd-at", adversarial=pgd)
    fields = (*CNN_RECIPE_FIELDS, "adversarial")
    assert [getattr(defended, f) for f in fields] == [getattr(its_hybrid, f) for f in fields]
    assert defended.init_from == "classical@pgd-at" and defended.augment == "shift2"
    with pytest.raises(ValueError, match="fine-tunes a classical model"):
        default_config("mnist", "resnet18-hybrid-full@extra-epoch", recipe="extra-epoch")
    for name in ("resnet18", "resnet18@pgd-at"):
        with pytest.raises(ValueError, match="under a control's name"):
            default_config("mnist", name, recipe="extra-epoch")


def save_small(directory, dataset: str = "mnist"):
    torch.manual_seed(0)
    model = build_model(dataset, "resnet18").eval()
    card = {"dataset": dataset, "model": "resnet18", "backbone": "resnet18"}
    return model, zoo.save_model(model, card, dataset, "resnet18", directory)


def test_a_card_round_trips_and_a_tampered_file_is_refused(tmp_path):
    model, files = save_small(tmp_path)
    loaded, card = zoo.load_model("mnist", "resnet18", directory=tmp_path)
    assert card["backbone"] == "resnet18" and isinstance(loaded, PaperResNet18) and not loaded.training
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    data = bytearray(files.weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    files.weights.write_bytes(bytes(data))
    with pytest.raises(zoo.ModelUnavailableError, match="does not match"):
        zoo.load_model("mnist", "resnet18", directory=tmp_path)


def test_a_card_whose_backbone_contradicts_its_name_is_refused(tmp_path):
    _, files = save_small(tmp_path)
    files.card.write_text(json.dumps(dict(json.loads(files.card.read_text()), model="classical")))
    renamed = zoo.model_files("mnist", "classical", tmp_path)
    files.card.rename(renamed.card)
    files.weights.rename(renamed.weights)
    with pytest.raises(zoo.ModelUnavailableError, match="names backbone 'resnet18'"):
        zoo.load_model("mnist", "classical", directory=tmp_path)


def test_the_study_grid_writes_into_the_tables_files():
    """grids/resnet18.toml: the paper protocol (n = 1000) and AutoAttack on both models (the hybrid also transfer,
    BPDA, its differentiable twin and AutoAttack-rand with EOT; the extra-epoch control on the hybrid's points),
    MNIST and OrganAMNIST, into the results files of grids/results.toml (so the tables show the rows beside ours)."""
    jobs = grid.plan(grid.load_grid(REPO_ROOT / "grids" / "resnet18.toml"), source="samples")
    outs = {j.stage: str(j.out) for j in jobs}
    assert outs == {"paper": "results/paper-reproduction.json", "adaptive": "results/adaptive.json"}
    paper = [j.cell for j in jobs if j.stage == "paper"]
    assert {c.n for c in paper} == {1000} and {c.dataset for c in paper} == {"mnist", "organamnist"}
    attacked = {(c.dataset, c.model, c.grad_mode) for c in paper if c.attack == "pgd"}
    assert attacked == {(d, m, g) for d in ("mnist", "organamnist")
                        for m, g in (("resnet18", None), ("resnet18-hybrid-full", "paper"))}
    adaptive = [j.cell for j in jobs if j.stage == "adaptive"]
    cells = sorted((c.dataset, c.model, c.grad_mode, c.attack, c.n, round(c.eps * 255)) for c in adaptive)
    hybrid = ("organamnist", "resnet18-hybrid-full", "paper")
    assert [c for c in cells if c[0] == "organamnist"] == [
        ("organamnist", "resnet18", None, "autoattack", 500, 8),
        ("organamnist", "resnet18-hybrid-full", "differentiable", "autoattack", 200, 8),
        *((*hybrid, attack, 200, 8) for attack in ("autoattack", "autoattack-rand", "bpda", "transfer-classical")),
        ("organamnist", "resnet18@extra-epoch", None, "autoattack", 200, 8)]
    assert {c.attack for c in adaptive if c.model == "resnet18"} == {"autoattack"}
    controls = {(c.dataset, c.eps, c.n, c.seed) for c in adaptive if c.model == "resnet18@extra-epoch"}
    hybrids = {(c.dataset, c.eps, c.n, c.seed) for c in adaptive if c.model == "resnet18-hybrid-full"}
    assert controls == hybrids, "the control is attacked on the hybrid's points (the seeded subset of its n)"
    for dataset in ("mnist", "organamnist"):
        checks = {(c.grad_mode, c.attack) for c in adaptive if c.dataset == dataset and c.model != "resnet18"}
        assert {("differentiable", "autoattack"), ("paper", "autoattack-rand")} <= checks, \
            f"{dataset}'s hybrid meets the two checks a randomised model's figure needs"


# --------------------------------------------------------------------------- trained on the shipped samples


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """resnet18, then resnet18-hybrid-full from it (the recipes, 1 epoch of batch 20 on the 100 MNIST samples),
    saved by name into an empty pretrained/ folder."""
    require_samples()
    root = tmp_path_factory.mktemp("resnet18")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zoo, "PRETRAINED_DIR", root / "pretrained")
        patch.setattr(zoo, "USER_MODELS_DIR", root / "user_models")
        runner._load.cache_clear()
        torch.set_num_threads(1)
        try:
            runs = {m: fit(default_config("mnist", m, epochs=1, batch_size=20, extra={"data": "samples"}),
                           checkpoint_dir=root / "checkpoints", log=quiet)
                    for m in ("resnet18", "resnet18-hybrid-full")}
            yield root / "pretrained", runs
        finally:
            torch.set_num_threads(threads)
            runner._load.cache_clear()


def test_training_on_the_samples_writes_a_card_that_says_how(trained):
    folder, runs = trained
    card = runs["resnet18"].card
    assert runs["resnet18"].files.card.parent == folder
    assert card["backbone"] == "resnet18" and card["initial_weights"] == SCRATCH
    assert card["architecture"].startswith("torchvision resnet18") and SCRATCH in card["architecture"]
    assert card["parameter_count"] == PARAMETERS["mnist"] and card["input"]["output"] == "logits"
    paper = card["paper_model"]
    assert paper["name"] == "CNN" and "Conv2d(1, 64, kernel_size=7, stride=2, padding=3" in paper["same"]
    assert SCRATCH in paper["differs"] and "1 epoch(s) instead of 10" in paper["differs"]
    hybrid = runs["resnet18-hybrid-full"].card
    assert hybrid["backbone"] == "resnet18" and hybrid["init_from"]["model"] == "mnist-resnet18"
    assert hybrid["init_from"]["weights_sha256"] == card["weights_sha256"]
    assert hybrid["initial_weights"] == f"CNN from mnist-resnet18, {SCRATCH}"
    assert hybrid["paper_model"]["name"] == "HQCNN-Full" and "circuit" in hybrid
    assert hybrid["architecture"].startswith("torchvision resnet18") and "dynamic fusion" in hybrid["architecture"]


def test_the_control_starts_from_the_trained_resnet18_and_loads_by_name(trained, tmp_path):
    """One epoch of the extra-epoch recipe on the samples: the card names the resnet18 it started from (by its
    weights' digest) and the recipe, and the model loads by its variant name."""
    _, runs = trained
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = fit(default_config("mnist", "resnet18@extra-epoch", recipe="extra-epoch", batch_size=20,
                                 extra={"data": "samples"}), checkpoint_dir=tmp_path, log=quiet)
    finally:
        torch.set_num_threads(threads)
    card = run.card
    assert card["init_from"]["model"] == "mnist-resnet18"
    assert card["init_from"]["weights_sha256"] == runs["resnet18"].card["weights_sha256"]
    assert card["hyperparameters"]["recipe"] == "extra-epoch" and card["epochs"] == 1
    loaded, loaded_card = zoo.load_model("mnist", "resnet18@extra-epoch")
    assert loaded_card == card and isinstance(loaded, PaperResNet18)
    assert not torch.equal(next(loaded.parameters()), next(runs["resnet18"].model.parameters()))


def test_both_load_by_name_and_a_tampered_copy_is_refused(trained, tmp_path):
    _, runs = trained
    images, _ = load_samples("mnist")
    for name, run in runs.items():
        loaded, card = zoo.load_model("mnist", name, grad_mode="differentiable")
        assert card == run.card
        if isinstance(run.model, QShieldHybrid):
            run.model.grad_mode = "differentiable"
            assert isinstance(loaded.cnn, PaperResNet18)
        with torch.no_grad():
            assert torch.equal(loaded(images), run.model(images))
    assert {"resnet18", "resnet18-hybrid-full"} <= set(zoo.available_models("mnist"))
    files = runs["resnet18-hybrid-full"].files
    for path in (files.weights, files.card):
        shutil.copy(path, tmp_path)
    copy = zoo.model_files("mnist", "resnet18-hybrid-full", tmp_path).weights
    copy.write_bytes(copy.read_bytes()[:-64])
    with pytest.raises(zoo.ModelUnavailableError, match="does not match"):
        zoo.load_model("mnist", "resnet18-hybrid-full", directory=tmp_path)


def test_evaluate_and_info_take_the_names(trained, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["evaluate", "--dataset", "mnist", "--model", "resnet18", "resnet18-hybrid-full", "--attack", "none",
                 "fgsm", "transfer-classical", "--n", "5", "--source", "samples", "--json", str(out), "--quiet"])
    assert code == 0
    records = {(r["model"], r["grad_mode"], r["attack"]): r for r in json.loads(out.read_text())["records"]}
    assert set(records) == {("resnet18", None, "none"), ("resnet18", None, "fgsm"),
                            ("resnet18-hybrid-full", "paper", "none"), ("resnet18-hybrid-full", "paper", "fgsm"),
                            ("resnet18-hybrid-full", "paper", "transfer-classical")}
    assert records[("resnet18-hybrid-full", "paper", "transfer-classical")]["surrogate"]["model"] == "resnet18"
    capsys.readouterr()
    assert main(["info", "--dataset", "mnist"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[1]: line for line in lines[1:]}
    assert {"resnet18", "resnet18-hybrid-full"} <= set(listed) and not any("BAD" in line for line in lines)
