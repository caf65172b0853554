#!/usr/bin/env bash
# The seed study (issue 14): the CNN and the paper's four hybrids trained from scratch by the paper's recipe over
# seeds (5 on MNIST, 3 on OrganAMNIST), judged by its PGD (n = 1000) and by AutoAttack (n = 500): grids/seed-study.toml.
#
# 1. train: <model>@scratch-s<seed> (qshield_core.train.SCRATCH_RECIPE) into MODEL_DIR with its card, one model at a
#    time, seed by seed (so that whole seeds land first); resumable; a model whose card exists is skipped.
# 2. evaluate: grids/seed-study.toml into OUT/seed-study.json, resumable cell by cell.
# 3. tables: OUT/seed-study.md (and README.md's seed-study block when OUT is results).
#
# Environment (defaults in brackets):
#   DATASETS [mnist organamnist]   STEPS [train evaluate tables]   THREADS [1]   MODEL_DIR [studies/seed-study/models]
#   OUT [results]   CKPT [checkpoints]   WORKERS, ADDRESS (as scripts/run_results.sh)   GRID_EXTRA (e.g. "--dry-run")
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
read -r -a datasets <<< "${DATASETS:-mnist organamnist}"
STEPS=${STEPS:-train evaluate tables}; THREADS=${THREADS:-1}
OUT=${OUT:-results}; CKPT=${CKPT:-checkpoints}
QSHIELD_USER_MODELS=$(realpath -m "${MODEL_DIR:-studies/seed-study/models}")
export QSHIELD_USER_MODELS
read -r -a grid_extra <<< "${GRID_EXTRA:-}"
declare -A SEEDS=([mnist]="0 1 2 3 4" [organamnist]="0 1 2")
MODELS=(classical hybrid-none hybrid-linear hybrid-star hybrid-full)

train() {  # dataset model seed: train one model unless its card exists
  local name=$2@scratch-s$3
  local card=$QSHIELD_USER_MODELS/$1-$name.json
  if [[ -f $card ]]; then echo "=== $1 $name: exists, not retrained"; return 0; fi
  echo "=== $(date -u +%FT%TZ) train $1 $name"
  $PY -m qshield_core train --dataset "$1" --model "$name" --recipe scratch --seed "$3" --resume \
      --threads "$THREADS" --checkpoint-dir "$CKPT"
}

failed=0
if [[ " $STEPS " == *" train "* ]]; then
  for d in "${datasets[@]}"; do
    for s in ${SEEDS[$d]}; do
      for m in "${MODELS[@]}"; do train "$d" "$m" "$s" || exit 1; done
    done
  done
fi
if [[ " $STEPS " == *" evaluate "* ]]; then
  args=(--out-dir "$OUT" --dataset "${datasets[@]}")
  [[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
  [[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")
  echo "=== $(date -u +%FT%TZ) grid grids/seed-study.toml ${args[*]} ${grid_extra[*]}"
  $PY -m qshield_core grid grids/seed-study.toml "${args[@]}" "${grid_extra[@]}" || failed=1
fi
if [[ " $STEPS " == *" tables "* && -f $OUT/seed-study.json ]]; then
  readme=(); [[ $OUT == results ]] && readme=(--readme README.md)
  $PY -m qshield_core study seed "$OUT/seed-study.json" --out "$OUT/seed-study.md" "${readme[@]}" || failed=1
fi
echo "=== $(date -u +%FT%TZ) done"
exit $failed
