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
# Environment (defaults in brackets):
#   DATASETS [mnist organamnist]   SEEDS [0 1 2]   DESIGNS [the six of the study]   STEPS [train evaluate tables]
#   THREADS [1, torch threads while training]   MODEL_DIR [studies/design-study/models]   OUT [results]
#   CKPT [checkpoints]   WORKERS, ADDRESS (as scripts/run_results.sh)   GRID_EXTRA (e.g. "--dry-run")
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
read -r -a datasets <<< "${DATASETS:-mnist organamnist}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
read -r -a designs <<< "${DESIGNS:-paper-full depth3-trainable-p0.005 depth3-trainable-p0.05 depth3-trainable-p0.2 \
depth3-trainable-device-kolkata depth3-trainable-p0.05-shots1000}"
STEPS=${STEPS:-train evaluate tables}; THREADS=${THREADS:-1}
OUT=${OUT:-results}; CKPT=${CKPT:-checkpoints}
QSHIELD_USER_MODELS=$(realpath -m "${MODEL_DIR:-studies/design-study/models}")
export QSHIELD_USER_MODELS  # where train saves the designs and the grid finds them
read -r -a grid_extra <<< "${GRID_EXTRA:-}"

train() {  # dataset design seed: train one model unless its card exists
  local name=$2-s$3
  local card=$QSHIELD_USER_MODELS/$1-hybrid-$name.json
  if [[ -f $card ]]; then echo "=== $1 hybrid-$name: exists, not retrained"; return 0; fi
  echo "=== $(date -u +%FT%TZ) train $1 hybrid-$name"
  $PY -m qshield_core train --dataset "$1" --model hybrid --circuit "designs/$2.json" --name "$name" --seed "$3" \
      --resume --threads "$THREADS" --checkpoint-dir "$CKPT"
}

failed=0
if [[ " $STEPS " == *" train "* ]]; then
  for d in "${datasets[@]}"; do
    for s in "${seeds[@]}"; do
      for design in "${designs[@]}"; do train "$d" "$design" "$s" || exit 1; done
    done
  done
fi
if [[ " $STEPS " == *" evaluate "* ]]; then
  args=(--out-dir "$OUT" --dataset "${datasets[@]}")
  [[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
  [[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")
  echo "=== $(date -u +%FT%TZ) grid grids/design-study.toml ${args[*]} ${grid_extra[*]}"
  $PY -m qshield_core grid grids/design-study.toml "${args[@]}" "${grid_extra[@]}" || failed=1
fi
if [[ " $STEPS " == *" tables "* && -f $OUT/design-study.json ]]; then
  readme=(); [[ $OUT == results ]] && readme=(--readme README.md)
  $PY -m qshield_core study design "$OUT/design-study.json" --out "$OUT/design-study.md" "${readme[@]}" || failed=1
fi
echo "=== $(date -u +%FT%TZ) done"
exit $failed
