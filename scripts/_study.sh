# Shared by scripts/{design,advtrain,seed}_study.sh (sourced from the repository root): the environment they
# read, and the evaluate and tables steps. Each script sets what it trains and calls these.
#   DATASETS [mnist organamnist]   STEPS [train evaluate tables]   THREADS [1, torch threads while training]
#   MODEL_DIR [the study's folder]   OUT [results]   WORKERS, ADDRESS (as run_results.sh)
#   CKPT [checkpoints: the trainings' epochs]
#   CELLS [the study's folder's cells/, e.g. studies/advtrain/cells: the grid's cells' finished batches, small JSON
#   files (qshield_core.evaluation.resume) committed with the study, so that a cell longer than a session resumes
#   in the next one from its last finished batch; a cell's file is removed when its record is complete]
#   GRID_EXTRA (more grid options, e.g. "--dry-run")   TRAIN_EXTRA (more train options, e.g. a smoke run:
#   "--data samples --epochs 1 --batch-size 50", which the tests use)

study_setup() {  # default model folder
  PY=${PYTHON:-python}
  read -r -a datasets <<< "${DATASETS:-mnist organamnist}"
  STEPS=${STEPS:-train evaluate tables}; THREADS=${THREADS:-1}
  OUT=${OUT:-results}; CKPT=${CKPT:-checkpoints}
  QSHIELD_USER_MODELS=$(realpath -m "${MODEL_DIR:-$1}")
  CELLS=${CELLS:-$(dirname "$QSHIELD_USER_MODELS")/cells}
  export QSHIELD_USER_MODELS  # where train saves the study's models and the grid finds them
  read -r -a grid_extra <<< "${GRID_EXTRA:-}"
  read -r -a train_extra <<< "${TRAIN_EXTRA:-}"
  failed=0
}

wants() { [[ " $STEPS " == *" $1 "* ]]; }

study_train() {  # dataset model-name train-options...: train one model (options name it) unless its card exists
  local dataset=$1 name=$2; shift 2
  if [[ -f $QSHIELD_USER_MODELS/$dataset-$name.json ]]; then echo "=== $dataset $name: exists, not retrained"; return 0; fi
  echo "=== $(date -u +%FT%TZ) train $dataset $name"
  $PY -m qshield_core train --dataset "$dataset" --resume --threads "$THREADS" --checkpoint-dir "$CKPT" "$@" \
      "${train_extra[@]}"
}

study_evaluate_and_tables() {  # grid file, results file stem, study name (python -m qshield_core study NAME)
  if wants evaluate; then
    local args=(--out-dir "$OUT" --dataset "${datasets[@]}" --checkpoint-dir "$CELLS")
    [[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
    [[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")
    echo "=== $(date -u +%FT%TZ) grid $1 ${args[*]} ${grid_extra[*]}"
    $PY -m qshield_core grid "$1" "${args[@]}" "${grid_extra[@]}" || failed=1
  fi
  if wants tables && [[ -f $OUT/$2.json ]]; then
    local readme=(); [[ $OUT == results ]] && readme=(--readme README.md)  # the README shows results/
    $PY -m qshield_core study "$3" "$OUT/$2.json" --out "$OUT/$2.md" "${readme[@]}" || failed=1
  fi
  echo "=== $(date -u +%FT%TZ) done"
}
