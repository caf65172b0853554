"""Evaluation: counted passes, metrics and intervals, projected circuit cost, resumable cells, tables."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_samples

from qshield_core.evaluation import (
    CountingModel,
    attack_metrics,
    balanced_indices,
    difference_interval,
    evaluate,
    evaluate_cell,
    evaluation_points,
    load_results,
    merge_record,
    plan_cells,
    projected_circuit_executions,
    run_attack,
    run_cells,
    unpack_bits,
    wilson_interval,
)
from qshield_core.models import build_model
from qshield_core.zoo import save_model


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build_model("mnist", "classical").eval()


def own_labels(model, images):
    with torch.no_grad():
        return model(images).argmax(-1)


# --------------------------------------------------------------------------- counting


def test_counting_model_counts_forward_and_backward_samples(cnn):
    counted = CountingModel(cnn)
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    with torch.no_grad():
        counted(x[:2])
    assert (counted.forward_samples, counted.backward_samples) == (2, 0)
    out = counted(x)
    torch.autograd.grad(out.sum(), x)
    assert (counted.forward_samples, counted.backward_samples) == (7, 5)
    counted(x)  # a forward that is never differentiated costs no backward pass
    assert counted.backward_samples == 5
    out = counted(x)
    torch.autograd.grad(out[1:3].sum(), x)  # samples left out of the loss get no gradient: not counted
    assert (counted.forward_samples, counted.backward_samples) == (17, 7)


@pytest.mark.parametrize(("attack", "kwargs", "forwards", "backwards"), [
    ("fgsm", {}, 1, 1),
    ("pgd", {"steps": 7}, 7, 7),
    ("vmifgsm", {"steps": 3, "N": 4}, 3 * (1 + 4), 3 * (1 + 4)),
    ("square", {"steps": 50}, None, 0),
])
def test_passes_per_image_are_exact(cnn, attack, kwargs, forwards, backwards):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    out = run_attack(cnn, x, own_labels(cnn, x), attack, "mnist", eps=0.05, **kwargs)
    if forwards is not None:
        assert out.forwards_per_image == forwards
    else:
        assert 1 < out.forwards_per_image <= 50 + 3  # score-based: queries only, never a gradient
    assert out.backwards_per_image == backwards
    assert out.surrogate_forwards_per_image is None


def test_deepfool_counts_one_backward_per_class_per_step(cnn):
    x = torch.rand(1, 1, 28, 28)
    out = run_attack(cnn, x, own_labels(cnn, x), "deepfool", "mnist", steps=1)
    assert (out.forwards_per_image, out.backwards_per_image) == (1, 10)


def test_run_attack_outcome_is_consistent(cnn):
    torch.manual_seed(3)
    x = torch.rand(6, 1, 28, 28)
    y = own_labels(cnn, x)
    out = run_attack(cnn, x, y, "pgd", "mnist", eps=0.1, seed=11)
    assert out.clean_correct.all()
    assert torch.equal(out.adv_pred, out.adv_probs.argmax(-1))
    assert out.adv_probs.sum(-1).allclose(torch.ones(6), atol=1e-5)
    assert out.seconds >= 0 and out.seconds_per_image == pytest.approx(out.seconds / 6)
    assert out.params == {"eps": 0.1, "alpha": 2 / 255, "steps": 10, "random_start": True}
    again = run_attack(cnn, x, y, "pgd", "mnist", eps=0.1, seed=11)
    assert torch.equal(again.adv_images, out.adv_images)  # seeded: reproducible


def test_paper_mode_evaluations_share_one_random_draw():
    """An image the attack leaves unchanged keeps its prediction in the stochastic paper mode."""
    torch.manual_seed(0)
    hybrid = build_model("mnist", "hybrid-full", grad_mode="paper").eval()
    x = torch.rand(6, 1, 28, 28)
    out = run_attack(hybrid, x, torch.zeros(6, dtype=torch.long), "pgd", "mnist", eps=0.0)
    assert torch.equal(out.adv_images, x)
    assert torch.allclose(out.clean_probs, out.adv_probs)


# --------------------------------------------------------------------------- metrics


def test_difference_interval_matches_newcombe():
    """Newcombe (1998), Table II, example (a): 56/70 - 48/80, method 10: +0.0524 to +0.3339."""
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    low, high = difference_interval(48, 80, 56, 70)
    assert (low, high) == pytest.approx((-0.3339, -0.0524), abs=5e-5)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize("trials", [1, 7, 500, 1000, 10000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_equals_scipy_binomtest(trials, confidence):
    """The written-out formula gives scipy's Wilson interval bit for bit (stored results were made with it)."""
    from scipy.stats import binomtest

    for successes in sorted({0, 1, trials // 3, trials // 2, trials - 1, trials}):
        ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
        assert wilson_interval(successes, trials, confidence) == (max(0.0, ci.low), min(1.0, ci.high))


def test_attack_metrics_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 3, 4])
    clean = torch.tensor([0, 1, 2, 3, 0])  # 4 of 5 correct
    adv = torch.tensor([0, 9, 9, 3, 4])  # 2 of the 4 flipped; the wrong one "corrected" stays not robust
    m = attack_metrics(labels, clean, adv)
    assert m["clean_accuracy"] == 0.8 and m["robust_accuracy"] == 0.4 and m["asr"] == 0.5
    assert (m["n_clean_correct"], m["n_fooled"], m["n_robust"]) == (4, 2, 2)
    assert m["asr_ci"] == pytest.approx(list(wilson_interval(2, 4)))
    assert m["robust_accuracy"] == pytest.approx(m["clean_accuracy"] * (1 - m["asr"]))
    none_correct = attack_metrics(labels, labels + 1, labels)
    assert none_correct["asr"] is None and none_correct["robust_accuracy"] == 0.0


def test_projected_circuit_executions():
    differentiable = projected_circuit_executions(10, 10, n_qubits=4, shots=1000)
    assert differentiable["circuit_evaluations_per_image"] == 10 + 10 * 2 * 12
    assert differentiable["shots_per_image"] == 250_000
    paper = projected_circuit_executions(10, 10, n_qubits=4, shots=1000, gradient_through_circuit=False)
    assert paper["circuit_evaluations_per_image"] == 10 and "no circuit runs per backward" in paper["assumptions"]
    queries = projected_circuit_executions(500, 0, shots=100)
    assert queries["shots_per_image"] == 500 * 100


def test_balanced_indices():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    idx = balanced_indices(labels, 30, 3, seed=1)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts[2] == 5 and counts[0] >= 10 and counts[1] >= 10  # the short class taken whole, the rest filled
    assert len(set(idx)) == 30
    assert idx == balanced_indices(labels, 30, 3, seed=1) and idx != balanced_indices(labels, 30, 3, seed=2)
    even = balanced_indices(torch.arange(100) % 10, 20, 10, seed=0)
    assert torch.bincount((torch.arange(100) % 10)[even]).tolist() == [2] * 10


# --------------------------------------------------------------------------- cells


@pytest.fixture
def model_dir(tmp_path, cnn):
    save_model(cnn, {"dataset": "mnist", "model": "classical", "clean_test_accuracy": 0.1, "n_test": 10},
               "mnist", "classical", tmp_path)
    return tmp_path


def test_evaluate_cell_record(model_dir):
    require_samples()
    record = evaluate_cell("mnist", "classical", "paper", "fgsm", 0.1, 20, seed=0, source="samples",
                           model_dir=model_dir)
    json.dumps(record)  # serialisable as it is
    assert record["grad_mode"] is None and record["n"] == 20 and record["eps_255"] == pytest.approx(25.5)
    assert record["params"] == {"eps": 0.1}
    assert record["forwards_per_image"] == 1 and record["backwards_per_image"] == 1
    assert record["projected_circuit_executions"] is None  # a CNN has no circuit
    assert record["perturbation"]["linf_max"] <= 0.1 + 1e-6
    assert record["model_card"]["weights_sha256"] and record["versions"]["torchattacks"] == "3.5.1"
    assert record["points"]["source"].startswith("assets/samples")
    adv_correct = unpack_bits(record["per_point"]["adv_correct"], 20)
    assert adv_correct.sum() >= record["n_robust"]


def test_clean_cell_reports_gradient_norm(model_dir):
    require_samples()
    record = evaluate_cell("mnist", "classical", None, "none", None, 10, source="samples", model_dir=model_dir)
    assert "robust_accuracy" not in record and record["input_gradient_norm"] > 0


def test_run_cells_is_resumable_and_limitable(tmp_path, model_dir):
    require_samples()
    out = tmp_path / "results.json"
    cells = plan_cells(["mnist"], ["classical"], ["paper"], ["none", "fgsm"], [0.05, 0.1], n=10, source="samples")
    assert [c.attack for c in cells] == ["none", "fgsm", "fgsm"] and cells[0].eps is None
    first = run_cells(cells, out, limit=2, progress=False, log=None, model_dir=model_dir)
    assert len(first.ran) == 2 and len(load_results(out)) == 2
    second = run_cells(cells, out, progress=False, log=None, model_dir=model_dir)
    assert second.ran == [cells[2].key] and len(second.skipped) == 2
    assert [r["key"] for r in load_results(out)] == [c.key for c in cells]
    shard = run_cells(cells, tmp_path / "shard.json", shard=(1, 2), progress=False, log=None, model_dir=model_dir)
    assert shard.ran == [cells[1].key]
    records = load_results(out)
    records[1]["params"]["eps"] = 0.2  # recorded with another preset than today's: stale, so run again
    out.write_text(json.dumps({"records": records}))
    third = run_cells(cells, out, progress=False, log=None, model_dir=model_dir)
    assert third.ran == [cells[1].key] and len(load_results(out)) == 3
    assert load_results(out)[1]["params"]["eps"] == pytest.approx(0.05)


def test_plan_cells_validates_and_filters():
    cells = plan_cells(["mnist"], ["classical", "hybrid-full"], ["paper", "differentiable"], ["adaptive-suite"])
    names = {(c.model, c.grad_mode, c.attack) for c in cells}
    assert ("classical", None, "bpda") not in names and ("hybrid-full", "paper", "bpda") in names
    assert ("hybrid-full", "differentiable", "eot-pgd") not in names
    assert all(c.eps == pytest.approx(32 / 255) for c in cells)
    with pytest.raises(ValueError, match="out of range"):
        plan_cells(["cifar10"], ["classical"], [None], ["pgd"], [0.3])


def test_the_dnn_is_planned_like_the_classical_cnn():
    """No gradient modes, and none of the hybrid-only attacks (transfer, BPDA, EOT)."""
    suites = ["none", "paper-suite", "adaptive-suite"]
    dnn = plan_cells(["mnist"], ["dnn"], ["paper", "differentiable"], suites)
    cnn = plan_cells(["mnist"], ["classical"], ["paper", "differentiable"], suites)
    assert {c.grad_mode for c in dnn} == {None}
    assert [(c.attack, c.eps) for c in dnn] == [(c.attack, c.eps) for c in cnn]
    assert not {"bpda", "transfer-classical", "eot-pgd", "autoattack-rand"} & {c.attack for c in dnn}
    assert {"fgsm", "cw", "square", "autoattack"} <= {c.attack for c in dnn}


def _merge_many(path: str, prefix: str, count: int) -> None:
    for i in range(count):
        merge_record(path, {"key": f"{prefix}{i}", "attack": "none"})


def test_processes_filling_one_results_file_lose_no_cell(tmp_path):
    """Cells are independent jobs: two processes writing the same file keep every record."""
    import multiprocessing

    path = str(tmp_path / "results.json")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_merge_many, args=(path, prefix, 25)) for prefix in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    keys = sorted(r["key"] for r in load_results(path))
    assert keys == sorted(f"{p}{i}" for p in "ab" for i in range(25))
    merge_record(path, {"key": "a3", "attack": "fgsm"})  # the same key replaces, never duplicates
    records = load_results(path)
    assert len(records) == 50 and [r["attack"] for r in records if r["key"] == "a3"] == ["fgsm"]


def test_a_randomised_model_is_judged_over_several_draws():
    """The paper mode: draw 0 is the record's own figure; further draws re-classify the same adversarial
    images; a deterministic model gets no draws."""
    require_samples()
    from qshield_core import lab

    paper = lab.load("mnist", "hybrid-full", grad_mode="paper")
    points = evaluation_points("mnist", 20, source="samples")
    record = evaluate(paper.model, paper.card, points, "mnist", "hybrid-full", "paper", "fgsm", eps=0.2, draws=4,
                      batch_size=10)
    draws = record["draws"]
    assert draws["n_draws"] == 4 and len(draws["robust_accuracy"]["values"]) == 4
    assert draws["robust_accuracy"]["values"][0] == record["robust_accuracy"]
    assert draws["robust_every_draw"] <= min(draws["robust_accuracy"]["values"])
    again = evaluate(paper.model, paper.card, points, "mnist", "hybrid-full", "paper", "fgsm", eps=0.2, draws=4,
                     batch_size=10)
    assert again["draws"] == draws, "seeded: the same draws again"
    twin = lab.load("mnist", "hybrid-full", grad_mode="differentiable")
    plain = evaluate(twin.model, twin.card, points, "mnist", "hybrid-full", "differentiable", "fgsm", eps=0.2,
                     draws=4, batch_size=10)
    assert "draws" not in plain
    assert record["points"]["kind"] == "samples" and record["key"].endswith("/samples")
    assert len(record["points"]["indices"]) == 20
