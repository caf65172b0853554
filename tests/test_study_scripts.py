"""The study scripts' training steps (scripts/{design,advtrain,seed}_study.sh), as smoke runs on the shipped samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_samples

REPO = Path(__file__).resolve().parents[1]
SMOKE = "--data samples --epochs 1 --batch-size 50"


def run_script(name: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHON=sys.executable, DATASETS="mnist", STEPS="train", THREADS="1",
                       MODEL_DIR=str(tmp_path / "models"), CKPT=str(tmp_path / "ck"), TRAIN_EXTRA=SMOKE, **env)
    return subprocess.run(["bash", str(REPO / "scripts" / name)], env=environment, capture_output=True, text=True,
                          timeout=600, check=False)


def cards(tmp_path: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((tmp_path / "models").glob("*.json"))}


@pytest.mark.slow
def test_advtrain_and_design_scripts_train_their_models_and_skip_them_the_second_time(tmp_path):
    require_samples()
    done = run_script("advtrain_study.sh", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = cards(tmp_path)
    assert set(found) == {"mnist-classical@pgd-at", "mnist-hybrid-full@pgd-at", "mnist-classical@pgd-at-extra-epoch"}
    assert found["mnist-classical@pgd-at"]["adversarial_training"]["eps"] == 0.3
    assert found["mnist-hybrid-full@pgd-at"]["init_from"]["model"] == "mnist-classical@pgd-at"
    control = found["mnist-classical@pgd-at-extra-epoch"]
    assert control["init_from"]["model"] == "mnist-classical@pgd-at"
    assert control["hyperparameters"]["recipe"] == "extra-epoch" and control["adversarial_training"]["eps"] == 0.3
    again = run_script("advtrain_study.sh", tmp_path)
    assert again.returncode == 0 and again.stdout.count("exists, not retrained") == 3

    done = run_script("design_study.sh", tmp_path, DESIGNS="paper-full depth3-trainable-p0.05", SEEDS="1")
    assert done.returncode == 0, done.stderr[-2000:]
    designs = {k: v for k, v in cards(tmp_path).items() if "@" not in k}
    assert set(designs) == {"mnist-hybrid-paper-full-s1", "mnist-hybrid-depth3-trainable-p0.05-s1"}
    assert all(card["seed"] == 1 for card in designs.values())
    assert designs["mnist-hybrid-depth3-trainable-p0.05-s1"]["trained_grad_mode"] == "differentiable"


@pytest.mark.slow
def test_the_seed_script_trains_the_five_models_from_scratch(tmp_path):
    require_samples()
    done = run_script("seed_study.sh", tmp_path, STUDY_SEEDS="2")
    assert done.returncode == 0, done.stderr[-2000:]
    found = cards(tmp_path)
    assert sorted(found) == sorted(f"mnist-{m}@scratch-s2" for m in
                                   ("classical", "hybrid-none", "hybrid-linear", "hybrid-star", "hybrid-full"))
    assert all(c["hyperparameters"]["recipe"] == "scratch" and c["seed"] == 2 and not c.get("init_from")
               for c in found.values())
