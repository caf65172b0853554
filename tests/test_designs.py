"""Circuit design files and the command line that trains them (``train --model hybrid --circuit FILE``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qshield_core import train as train_module
from qshield_core import zoo
from qshield_core.cli import build_parser, design_from_args, main
from qshield_core.data import get_spec
from qshield_core.designs import Design, design_to_json, load_design
from qshield_core.models import build_model, hybrid_circuit_for
from qshield_core.quantum import CircuitConfig

DESIGNS = sorted((Path(__file__).resolve().parents[1] / "designs").glob("*.json"))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", DESIGNS, ids=[p.stem for p in DESIGNS])
def test_shipped_design_files_resolve_without_the_calibration_package(path):
    design = load_design(path)
    assert design.name == path.stem and design.description
    config = design.config_for("mnist")
    if path.stem == "paper-full":  # the paper's circuit, trained over seeds by the design study
        assert config == hybrid_circuit_for("hybrid-full", get_spec("mnist"))
        return
    assert (config.n_qubits, config.depth, config.variational, config.entanglement) == (4, 3, True, "full")
    assert CircuitConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    if "device" in path.stem:
        assert config.device is not None and config.device.two_qubit_gate == "cx"
        assert config.noise.kind == "none"
    if "shots" in path.stem:
        assert config.shots == 1000
    if path.stem.endswith("-end"):
        assert config.noise_placement == "end"


def test_design_study_covers_the_strengths_placement_device_and_shots():
    stems = {p.stem for p in DESIGNS}
    assert {f"depth3-trainable-p{p}" for p in ("0.005", "0.05", "0.2")} <= stems
    assert any("device" in s for s in stems) and any("shots" in s for s in stems) and any(s.endswith("-end")
                                                                                         for s in stems)


def test_design_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_design(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_design(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text(json.dumps({"circuits": {}}))
    with pytest.raises(ValueError, match="unknown key"):
        load_design(tmp_path / "typo.json")
    (tmp_path / "field.json").write_text(json.dumps({"circuit": {"depht": 3}}))
    with pytest.raises(ValueError, match="Unknown circuit field"):
        load_design(tmp_path / "field.json").config_for("mnist")
    with pytest.raises(ValueError, match="fewer than MNIST's 10 classes"):
        Design("small", {"n_qubits": 3}).config_for("mnist")
    design = Design("x", {"depth": 2}, "d")
    (tmp_path / "x.json").write_text(design_to_json(design))
    assert load_design(tmp_path / "x.json") == Design("x", {"depth": 2}, "d", str(tmp_path / "x.json"))
    assert Design("q").config_for("organamnist").n_qubits == 4  # the dataset's qubit count by default


def test_flags_override_the_file():
    args = build_parser().parse_args(["train", "--dataset", "mnist", "--model", "hybrid", "--circuit",
                                      str(DESIGNS[0]), "--name", "mine", "--shots", "500", "--p", "0.2",
                                      "--noise-placement", "end", "--no-variational", "--device", "none"])
    design = design_from_args(args)
    base = load_design(DESIGNS[0])
    assert design.name == "mine" and design.circuit["shots"] == 500 and design.circuit["noise_placement"] == "end"
    assert design.circuit["noise"] == dict(base.circuit["noise"], p=0.2) and design.circuit["variational"] is False
    assert design.circuit["device"] is None
    args = build_parser().parse_args(["train", "--dataset", "mnist", "--model", "hybrid", "--name", "flags",
                                      "--depth", "2", "--entanglement", "ring", "--shots", "0"])
    config = design_from_args(args).config_for("mnist")
    assert (config.depth, config.entanglement, config.shots, config.noise) == (2, "ring", None,
                                                                               CircuitConfig().noise)


def test_train_hybrid_from_a_design_file(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda cfg, **kwargs: seen.update(cfg=cfg, **kwargs))
    path = Path(__file__).resolve().parents[1] / "designs" / "depth3-trainable-p0.05.json"
    code, out, _ = run(["train", "--dataset", "mnist", "--model", "hybrid", "--circuit", path, "--epochs", "2"], capsys)
    assert code == 0 and "design depth3-trainable-p0.05: 4 qubits" in out
    cfg = seen["cfg"]
    assert cfg.model == "hybrid-depth3-trainable-p0.05" and cfg.epochs == 2 and cfg.grad_mode == "differentiable"
    assert CircuitConfig.from_dict(cfg.circuit) == load_design(path).config_for("mnist")
    assert cfg.extra["design"]["name"] == "depth3-trainable-p0.05" and cfg.init_from == "classical"
    assert zoo.default_directory(cfg.model) == zoo.USER_MODELS_DIR


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "hybrid"], "needs a design"),
    (["--model", "classical", "--depth", "3"], "--depth: circuit designs train with --model hybrid"),
    (["--model", "hybrid-full", "--circuit", "x.json"], "--circuit: circuit designs train with --model hybrid"),
    (["--model", "hybrid", "--name", "full"], "a shipped model's name"),
    (["--model", "hybrid", "--name", "x", "--device-qubits", "1", "2"], "--device-qubits needs --device"),
    (["--model", "hybrid", "--name", "x", "--shots", "-3"], "--shots must be 0"),
    (["--model", "hybrid", "--name", "x", "--qubits", "3"], "fewer than MNIST's 10 classes"),
])
def test_bad_design_commands_give_one_line_errors(argv, message, capsys):
    code, _, err = run(["train", "--dataset", "mnist", *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_info_lists_user_models(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setattr(zoo, "USER_MODELS_DIR", tmp_path / "user_models")
    torch.manual_seed(0)
    circuit = CircuitConfig.for_classes(10, depth=2, shots=100)
    card = {"dataset": "mnist", "model": "hybrid-listed", "circuit": circuit.to_dict(), "clean_test_accuracy": 0.5,
            "noise_description": circuit.describe_noise()}
    zoo.save_model(build_model("mnist", "hybrid-listed", circuit=circuit), card, "mnist", "hybrid-listed",
                   tmp_path / "user_models")
    code, out, _ = run(["info", "--dataset", "mnist"], capsys)
    assert code == 0 and "hybrid-listed" in out and "100 shots" in out
