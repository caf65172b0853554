"""The command line: clear one-line errors with exit code 2, evaluate -> JSON -> table, info, draw."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_record, require_samples

from qshield_core.cli import main
from qshield_core.models import build_model
from qshield_core.zoo import save_model


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    save_model(build_model("mnist", "classical"), {"dataset": "mnist", "model": "classical",
                                                   "clean_test_accuracy": 0.1, "n_test": 10},
               "mnist", "classical", tmp_path / "models")
    return tmp_path / "models"


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "imagenet", "--model", "classical"], "Unknown dataset 'imagenet'"),
    (["--dataset", "cifar10", "--model", "classical", "--attack", "pgd", "--eps", "0.3"], "out of range for CIFAR-10"),
    (["--dataset", "mnist", "--model", "classical", "--attack", "pgd", "--eps", "128/255"], "out of range for MNIST"),
    (["--dataset", "mnist", "--model", "classical", "--attack", "nuke"], "Unknown attack 'nuke'"),
    (["--dataset", "mnist", "--model", "hybrid-full", "--attack", "bpda", "--grad-mode", "differentiable"],
     "No cell to run"),
    (["--dataset", "mnist", "--model", "classical", "--n", "0"], "--n must be at least 1"),
])
def test_bad_input_gives_one_error_line_and_exit_2(argv, message, tmp_path, capsys):
    code, _, err = run(["evaluate", *argv, "--json", tmp_path / "out.json"], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    require_samples()
    code, _, err = run(["evaluate", "--dataset", "mnist", "--model", "classical", "--n", "5", "--source", "samples",
                        "--model-dir", tmp_path / "empty", "--json", tmp_path / "out.json", "--quiet"], capsys)
    assert code == 2 and "Model card not found" in err and "mnist-classical.json" in err


def test_evaluate_writes_records_and_table_renders_them(tmp_path, model_dir, capsys):
    require_samples()
    out = tmp_path / "r.json"
    argv = ["evaluate", "--dataset", "mnist", "--model", "classical", "--attack", "none", "fgsm", "--eps", "8/255",
            "0.1", "--n", "10", "--source", "samples", "--model-dir", model_dir, "--json", out, "--quiet",
            "--markdown", tmp_path / "r.md"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "3 cell(s) run" in stdout
    records = json.loads(out.read_text())["records"]
    assert [r["attack"] for r in records] == ["none", "fgsm", "fgsm"]
    assert records[1]["eps"] == pytest.approx(8 / 255) and records[1]["command"].startswith("python -m qshield_core")
    assert "## All cells" in (tmp_path / "r.md").read_text()
    code, stdout, _ = run(argv, capsys)  # resumed: nothing left to do
    assert code == 0 and "0 cell(s) run, 3 already" in stdout
    code, stdout, _ = run(["table", out], capsys)
    assert code == 0 and "| MNIST | classical | FGSM | 8/255 | 10 |" in stdout
    code, _, err = run(["table", tmp_path / "missing.json"], capsys)
    assert code == 2 and "not found" in err


def test_table_updates_the_readme_blocks_and_loses_nothing_on_error(tmp_path, capsys):
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"records": [make_record("classical", "pgd", 0.8)]}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- qshield:paper-summary -->\nstale\n<!-- /qshield:paper-summary -->\nend\n")
    code, stdout, _ = run(["table", results, "--out", tmp_path / "r.md", "--readme", readme], capsys)
    text = readme.read_text()
    assert code == 0 and "updated the tables" in stdout
    assert "stale" not in text and "| MNIST | classical |" in text and "**80.0**" in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    unmarked = tmp_path / "NOTES.md"
    unmarked.write_text("no markers\n")
    code, _, err = run(["table", results, "--out", tmp_path / "s.md", "--readme", unmarked], capsys)
    assert code == 2 and "qshield:paper-summary" in err
    assert unmarked.read_text() == "no markers\n" and not (tmp_path / "s.md").exists()


def test_train_on_the_samples_keeps_its_checkpoints_apart(tmp_path, capsys):
    """``--data samples`` and ``--checkpoint-dir``: a smoke run (scripts/resnet18_study.sh SMOKE=1) that touches
    neither pretrained/ nor checkpoints/."""
    require_samples()
    code, _, _ = run(["train", "--dataset", "mnist", "--model", "classical", "--data", "samples", "--epochs", "1",
                      "--batch-size", "50", "--threads", "1", "--out-dir", tmp_path / "models", "--checkpoint-dir",
                      tmp_path / "ckpt"], capsys)
    card = json.loads((tmp_path / "models" / "mnist-classical.json").read_text())
    assert code == 0 and card["hyperparameters"]["extra"] == {"data": "samples"}
    assert "shipped samples" in card["data"]["source"] and (tmp_path / "ckpt" / "mnist-classical.ckpt.pt").is_file()


def test_info_lists_models_and_flags_tampering(model_dir, capsys):
    code, out, _ = run(["info", "--model-dir", model_dir], capsys)
    assert code == 0 and "classical" in out and "BAD" not in out
    weights = model_dir / "mnist-classical.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    code, out, _ = run(["info", "--model-dir", model_dir], capsys)
    assert "BAD" in out


def test_draw_prints_the_circuit(capsys):
    code, out, _ = run(["draw", "--entanglement", "star", "--noise", "depolarizing", "--p", "0.01"], capsys)
    assert code == 0 and "star entanglement" in out and "RX" in out and "Depo" in out
    code, _, err = run(["draw", "--noise", "depolarizing", "--p", "2"], capsys)
    assert code == 2 and err.startswith("error: ")


# ----------------------------------------------------------------------------- demo


def test_verdicts_have_one_meaning():
    from qshield_core.lab import attack_verdict

    assert attack_verdict(7, 7, 3) == "flipped"
    assert attack_verdict(7, 7, 7) == "held"
    assert attack_verdict(7, 2, 2) == "wrong before" and attack_verdict(7, 2, 7) == "wrong before"
    assert attack_verdict(None, 2, 5) == "changed" and attack_verdict(None, 2, 2) == "unchanged"


def test_format_columns_fits_the_longest_cell():
    from qshield_core.cli import format_columns

    text = format_columns([["image", "classical"], ["kidney-left · test #0", "pancreas->pancreas wrong before"],
                           ["x", "y"]])
    lines = text.splitlines()
    assert lines[1].startswith("kidney-left · test #0   pancreas")
    assert {line.index(cell) for line, cell in zip(lines, ["classical", "pancreas", "y"], strict=True)} == {24}
    assert not any(line.endswith(" ") for line in lines)


def test_demo_columns_stay_apart_and_wrong_before_is_not_held(capsys):
    """OrganAMNIST's long class names; its first shipped sample is misclassified by both shipped models."""
    from qshield_core import zoo
    from qshield_core.data import get_spec

    require_samples()
    if not all(zoo.model_files("organamnist", m).weights.is_file() for m in ("classical", "hybrid-full")):
        pytest.skip("the shipped OrganAMNIST models are not in pretrained/")
    code, out, _ = run(["demo", "--dataset", "organamnist", "--attack", "fgsm"], capsys)  # one step: quick
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("image"))
    rows = lines[header + 1:header + 12]
    starts = [lines[header].index(name) for name in ("classical", "hybrid-full")]
    names = get_spec("organamnist").class_names
    verdicts = []
    for row in rows:
        cells = [row[:starts[0]], row[starts[0]:starts[1]], row[starts[1]:]]
        assert cells[0].endswith("  ") and cells[1].endswith("  "), f"columns run together: {row!r}"
        truth = names.index(cells[0].split(" · ")[0])
        for cell in cells[1:]:
            match = re.fullmatch(r"(\S+)->(\S+) (flipped|held|wrong before)\s*", cell)
            assert match, cell
            clean, adv = names.index(match[1]), names.index(match[2])
            expected = "wrong before" if clean != truth else "held" if adv == truth else "flipped"
            assert match[3] == expected, row
            verdicts.append(match[3])
    assert "wrong before" in verdicts, "test #0 (kidney-left) is read as pancreas before any attack"
    summary = next(line for line in lines if line.startswith("flipped"))
    classical, hybrid = verdicts[0::2], verdicts[1::2]
    assert (f"classical {classical.count('flipped')} of {len(rows) - classical.count('wrong before')}, "
            f"hybrid-full {hybrid.count('flipped')} of {len(rows) - hybrid.count('wrong before')}") in summary
