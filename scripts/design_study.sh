#!/usr/bin/env bash
# The design study (issue 13): the paper's circuit and five depth-3 trainable designs (designs/*.json), each
# trained with 3 seeds, judged on 500 test points beside the shipped CNN (grids/design-study.toml).
#
# 1. train: hybrid-<design>-s<seed> by the hybrid recipe (one epoch from the shipped CNN, Adam 1e-3, the CNN at a
#    tenth of it; the trainable designs in the differentiable mode), into MODEL_DIR with its card. One model at a
#    time, resumable from its checkpoint; a model whose card exists is skipped.
# 2. evaluate: grids/design-study.toml into OUT/design-study.json, resumable cell by cell.
# 3. tables: OUT/design-study.md (and README.md's design-study block when OUT is results).
#
# Environment: SEEDS [0 1 2], DESIGNS [the six of the study], MODEL_DIR [studies/design-study/models], and those of
# scripts/_study.sh (DATASETS, STEPS, THREADS, OUT, CKPT, WORKERS, ADDRESS, GRID_EXTRA).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/_study.sh
study_setup studies/design-study/models
read -r -a seeds <<< "${SEEDS:-0 1 2}"
read -r -a designs <<< "${DESIGNS:-paper-full depth3-trainable-p0.005 depth3-trainable-p0.05 depth3-trainable-p0.2 \
depth3-trainable-device-kolkata depth3-trainable-p0.05-shots1000}"

if wants train; then
  for d in "${datasets[@]}"; do
    for s in "${seeds[@]}"; do  # seed by seed, so that whole seeds land first
      for design in "${designs[@]}"; do
        study_train "$d" "hybrid-$design-s$s" --model hybrid --circuit "designs/$design.json" --name "$design-s$s" \
            --seed "$s" || exit 1
      done
    done
  done
fi
study_evaluate_and_tables grids/design-study.toml design-study design
exit $failed
