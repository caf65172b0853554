"""The command line: clear one-line errors with exit code 2, evaluate -> JSON -> table, info, draw."""

from __future__ import annotations

import json

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
