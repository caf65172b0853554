"""The study report over seeds (qshield_core.studies) and its command, on hand-made per-point records."""

from __future__ import annotations

import numpy as np
import pytest

from qshield_core.cli import main
from qshield_core.evaluation import pack_bits, save_results, wilson_interval
from qshield_core.studies import (
    ADVTRAIN_CONTROL,
    ADVTRAIN_EPS,
    advtrain_control_tables,
    advtrain_markdown,
    design_study_markdown,
    ordering_check,
    seed_study_markdown,
    split_seed,
    study_results,
    study_table,
    verdict,
)

N = 500
EPS = 32 / 255  # MNIST's paper eps


def record(model: str, attack: str, robust: set[int], mode: str | None = None, correct: set[int] | None = None,
           dataset: str = "mnist") -> dict:
    """A record on points 0..N-1: ``correct`` classified right before (default all), ``robust`` also after."""
    correct = set(range(N)) if correct is None else correct
    clean = np.array([i in correct for i in range(N)])
    adv = np.array([i in robust for i in range(N)]) & clean
    k_clean, k_adv = int(clean.sum()), int(adv.sum())
    per_point = {"clean_correct": pack_bits(clean)}
    if attack != "none":
        per_point["adv_correct"] = pack_bits(adv)
    return {"key": f"{dataset}/{model}/{mode or '-'}/{attack}/n={N}", "dataset": dataset, "model": model,
            "grad_mode": mode, "attack": attack, "eps": None if attack == "none" else EPS, "n": N,
            "clean_accuracy": k_clean / N, "robust_accuracy": k_adv / N,
            "robust_accuracy_ci": list(wilson_interval(k_adv, N)),
            "asr": None if attack == "none" else (k_clean - k_adv) / k_clean,
            "points": {"kind": "test", "indices": list(range(N))}, "per_point": per_point}


def design(name: str, seed: int, pgd: set[int], aa: set[int], transfer: set[int] | None = None) -> list[dict]:
    model = f"hybrid-{name}-s{seed}"
    mode = "differentiable"
    return [record(model, "none", set(), mode), record(model, "pgd", pgd, mode),
            record(model, "transfer-classical", set(range(N)) if transfer is None else transfer, mode),
            record(model, "autoattack", aa, mode)]


CNN = [record("classical", "none", set()), record("classical", "pgd", set(range(100))),
       record("classical", "autoattack", set(range(50)))]


def test_seed_names_split():
    assert split_seed("hybrid-depth3-trainable-p0.05-s12") == ("hybrid-depth3-trainable-p0.05", 12)
    assert split_seed("classical") == ("classical", None)
    assert split_seed("hybrid-s-shaped") == ("hybrid-s-shaped", None)


def test_the_worst_case_is_taken_per_point_over_every_attack_of_a_seed():
    # PGD leaves points 0-99 robust, AutoAttack 50-149: each alone leaves 100, together only 50-99 survive
    records = CNN + design("x", 0, pgd=set(range(100)), aa=set(range(50, 150)))
    results = study_results(records, "mnist")
    assert list(results) == [("classical", None), ("hybrid-x", "differentiable")]
    seed = results[("hybrid-x", "differentiable")][0]
    assert seed.seed == 0 and seed.clean == 1.0 and seed.pgd_asr == pytest.approx(0.8)
    assert seed.autoattack["robust_accuracy"] == pytest.approx(0.2)
    assert seed.worst.robust_accuracy == pytest.approx(50 / N) and seed.worst.n == N
    cnn = results[("classical", None)][0]
    assert cnn.worst.robust_accuracy == pytest.approx(50 / N)  # AutoAttack's 0-49 within PGD's


def test_a_design_is_above_the_cnn_only_when_every_seed_is_beyond_the_interval():
    strong = [r for s in range(3) for r in design("strong", s, pgd=set(range(300)), aa=set(range(250)))]
    mixed = [r for s, k in enumerate((250, 55, 55)) for r in design("mixed", s, pgd=set(range(k)), aa=set(range(k)))]
    results = study_results(CNN + strong + mixed, "mnist")
    text = design_study_markdown(CNN + strong + mixed)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "**above**, every seed" in rows["strong"] and "+40.0" in rows["strong"]
    assert "no: within (1 of 3 seeds above)" in rows["mixed"]
    assert "50.0 ± 0.0" in rows["strong"]  # AutoAttack: 250 of 500 on each seed
    assert rows["classical"].rstrip().endswith("baseline |")
    assert len(results[("hybrid-strong", "differentiable")]) == 3


def test_verdicts_say_what_is_missing():
    assert verdict([]) == "-"
    assert verdict([None, None]) == "pending (0 of 2 seeds)"
    assert verdict([(0.1, (0.05, 0.15)), None]) == "pending (1 of 2 seeds)"
    assert verdict([(-0.1, (-0.15, -0.05))]) == "below, every seed (1)"
    assert verdict([(0.0, (-0.05, 0.05))]) == "no: within"


def test_records_elsewhere_are_left_out():
    other_eps = [dict(r, eps=0.3) for r in design("x", 0, pgd=set(), aa=set()) if r["attack"] != "none"]
    samples = [dict(r, points=dict(r["points"], kind="samples")) for r in design("y", 0, set(), set())]
    table = study_table(CNN + other_eps + samples, "mnist")
    assert "| classical |" in table and "| x |" not in table and "| y |" not in table
    assert study_table(CNN, "organamnist") == ""


def test_the_advtrain_table_has_one_row_per_gradient_mode_beside_the_defended_cnn():
    eps = ADVTRAIN_EPS["mnist"]
    cnn = [dict(r, model="classical@pgd-at", eps=None if r["eps"] is None else eps) for r in CNN]
    hybrid = [dict(r, eps=None if r["eps"] is None else eps, grad_mode=mode, model="hybrid-full@pgd-at")
              for mode in ("paper", "differentiable") for r in design("x", 0, set(range(55)), set(range(55)))]
    text = advtrain_markdown(cnn + hybrid)
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1:3] for r in rows] == [[" classical@pgd-at ", " - "],
                                                 [" hybrid-full@pgd-at ", " differentiable "],
                                                 [" hybrid-full@pgd-at ", " paper "]]
    assert "76.5/255" in text and "no: within" in rows[1] and rows[0].rstrip().endswith("baseline |")


def test_the_advtrain_tables_compare_every_model_with_the_extra_epoch_control_once_it_has_run():
    """classical@pgd-at-extra-epoch (the defended CNN trained the hybrid's extra epoch, no circuit) keeps 60 of
    500 points where the defended CNN keeps 50 and the hybrid 60: the hybrid is above the CNN, within its control."""
    eps = ADVTRAIN_EPS["mnist"]

    def at_eps(rows: list[dict], **fields) -> list[dict]:
        return [dict(r, eps=None if r["eps"] is None else eps, **fields) for r in rows]

    cnn = at_eps(CNN, model="classical@pgd-at")
    control = at_eps([r for r in design("x", 0, set(range(60)), set(range(60))) if r["attack"] != "transfer-classical"],
                     model=ADVTRAIN_CONTROL, grad_mode=None)
    hybrid = at_eps(design("x", 0, set(range(60)), set(range(60))), grad_mode="paper", model="hybrid-full@pgd-at")
    without = advtrain_markdown(cnn + hybrid)
    assert "extra-epoch control" not in without
    before_autoattack = advtrain_markdown(cnn + [r for r in control if r["attack"] != "autoattack"] + hybrid)
    assert "extra-epoch control" not in before_autoattack and "| classical@pgd-at-extra-epoch |" in before_autoattack
    assert advtrain_control_tables(cnn + hybrid, "mnist") == []
    assert advtrain_control_tables(cnn + control + hybrid, "organamnist") == [], "the control ran on MNIST only"
    [(heading, _, options)] = advtrain_control_tables(cnn + control + hybrid, "mnist")
    assert "extra-epoch control" in heading and options == {"eps": eps, "baseline": ADVTRAIN_CONTROL}
    text = advtrain_markdown(cnn + control + hybrid)
    first, second = text.split("Against the extra-epoch control")
    rows = {line.split("|")[1].strip(): line for line in first.splitlines() if line.startswith("| ")}
    assert "**above**" in rows["hybrid-full@pgd-at"] and "**above**" in rows[ADVTRAIN_CONTROL]
    rows = {line.split("|")[1].strip(): line for line in second.splitlines() if line.startswith("| ")}
    assert "no: within" in rows["hybrid-full@pgd-at"] and rows[ADVTRAIN_CONTROL].rstrip().endswith("baseline |")
    assert "below" in rows["classical@pgd-at"]


def test_the_study_command_writes_the_table_and_the_readme_block(tmp_path, capsys):
    results = tmp_path / "design-study.json"
    save_results(results, CNN + design("x", 0, pgd=set(range(100)), aa=set(range(50, 150))))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- qshield:design-study -->\nold\n<!-- /qshield:design-study -->\nend\n")
    out = tmp_path / "design-study.md"
    assert main(["study", "design", str(results), "--out", str(out), "--readme", str(readme)]) == 0
    assert "| x | differentiable | 1 |" in out.read_text()
    text = readme.read_text()
    assert "old" not in text and "| x | differentiable | 1 |" in text and text.endswith("end\n")
    missing = tmp_path / "nope.md"
    out.unlink()
    assert main(["study", "design", str(results), "--out", str(out), "--readme", str(missing)]) == 2
    assert "File to update not found" in capsys.readouterr().err and not out.exists()


def test_the_app_does_not_merge_a_studys_cells_into_the_shipped_models(tmp_path):
    from qshield_core import lab

    save_results(tmp_path / "adaptive.json", CNN[2:])
    save_results(tmp_path / "design-study.json", CNN)  # the same CNN on the study's own points
    (tmp_path / "bench.json").write_text("{}")  # not results: passed over
    records, problems = lab.load_results(tmp_path)
    assert problems == [] and [r["source_file"] for r in records] == ["adaptive.json"]


@pytest.mark.parametrize("grid", ["design-study", "advtrain", "seed-study"])
def test_every_study_grid_writes_a_file_the_app_leaves_out(grid):
    """A study's grid writes its own results file; the app must not read it as the shipped models' cells."""
    import tomllib

    from qshield_core import lab
    from qshield_core.data import REPO_ROOT

    stages = tomllib.loads((REPO_ROOT / "grids" / f"{grid}.toml").read_text())["stage"]
    outs = {stage["out"].rpartition("/")[2] for stage in stages}
    assert outs and outs <= set(lab.STUDY_FILES), outs


def test_the_seed_study_says_whether_the_papers_ordering_stands_outside_the_seed_spread():
    def seeds(model: str, robust_counts: list[int]) -> list[dict]:
        """Clean and PGD in the paper's mode; AutoAttack and a PGD the ordering must not read, differentiable."""
        paper = [dict(r, grad_mode="paper") for s, k in enumerate(robust_counts)
                 for r in design("x", s, pgd=set(range(k)), aa=set(range(k)))[:2]
                 for r in [dict(r, model=f"{model}@scratch-s{s}")]]
        differentiable = [dict(r, model=f"{model}@scratch-s{s}") for s in range(len(robust_counts))
                          for r in design("x", s, pgd=set(), aa=set(range(10))) if r["attack"] in ("pgd", "autoattack")]
        return paper + differentiable
    cnn = [dict(r, model="classical@scratch-s0") for r in CNN]
    # PGD robust counts rise none < linear < star < full, so ASR falls: the paper's ordering, well apart
    clear = (seeds("hybrid-none", [100, 102, 98]) + seeds("hybrid-linear", [200, 204, 196])
             + seeds("hybrid-star", [300, 302, 298]) + seeds("hybrid-full", [400, 404, 396]))
    text = seed_study_markdown(cnn + clear)
    assert "It stands outside the seed-to-seed spread" in text and "none - linear: +20.0" in text
    backwards = dict(reversed(study_results(cnn + clear, "mnist", "classical@scratch").items()))
    assert [round(100 * p[2], 1) for p in ordering_check(backwards)] == [20.0, 20.0, 20.0], \
        "the ordering reads the paper mode's PGD, whichever row comes first"
    noisy = (seeds("hybrid-none", [100, 300, 200]) + seeds("hybrid-linear", [210, 110, 290])
             + seeds("hybrid-star", [300, 302, 298]) + seeds("hybrid-full", [400, 404, 396]))
    assert "does not stand outside" in seed_study_markdown(cnn + noisy)
    assert "not enough seeds" in seed_study_markdown(cnn + seeds("hybrid-none", [100]))


def test_a_seed_without_autoattack_has_no_worst_case_and_no_verdict_yet():
    partial = [r for r in design("x", 0, pgd=set(range(400)), aa=set()) if r["attack"] != "autoattack"]
    rows = {line.split("|")[1].strip(): line for line in study_table(CNN + partial, "mnist").splitlines()
            if line.startswith("| ")}
    cells = [c.strip() for c in rows["x"].split("|")[1:-1]]
    assert cells[6:] == ["-", "-", "·", "pending (0 of 1 seeds)"]


def test_the_seed_study_pairs_each_seed_with_the_cnn_of_its_seed_and_its_paper_rows_point_to_autoattack():
    """A CNN trained over seeds: hybrid seed k is judged against CNN seed k (here seed 1's CNN is weak, so only
    hybrid seed 1 is above it). The paper-mode rows, which the seed study does not attack with AutoAttack, say
    where their AutoAttack is instead of "pending"."""
    cnn = [dict(r, model=f"classical@scratch-s{s}") for s, k in ((0, 300), (1, 10))
           for r in (record("x", "none", set()), record("x", "autoattack", set(range(k))))]
    hybrid = [dict(r, model=f"hybrid-full@scratch-s{s}") for s in (0, 1)
              for r in (record("x", "none", set(), "paper"), record("x", "pgd", set(range(200)), "paper"),
                        record("x", "autoattack", set(range(200)), "differentiable"))]
    rows = {(cells[0], cells[1]): cells for line in seed_study_markdown(cnn + hybrid).splitlines()
            if line.startswith("| hybrid") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    differentiable = rows[("hybrid-full@scratch", "differentiable")]
    assert differentiable[8].startswith("-20.0 ") and "+38.0 " in differentiable[8]  # 200 - 300, 200 - 10 of 500
    assert differentiable[9] == "no: within (1 of 2 seeds above)"
    assert rows[("hybrid-full@scratch", "paper")][8:] == ["-", "- (AutoAttack: the differentiable row)"]


def test_a_paper_row_whose_autoattack_mode_has_not_run_says_so_instead_of_pointing_to_a_missing_row():
    cnn = [dict(r, model="classical@scratch-s0") for r in (record("x", "none", set()), record("x", "pgd", set()))]
    hybrid = [dict(r, model="hybrid-full@scratch-s0")
              for r in (record("x", "none", set(), "paper"), record("x", "pgd", set(range(200)), "paper"))]
    rows = {(cells[0], cells[1]): cells for line in seed_study_markdown(cnn + hybrid).splitlines()
            if line.startswith("| hybrid") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert set(rows) == {("hybrid-full@scratch", "paper")}
    assert rows[("hybrid-full@scratch", "paper")][9] == "- (AutoAttack: on the differentiable mode, not run yet)"


def test_a_column_that_only_some_seeds_have_reached_says_how_many():
    cnn = [dict(r, model=f"classical@scratch-s{s}") for s in (0, 1)
           for r in (record("x", "none", set()), record("x", "pgd", set()))]
    cnn.append(dict(record("x", "autoattack", set(range(100))), model="classical@scratch-s0"))
    rows = {cells[0]: cells for line in seed_study_markdown(cnn).splitlines() if line.startswith("| classical")
            for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert rows["classical@scratch"][6] == "20.0 (1 of 2 seeds)"


def test_a_mode_that_fewer_seeds_have_reached_says_how_many_of_the_models_seeds():
    """Three seeds ran the paper protocol, one AutoAttack: the differentiable row says "1 of 3", not "1", and
    its verdict waits for the other two."""
    hybrid = [dict(r, model=f"hybrid-full@scratch-s{s}") for s in (0, 1, 2)
              for r in (record("x", "none", set(), "paper"), record("x", "pgd", set(range(200)), "paper"))]
    hybrid.append(dict(record("x", "autoattack", set(range(100)), "differentiable"), model="hybrid-full@scratch-s0"))
    cnn = [dict(r, model="classical@scratch-s0") for r in (record("x", "none", set()),
                                                           record("x", "autoattack", set(range(100))))]
    rows = {cells[1]: cells for line in seed_study_markdown(cnn + hybrid).splitlines()
            if line.startswith("| hybrid") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    assert rows["paper"][2] == "3"
    assert rows["differentiable"][2] == "1 of 3"
    assert rows["differentiable"][9] == "pending (1 of 3 seeds)"


def test_a_seed_missing_in_the_middle_leaves_its_own_place_empty():
    """Seeds 0 and 2 met AutoAttack, seed 1 not yet: the per-seed differences stand under seeds 0, 1, 2 as
    "+x; ·; +y", not "+x; +y; ·"."""
    hybrid, cnn = [], []
    for seed, kept in ((0, 110), (1, None), (2, 150)):
        name = f"hybrid-full@scratch-s{seed}"
        hybrid += [dict(r, model=name) for r in (record("x", "none", set(), "paper"),
                                                 record("x", "pgd", set(range(200)), "paper"))]
        if kept is not None:
            hybrid.append(dict(record("x", "autoattack", set(range(kept)), "differentiable"), model=name))
        cnn += [dict(r, model=f"classical@scratch-s{seed}") for r in (record("x", "none", set()),
                                                                      record("x", "autoattack", set(range(100))))]
    rows = {cells[1]: cells for line in seed_study_markdown(cnn + hybrid).splitlines()
            if line.startswith("| hybrid") for cells in [[c.strip() for c in line.split("|")[1:-1]]]}
    differences = rows["differentiable"][8].split("; ")
    assert differences[0].startswith("+2.0") and differences[1] == "·" and differences[2].startswith("+10.0")
    assert rows["differentiable"][2] == "2 of 3" and rows["differentiable"][9] == "pending (2 of 3 seeds)"


def test_the_title_says_no_worst_case_is_complete_rather_than_an_empty_n():
    cnn_without_autoattack = [r for r in CNN if r["attack"] != "autoattack"]
    title = study_table(cnn_without_autoattack, "mnist").splitlines()[0]
    assert "no model's worst case complete yet" in title and "n = -" not in title
    assert f"n = {N} test points" in study_table(CNN, "mnist").splitlines()[0]
