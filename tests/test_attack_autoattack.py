"""AutoAttack's compositions (Croce & Hein 2020, arXiv 2003.01690) at the reference's budgets.

The reference (fra31/auto-attack, ``version='standard'``) runs APGD-CE, APGD-T, FAB-T and Square in
this order, each on the points the previous ones left: 100 iterations, 1 restart, 9 target classes
for the targeted attacks (``min(C, 10) - 1``) and 5,000 Square queries with ``p_init = 0.8``;
``version='rand'`` runs APGD-CE and APGD-DLR with EOT over 20 draws. The attribute names are
torchattacks 3.5.1's (``n_target_classes``, ``multi_targeted``, ``n_queries``, ...).
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from qshield_core.attacks import autoattack_rand, autoattack_standard, build_attack


@pytest.fixture
def model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


def settings(attack) -> dict:
    """The attributes an AutoAttack part is configured by (those the part has)."""
    names = ("norm", "eps", "steps", "n_restarts", "seed", "loss", "eot_iter", "n_target_classes",
             "multi_targeted", "n_queries", "p_init")
    return {name: getattr(attack, name) for name in names if hasattr(attack, name)}


def test_standard_is_apgd_ce_apgd_t_fab_t_square_at_the_reference_budgets(model):
    attack = autoattack_standard(model, eps=4 / 255, n_classes=10, seed=7)
    assert isinstance(attack, torchattacks.MultiAttack)
    assert [type(a) for a in attack.attacks] == [torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB,
                                                 torchattacks.Square]
    apgd_ce, apgd_t, fab_t, square = (settings(a) for a in attack.attacks)
    common = {"norm": "Linf", "eps": 4 / 255, "n_restarts": 1, "seed": 7}
    assert apgd_ce == {**common, "steps": 100, "loss": "ce", "eot_iter": 1}
    assert apgd_t == {**common, "steps": 100, "eot_iter": 1, "n_target_classes": 9}
    assert fab_t == {**common, "steps": 100, "n_target_classes": 9, "multi_targeted": True}
    assert square == {**common, "n_queries": 5000, "p_init": 0.8, "loss": "margin"}
    assert all(a.model is model for a in attack.attacks)


@pytest.mark.parametrize(("n_classes", "targets"), [(3, 2), (10, 9), (11, 9), (100, 9)])
def test_targeted_parts_try_min_c_10_minus_1_classes(model, n_classes, targets):
    attack = autoattack_standard(model, eps=0.1, n_classes=n_classes, seed=0)
    assert [a.n_target_classes for a in attack.attacks[1:3]] == [targets, targets]


def test_registry_builds_the_standard_composition_with_the_given_eps_and_seed(model):
    attack = build_attack("autoattack", model, "cifar10", eps=6 / 255, seed=11)  # 10 classes
    assert [type(a).__name__ for a in attack.attacks] == ["APGD", "APGDT", "FAB", "Square"]
    assert {a.eps for a in attack.attacks} == {6 / 255} and {a.seed for a in attack.attacks} == {11}
    assert [a.steps for a in attack.attacks[:3]] == [100, 100, 100] and attack.attacks[3].n_queries == 5000
    organ = build_attack("autoattack", model, "organamnist")  # 11 classes, the paper's eps 8/255
    assert [a.n_target_classes for a in organ.attacks[1:3]] == [9, 9]
    assert {a.eps for a in organ.attacks} == {8 / 255}


def test_rand_is_apgd_ce_then_apgd_dlr_with_eot_20(model):
    attack = autoattack_rand(model, eps=0.1, seed=3)
    assert [type(a) for a in attack.attacks] == [torchattacks.APGD, torchattacks.APGD]
    common = {"norm": "Linf", "eps": 0.1, "steps": 100, "n_restarts": 1, "seed": 3, "eot_iter": 20}
    assert [settings(a) for a in attack.attacks] == [{**common, "loss": "ce"}, {**common, "loss": "dlr"}]
    built = build_attack("autoattack-rand", model, "mnist", eps=0.2, seed=4)
    assert [(a.loss, a.eot_iter, a.steps, a.eps, a.seed) for a in built.attacks] == [("ce", 20, 100, 0.2, 4),
                                                                                    ("dlr", 20, 100, 0.2, 4)]


def spy_on(part, log: list) -> None:
    """Make ``part`` log (how many points it was given, how many it left correctly classified)."""
    forward = part.forward

    def logged(images, labels):
        adv = forward(images, labels)
        with torch.no_grad():
            log.append((len(images), int((part.get_logits(adv).argmax(1) == labels).sum())))
        return adv

    part.forward = logged


def test_standard_runs_each_part_on_what_the_previous_left(model):
    """A cheap run: valid L-inf examples, and each part attacks exactly the points the previous ones left."""
    log: list[tuple[int, int]] = []
    attack = autoattack_standard(model, eps=0.02, n_classes=3, seed=0, steps=2, n_queries=5)  # 2 targets: cheap
    for part in attack.attacks:
        spy_on(part, log)
    images = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(1)
    adv = attack(images, labels)
    assert (adv - images).abs().max() <= 0.02 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert log[0][0] == 16
    assert [given for given, _ in log[1:]] == [left for _, left in log[:-1]][: len(log) - 1]
