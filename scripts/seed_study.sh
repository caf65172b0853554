#!/usr/bin/env bash
# The seed study (issue 14): the CNN and the paper's four hybrids trained from scratch by the paper's recipe over
# seeds (5 on MNIST, 3 on OrganAMNIST), judged by its PGD (n = 1000) and by AutoAttack (n = 500): grids/seed-study.toml.
#
# 1. train: <model>@scratch-s<seed> (qshield_core.train.SCRATCH_RECIPE) into MODEL_DIR with its card, one model at a
#    time, seed by seed (so that whole seeds land first); resumable; a model whose card exists is skipped.
# 2. evaluate: grids/seed-study.toml into OUT/seed-study.json, resumable cell by cell.
# 3. tables: OUT/seed-study.md (and README.md's seed-study block when OUT is results).
#
# Environment: MODEL_DIR [studies/seed-study/models], STUDY_SEEDS (the same seeds for every dataset instead of 0-4
# and 0-2), and those of scripts/_study.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/_study.sh
study_setup studies/seed-study/models
declare -A SEEDS=([mnist]="0 1 2 3 4" [organamnist]="0 1 2")
if [[ -n ${STUDY_SEEDS:-} ]]; then SEEDS=([mnist]=$STUDY_SEEDS [organamnist]=$STUDY_SEEDS); fi

if wants train; then
  for d in "${datasets[@]}"; do
    for s in ${SEEDS[$d]}; do  # seed by seed, so that whole seeds land first
      for m in classical hybrid-none hybrid-linear hybrid-star hybrid-full; do
        study_train "$d" "$m@scratch-s$s" --model "$m@scratch-s$s" --recipe scratch --seed "$s" || exit 1
      done
    done
  done
fi
study_evaluate_and_tables grids/seed-study.toml seed-study seed
exit $failed
