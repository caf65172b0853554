"""Records: the one rule that picks a cell's record, per-point comparisons, keys, files."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from conftest import make_record, require_samples

from qshield_core.evaluation import (
    cell_key,
    compare_on_shared_points,
    difference_interval,
    evaluation_points,
    load_results,
    merge_record,
    paired_difference_interval,
    plan_cells,
    resolve_source,
    save_results,
    select_record,
    strongest,
    worst_case,
)


def _on(record: dict, indices: list[int], adv: list[int], clean: list[int] | None = None, kind: str = "test") -> dict:
    clean = clean or [1] * len(indices)
    bits = lambda v: np.packbits(np.array(v, dtype=np.uint8)).tobytes().hex()
    return dict(record, n=len(indices), points={"indices": indices, "kind": kind},
                per_point={"clean_correct": bits(clean), "adv_correct": bits(adv)})


def test_worst_case_intersects_nested_point_sets_and_counts_a_point_robust_only_if_it_survives_all():
    base = make_record("hybrid-full", "pgd", 0.5, mode="paper")
    a = _on(dict(base, attack="pgd"), [1, 3, 5, 7, 9, 11], [1, 0, 1, 1, 1, 1])  # fools 3
    b = _on(dict(base, attack="square"), [3, 5, 9], [1, 1, 0])  # fools 9; saw only 3 of a's points
    case = worst_case([a, b])
    assert case.n == 3 and case.attacks == ("pgd", "square")
    assert case.robust_accuracy == pytest.approx(1 / 3), "only point 5 survives both"
    assert case.per_attack == {"pgd": pytest.approx(2 / 3), "square": pytest.approx(2 / 3)}
    wrong_before = _on(dict(base, attack="fgsm"), [3, 5, 9], [1, 1, 1], clean=[1, 0, 1])
    assert worst_case([a, b, wrong_before]).robust_accuracy == 0.0, "a point wrong before the attack is not robust"


def test_the_worst_case_is_never_above_any_attack_on_the_same_points():
    rng = np.random.default_rng(0)
    base = make_record("classical", "pgd", 0.5)
    indices = list(range(0, 400, 2))
    records = [_on(dict(base, attack=f"a{i}"), indices[: 200 - 40 * i], rng.integers(0, 2, 200 - 40 * i).tolist())
               for i in range(4)]
    case = worst_case(records)
    assert case.n == 80
    assert case.robust_accuracy <= min(case.per_attack.values())


def test_the_paired_interval_is_the_independent_one_when_the_outcomes_are_uncorrelated():
    assert paired_difference_interval(25, 25, 25, 25) == pytest.approx(difference_interval(50, 100, 50, 100))


def test_outcomes_that_agree_point_by_point_narrow_the_interval_of_their_difference():
    """a survives on 50 points, b on 45 of those same 50: independent samples could not tell them apart, paired
    outcomes can (every point b keeps, a keeps too)."""
    low, high = paired_difference_interval(45, 5, 0, 50)
    assert 0 < low < 0.05 < high
    assert difference_interval(50, 100, 45, 100)[0] < 0


def test_the_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Newcombe's method 10 is close to nominal on paired data (the independent-samples interval on the same
    draws covers every time: too wide, it would fail this)."""
    rng = np.random.default_rng(0)
    cells, n, truth = [0.10, 0.05, 0.02, 0.83], 200, 0.05 - 0.02
    tables = rng.multinomial(n, cells, size=2000)
    covered = [low <= truth <= high for low, high in (paired_difference_interval(*t) for t in tables.tolist())]
    assert 0.93 <= np.mean(covered) <= 0.98


def test_two_models_are_compared_only_on_the_points_both_saw():
    hybrid = _on(make_record("hybrid-full", "autoattack", 0.5, mode="paper"), [0, 2, 4, 6], [1, 1, 1, 0])
    cnn = _on(make_record("classical", "autoattack", 0.5), [0, 1, 2, 3, 4, 5], [0, 1, 1, 1, 0, 1])
    paired = compare_on_shared_points(worst_case([hybrid]), worst_case([cnn]))
    # shared points 0, 2, 4: the hybrid keeps all three, the CNN only point 2
    assert paired.n == 3 and paired.accuracy_a == 1.0 and paired.accuracy_b == pytest.approx(1 / 3)
    assert paired.difference == pytest.approx(2 / 3)
    assert paired.difference_ci == pytest.approx(paired_difference_interval(1, 2, 0, 0))
    on_samples = worst_case([_on(cnn, [0, 2, 4], [1, 1, 1], kind="samples")])
    with pytest.raises(ValueError, match="different sources of points"):
        compare_on_shared_points(worst_case([hybrid]), on_samples)
    elsewhere = worst_case([_on(cnn, [1, 3, 5], [1, 1, 1])])
    assert compare_on_shared_points(worst_case([hybrid]), elsewhere) is None


def test_strongest_attack_is_compared_on_the_same_points():
    base = make_record("classical", "pgd", 0.5)
    # on its own 4 points, x leaves 25 % robust, y 50 % of its 2 points, but on their 2 shared points x leaves
    # both robust and y only one: y is stronger where they can be compared
    x = _on(dict(base, attack="x"), [0, 1, 2, 3], [1, 1, 0, 0])
    y = _on(dict(base, attack="y"), [0, 1], [1, 0])
    record, case = strongest([x, y])
    assert record["attack"] == "y" and case.n == 2


def test_points_of_different_sources_are_not_combined():
    base = make_record("classical", "pgd", 0.5)
    with pytest.raises(ValueError, match="different sources"):
        worst_case([_on(base, [1, 2], [1, 1]), _on(base, [1, 2], [1, 0], kind="samples")])


def test_one_rule_picks_a_cells_record():
    full = dict(make_record("classical", "pgd", 0.5), points={"kind": "test"})
    quick = dict(full, n=100)
    budget = dict(full, n=5000, app_budget={"steps": 5})
    samples = dict(full, n=5000, points={"kind": "samples"})
    assert select_record([quick, full, budget, samples]) is full
    assert select_record([quick, budget]) is quick, "the preset budget wins over a lowered one"
    assert select_record([samples, quick]) is quick, "the test split wins over the shipped samples"
    assert select_record([]) is None


def test_a_cell_on_the_shipped_samples_is_keyed_as_such(tmp_path):
    require_samples()
    assert resolve_source("mnist", "auto", str(tmp_path)) == "samples", "no dataset under this root"
    cells = plan_cells(["mnist"], ["classical"], [None], ["fgsm"], n=20, source="auto", data_root=str(tmp_path))
    assert [c.key for c in cells] == [cell_key("mnist", "classical", None, "fgsm", 32 / 255, 20, 0, source="samples")]
    points = evaluation_points("mnist", 20, source="auto", data_root=str(tmp_path))
    assert points.kind == "samples" and len(points.indices) == 20
    with pytest.raises(ValueError, match="resolved source"):
        cell_key("mnist", "classical", None, "fgsm", 0.1, 20, 0, source="auto")


def test_seeded_subsets_are_nested():
    require_samples()
    small, large = (evaluation_points("organamnist", n, seed=3, source="samples") for n in (22, 55))
    assert set(small.indices) < set(large.indices)


def test_results_files_keep_indices_on_one_line_and_merge_under_a_lock(tmp_path):
    path = tmp_path / "r.json"
    records = [dict(make_record("classical", "pgd", 0.5), key=f"k{i}", points={"indices": list(range(50))})
               for i in range(3)]
    save_results(path, records[:1])
    assert "[0,1,2,3" in path.read_text()
    threads = [threading.Thread(target=merge_record, args=(path, r)) for r in records[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["key"] for r in load_results(path)) == ["k0", "k1", "k2"]
    assert json.loads(path.read_text())["records"][0]["points"]["indices"] == list(range(50))
