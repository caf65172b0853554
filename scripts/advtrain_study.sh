#!/usr/bin/env bash
# The adversarial-training study (issue 13): the shipped CNN adversarially trained (PGD-7, Madry et al. 2018;
# MNIST eps 0.3, OrganAMNIST 8/255), the paper's hybrid-full built on it, and AutoAttack at n = 1000 on both, the
# hybrid in both gradient modes (grids/advtrain.toml). FGSM with a random start (Wong, Rice and Kolter 2020; the
# cheaper method the issue allows) overfitted catastrophically on MNIST at 0.3 within its first epoch (README
# "Adversarial training"), so the study trains with PGD.
#
# 1. train: classical@pgd-at (qshield_core.train.ADVERSARIAL_RECIPE: 3 epochs from the shipped CNN), then
#    hybrid-full@pgd-at from it (the hybrid recipe, its batches attacked through the circuit), into MODEL_DIR with
#    their cards (each epoch's PGD-20 check in the history), and the control classical@pgd-at-extra-epoch
#    (classical@pgd-at trained the hybrid's one extra epoch of PGD batches as the hybrid's CNN was, with no circuit:
#    train --recipe extra-epoch). Resumable; a model whose card exists is skipped.
# 2. evaluate: grids/advtrain.toml into OUT/advtrain.json, resumable cell by cell.
# 3. tables: OUT/advtrain.md (and README.md's advtrain-study block when OUT is results).
#
# Environment: MODEL_DIR [studies/advtrain/models], and those of scripts/_study.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/_study.sh
study_setup studies/advtrain/models
declare -A EPS=([mnist]=0.3 [organamnist]=8/255)

if wants train; then
  for d in "${datasets[@]}"; do
    for model in classical@pgd-at hybrid-full@pgd-at; do
      study_train "$d" "$model" --model "$model" --adversarial pgd --adv-steps 7 --adv-eps "${EPS[$d]}" || exit 1
    done
    study_train "$d" classical@pgd-at-extra-epoch --model classical@pgd-at-extra-epoch --recipe extra-epoch \
        --adversarial pgd --adv-steps 7 --adv-eps "${EPS[$d]}" || exit 1
  done
fi
study_evaluate_and_tables grids/advtrain.toml advtrain advtrain
exit $failed
