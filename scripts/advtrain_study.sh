#!/usr/bin/env bash
# The adversarial-training study (issue 13): the shipped CNN adversarially trained (FGSM with a random start, Wong,
# Rice and Kolter 2020; MNIST eps 0.3, OrganAMNIST 8/255), the paper's hybrid-full built on it, and AutoAttack at
# n = 1000 on both, the hybrid in both gradient modes (grids/advtrain.toml).
#
# 1. train: classical@fgsm-at (qshield_core.train.ADVERSARIAL_RECIPE: 3 epochs from the shipped CNN), then
#    hybrid-full@fgsm-at from it (the hybrid recipe, its batches attacked through the circuit), into MODEL_DIR with
#    their cards (each epoch's PGD-20 check in the history). Resumable; a model whose card exists is skipped.
# 2. evaluate: grids/advtrain.toml into OUT/advtrain.json, resumable cell by cell.
# 3. tables: OUT/advtrain.md (and README.md's advtrain-study block when OUT is results).
#
# Environment (defaults in brackets):
#   DATASETS [mnist organamnist]   STEPS [train evaluate tables]   THREADS [1]   MODEL_DIR [studies/advtrain/models]
#   OUT [results]   CKPT [checkpoints]   WORKERS, ADDRESS (as scripts/run_results.sh)   GRID_EXTRA (e.g. "--dry-run")
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
read -r -a datasets <<< "${DATASETS:-mnist organamnist}"
STEPS=${STEPS:-train evaluate tables}; THREADS=${THREADS:-1}
OUT=${OUT:-results}; CKPT=${CKPT:-checkpoints}
QSHIELD_USER_MODELS=$(realpath -m "${MODEL_DIR:-studies/advtrain/models}")
export QSHIELD_USER_MODELS  # where train saves the variants and the grid finds them
read -r -a grid_extra <<< "${GRID_EXTRA:-}"
declare -A EPS=([mnist]=0.3 [organamnist]=8/255)

train() {  # dataset model: train one model unless its card exists
  local card=$QSHIELD_USER_MODELS/$1-$2.json
  if [[ -f $card ]]; then echo "=== $1 $2: exists, not retrained"; return 0; fi
  echo "=== $(date -u +%FT%TZ) train $1 $2"
  $PY -m qshield_core train --dataset "$1" --model "$2" --adversarial fgsm-rs --adv-eps "${EPS[$1]}" --resume \
      --threads "$THREADS" --checkpoint-dir "$CKPT"
}

failed=0
if [[ " $STEPS " == *" train "* ]]; then
  for d in "${datasets[@]}"; do
    train "$d" classical@fgsm-at || exit 1
    train "$d" hybrid-full@fgsm-at || exit 1
  done
fi
if [[ " $STEPS " == *" evaluate "* ]]; then
  args=(--out-dir "$OUT" --dataset "${datasets[@]}")
  [[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
  [[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")
  echo "=== $(date -u +%FT%TZ) grid grids/advtrain.toml ${args[*]} ${grid_extra[*]}"
  $PY -m qshield_core grid grids/advtrain.toml "${args[@]}" "${grid_extra[@]}" || failed=1
fi
if [[ " $STEPS " == *" tables "* && -f $OUT/advtrain.json ]]; then
  readme=(); [[ $OUT == results ]] && readme=(--readme README.md)
  $PY -m qshield_core study advtrain "$OUT/advtrain.json" --out "$OUT/advtrain.md" "${readme[@]}" || failed=1
fi
echo "=== $(date -u +%FT%TZ) done"
exit $failed
