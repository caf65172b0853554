"""Reports: the Markdown tables and the README's marked blocks, on hand-made records."""

import numpy as np
import pytest
from conftest import make_record

from qshield_core.report import (
    adaptive_table,
    hybrid_vs_classical_table,
    paper_summary_table,
    readme_blocks,
    render_markdown,
    update_marked_blocks,
)

PAPER = {"models": ["DNN", "CNN", "HQCNN-Full"], "attacks": ["FGSM", "PGD"],
         "attack_success_rate_percent": {"values": {"MNIST": [[1, 2], [47.29, 53.39], [23.76, 28.73]]}},
         "attack_seconds": {"values": {"MNIST": [[1, 1], [3.0, 10.0], [66.0, 470.0]]}}}


def test_markdown_puts_the_paper_next_to_ours():
    records = [make_record("classical", "pgd", 0.534), make_record("hybrid-full", "pgd", 0.96, mode="paper"),
               make_record("classical", "fgsm", 0.47), make_record("hybrid-full", "fgsm", 0.9, mode="paper")]
    text = render_markdown(records, paper=PAPER)
    assert "53.4 / **53.4**" in text  # agrees: the paper's figure inside our interval
    assert "HQCNN" not in text and "hybrid-full" in text
    assert "MNIST, hybrid-full, PGD: paper 28.7 % (of about 440), ours 96.0 % (of 990)" in text  # called out
    assert "MNIST, classical, PGD" not in text.split("differ by more than sampling noise")[1]
    assert "47x" in text  # the paper's hybrid/CNN attack time ratio for PGD
    assert "## All cells" in text


def test_sanity_section_flags_an_iterative_attack_that_stalls():
    sweep = [0.05, 0.1, 0.2, 0.3]
    records = ([make_record("classical", "apgd-ce", a, eps=e) for a, e in zip((0.5, 0.9, 1.0, 1.0), sweep, strict=True)]
               + [make_record("hybrid-full", "apgd-ce", a, eps=e, mode="paper")
                  for a, e in zip((0.3, 0.5, 0.6, 0.6), sweep, strict=True)]
               + [make_record("classical", "fgsm", a, eps=e) for a, e in zip((0.2, 0.5, 0.7, 0.8), sweep, strict=True)])
    text = render_markdown(records)
    section = text.split("### ASR (%) as epsilon grows")[1].split("###")[0]
    rows = {" ".join(line.split(" | ")[1:3]): line for line in section.splitlines() if line.startswith("| MNIST")}
    assert rows["classical APGD-CE"].endswith("| yes |")
    assert rows["hybrid-full (paper) APGD-CE"].endswith("| **no** (60.0) |"), "masking-like stall, flagged"
    assert "one step, not expected to" in rows["classical FGSM"]
    assert "| 20.0 | 50.0 (APGD-CE) | yes |" in text, "iterative >= FGSM at eps 0.05"


def test_paper_summary_lists_paper_and_ours_for_the_chosen_models():
    records = [make_record("classical", "pgd", 0.8), make_record("hybrid-full", "pgd", 0.5, mode="paper"),
               make_record("hybrid-none", "pgd", 0.6, mode="paper"),
               make_record("hybrid-full", "pgd", 0.1, mode="differentiable")]  # not the paper's protocol
    table = paper_summary_table(records, PAPER, models=("classical", "hybrid-full"))
    rows = [line for line in table.splitlines() if line.startswith("| MNIST")]
    assert [row.split(" | ")[1] for row in rows] == ["classical", "hybrid-full"]
    models = [line.split(" | ")[1] for line in paper_summary_table(records, PAPER).splitlines()[2:]]
    assert models == ["classical", "hybrid-none", "hybrid-full"], "every model of the paper by default"
    assert "| 53.4 / **80.0** |" in rows[0] and "| 28.7 / **50.0** |" in rows[1]
    assert "47.3 / -" in rows[0], "an attack not run shows the paper's figure and a dash"
    assert paper_summary_table([], PAPER) == ""


def test_paper_tables_have_a_dnn_row_when_a_dnn_record_exists():
    """The paper's DNN maps to ``dnn``: its row comes first (the paper's order), next to the paper's figure."""
    records = [make_record("classical", "pgd", 0.8), make_record("hybrid-full", "pgd", 0.5, mode="paper")]
    summary = paper_summary_table(records, PAPER)
    assert "| dnn |" not in summary and "| dnn |" not in render_markdown(records, paper=PAPER)
    records.append(make_record("dnn", "pgd", 0.7))
    rows = [line for line in paper_summary_table(records, PAPER).splitlines() if line.startswith("| MNIST")]
    assert [row.split(" | ")[1] for row in rows] == ["dnn", "classical", "hybrid-full"]
    assert "| 2.0 / **70.0** |" in rows[0] and "| 1.0 / - |" in rows[0], "the paper's DNN figures (FGSM 1, PGD 2)"
    section = render_markdown(records, paper=PAPER).split("### MNIST")[1].split("\n\n")[1]
    assert [line.split(" | ")[0] for line in section.splitlines()[2:]] == ["| dnn", "| classical", "| hybrid-full"]
    assert "MNIST, dnn, PGD: paper 2.0 %" in render_markdown(records, paper=PAPER), "a disagreement is called out"


MARKED = """# Title
<!-- qshield:paper-summary -->
old table
<!-- /qshield:paper-summary -->
prose kept
<!-- qshield:adaptive -->
<!-- /qshield:adaptive -->
"""


def test_marked_blocks_are_replaced_and_the_rest_is_kept():
    text = update_marked_blocks(MARKED, {"paper-summary": "| new |\n", "adaptive": "| a |"})
    assert "old table" not in text and text.count("| new |") == 1 and "| a |\n<!-- /qshield:adaptive -->" in text
    assert text.startswith("# Title\n<!-- qshield:paper-summary -->\n| new |\n<!-- /qshield:paper-summary -->")
    assert "prose kept" in text
    assert update_marked_blocks(text, {"paper-summary": "| new |\n"}) == text, "idempotent"


def test_missing_marker_is_an_error():
    with pytest.raises(ValueError, match="qshield:sanity"):
        update_marked_blocks(MARKED, {"sanity": "x"})


def test_readme_blocks_leave_out_tables_without_records():
    blocks = readme_blocks([make_record("classical", "pgd", 0.8)], PAPER)
    assert set(blocks) == {"paper-summary"}, "no adaptive record, so no adaptive table"
    adaptive = dict(make_record("hybrid-full", "apgd-ce", 0.9, mode="paper"), suite="adaptive")
    blocks = readme_blocks([make_record("hybrid-full", "pgd", 0.5, mode="paper"), adaptive], PAPER)
    row = blocks["adaptive"].splitlines()[2]
    assert row.startswith("| MNIST | hybrid-full (paper) | 50.0 ") and "**90.0**" in row
    assert "(apgd-ce, n = 1000)" in row


def test_a_gap_within_both_samples_noise_is_not_called_a_disagreement():
    """The paper's 53.4 % lies outside our interval for 58 % of 990 points, not outside both samples' noise."""
    paper = dict(PAPER, clean_accuracy={"test": {"MNIST": [0.97, 0.99, 0.99]}})
    text = render_markdown([make_record("classical", "pgd", 0.58), make_record("classical", "fgsm", 0.60)], paper=paper)
    ours = next(line for line in text.splitlines() if line.startswith("| classical"))
    assert "53.4 / **58.0** [54.9, 61.0]" in ours, "the paper's figure is outside our own interval"
    assert "MNIST, classical, PGD" not in text
    assert "MNIST, classical, FGSM: paper 47.3 % (of about 436), ours 60.0 % (of 990); difference +12.7" in text


def _with_points(record: dict, indices: list[int], clean: list[int], adv: list[int]) -> dict:
    """``record`` on the test points ``indices`` with the given per-point outcomes (1 = correct)."""
    def bits(values: list[int]) -> str:
        return np.packbits(np.array(values, dtype=np.uint8)).tobytes().hex()

    return dict(record, n=len(clean), suite="adaptive", points={"indices": indices, "kind": "test"},
                per_point={"clean_correct": bits(clean), "adv_correct": bits(adv)})


def test_worst_case_is_per_point_over_the_points_every_attack_saw():
    base = make_record("hybrid-full", "apgd-ce", 0.5, mode="paper")
    big = list(range(10))
    small = [0, 2, 4, 6, 8]  # nested in ``big``, as the seeded subsets are
    records = [
        _with_points(dict(base, attack="apgd-ce"), big, [1] * 10, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]),
        _with_points(dict(base, attack="autoattack"), small, [1] * 5, [0, 1, 1, 1, 1]),  # fools point 0
        _with_points(dict(base, attack="square"), big, [1] * 10, [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]),  # fools 4
    ]
    row = next(line for line in adaptive_table(records).splitlines() if line.startswith("| MNIST"))
    # on points 0, 2, 4, 6, 8: apgd-ce fools 6 and 8, autoattack 0, square 4: only point 2 survives all
    assert row.endswith("| 20.0 [3.6, 62.4] (3 attacks, n = 5) |"), row


def test_each_hybrid_meets_its_own_classical_model_on_the_points_both_saw():
    """resnet18-hybrid-full against resnet18 (not our classical), on the 5 points both AutoAttack cells saw."""
    cnn_points, hybrid_points = list(range(10)), [0, 2, 4, 6, 8]
    records = [
        _with_points(make_record("resnet18", "autoattack", 0.5), cnn_points, [1] * 10, [1, 0] * 5),
        _with_points(make_record("classical", "autoattack", 0.5), cnn_points, [1] * 10, [0] * 10),
        _with_points(make_record("resnet18-hybrid-full", "autoattack", 0.5, mode="paper"), hybrid_points,
                     [1] * 5, [1, 1, 0, 0, 0]),
    ]
    rows = [line for line in hybrid_vs_classical_table(records).splitlines() if line.startswith("| MNIST")]
    autoattack = next(r for r in rows if "| AutoAttack |" in r)
    # on points 0, 2, 4, 6, 8: resnet18 keeps all five, its hybrid 0 and 2
    assert "| resnet18-hybrid-full (paper) | resnet18 | 32/255 | AutoAttack | 5 | 100.0 " in autoattack
    assert "| 40.0 [11.8, 76.9] | -60.0 [" in autoattack and autoattack.endswith("| below |")
    assert len(rows) == 2, "AutoAttack and the worst case over every attack, at MNIST's paper eps only here"
    on_samples = [dict(r, points=dict(r["points"], kind="samples")) if r["model"] == "resnet18" else r
                  for r in records]
    assert "resnet18-hybrid-full" not in hybrid_vs_classical_table(on_samples), \
        "a hybrid on the test split is not paired with a classical model measured on the shipped samples"


def test_a_hybrid_also_meets_the_extra_epoch_control_of_its_classical_model():
    """resnet18@extra-epoch (resnet18 trained the hybrid's extra epoch, no circuit) gets its own rows beside
    resnet18's, on the points both saw, and the table says what the control is; without its records, no rows."""
    points = [0, 2, 4, 6, 8]
    records = [
        _with_points(make_record("resnet18", "autoattack", 0.5), points, [1] * 5, [0] * 5),
        _with_points(make_record("resnet18@extra-epoch", "autoattack", 0.5), points, [1] * 5, [1, 1, 1, 0, 0]),
        _with_points(make_record("resnet18-hybrid-full", "autoattack", 0.5, mode="paper"), points,
                     [1] * 5, [1, 1, 1, 0, 0]),
    ]
    table = hybrid_vs_classical_table(records)
    assert [r.split(" | ")[2] for r in table.splitlines() if r.startswith("| MNIST")] == [
        "resnet18", "resnet18", "resnet18@extra-epoch"], "the control meets AutoAttack only: no every-attack row"
    rows = [line for line in table.splitlines() if line.startswith("| MNIST") and "| AutoAttack |" in line]
    assert [r.split(" | ")[2] for r in rows] == ["resnet18", "resnet18@extra-epoch"]
    assert "| +60.0 [" in rows[0] and rows[0].endswith("| **above** |")
    assert "| +0.0 [" in rows[1] and rows[1].endswith("| within |"), "above resnet18, not above its control"
    assert "`train --recipe extra-epoch`" in table
    without = hybrid_vs_classical_table(records[:1] + records[2:])
    assert "extra-epoch" not in without and "| resnet18 |" in without


# --------------------------------------------------------------------------- the ResNet-18 rows

PAPER_TWO = {"models": ["DNN", "CNN", "HQCNN-Full"], "attacks": ["FGSM", "PGD"],
             "attack_success_rate_percent": {"values": {
                 "MNIST": [[1, 2], [47.29, 53.39], [23.76, 28.73]],
                 "OrganAMNIST": [[3, 4], [53.37, 64.77], [43.01, 59.1]]}},
             "attack_seconds": {"values": {"MNIST": [[1, 1], [3, 10], [66, 470]],
                                           "OrganAMNIST": [[1, 1], [3, 9], [50, 400]]}}}


def resnet18_records() -> list[dict]:
    """Ours and the ResNet-18 models, PGD on MNIST and OrganAMNIST (the paper's eps of each)."""
    records = []
    for dataset, eps in (("mnist", 32 / 255), ("organamnist", 8 / 255)):
        records += [make_record("classical", "pgd", 0.8, dataset, eps),
                    make_record("resnet18", "pgd", 0.56, dataset, eps),
                    make_record("hybrid-full", "pgd", 0.5, dataset, eps, mode="paper"),
                    make_record("resnet18-hybrid-full", "pgd", 0.3, dataset, eps, mode="paper")]
    return records


def table_rows(section: str) -> list[str]:
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_the_paper_table_shows_the_resnet18_rows_beside_ours_with_intervals():
    """Each ResNet-18 row sits next to the model of ours it compares with, against the paper's CNN and HQCNN-Full
    (the paper's CNN is a ResNet-18), with its interval; the note says it was trained from scratch."""
    text = render_markdown(resnet18_records(), paper=PAPER_TWO, command="python -m qshield_core table r.json")
    assert "Regenerate with: `python -m qshield_core table r.json`" in text
    for dataset, cnn_pgd, hybrid_pgd in (("MNIST", "53.4", "28.7"), ("OrganAMNIST", "64.8", "59.1")):
        section = text.split(f"### {dataset} (")[1].split("###")[0].split("## ")[0]
        rows = table_rows(section)
        assert [row.split(" | ")[0] for row in rows] == ["| classical", "| resnet18", "| hybrid-full",
                                                         "| resnet18-hybrid-full"]
        assert f"| {cnn_pgd} / **56.0** [" in rows[1] and f"| {hybrid_pgd} / **30.0** [" in rows[3]
        assert "trained from scratch (no ImageNet weights)" in section
    assert "MNIST, resnet18, PGD: paper 53.4 % (of about 440), ours 56.0 % (of 990)" not in text  # within the noise
    assert "MNIST, resnet18-hybrid-full, PGD: paper 28.7 %" not in text
    assert "OrganAMNIST, resnet18-hybrid-full, PGD: paper 59.1 % (of about 440), ours 30.0 %" in text


def test_the_readme_summary_shows_the_resnet18_rows_only_when_they_have_records():
    records = resnet18_records()
    summary = paper_summary_table(records, PAPER_TWO)
    rows = [line for line in summary.splitlines() if line.startswith("| MNIST")]
    assert [row.split(" | ")[1] for row in rows] == ["classical", "resnet18", "hybrid-full", "resnet18-hybrid-full"]
    assert "| 53.4 / **56.0** |" in rows[1] and "trained from scratch (no ImageNet weights)" in summary
    ours = [r for r in records if not r["model"].startswith("resnet18")]
    assert "resnet18" not in paper_summary_table(ours, PAPER_TWO) and "ImageNet" not in render_markdown(ours, PAPER_TWO)


def test_the_adaptive_table_says_how_the_resnet18_was_trained():
    aa = dict(make_record("resnet18", "autoattack", 0.99), suite="adaptive")
    assert "trained from scratch (no ImageNet weights)" in adaptive_table([aa])
    assert "ImageNet" not in adaptive_table([dict(make_record("classical", "autoattack", 0.99), suite="adaptive")])
