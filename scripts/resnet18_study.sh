#!/usr/bin/env bash
# The ResNet-18 study: the paper's own CNN (torchvision's ResNet-18 as its code builds it, trained from scratch:
# no ImageNet weights) and hybrid-full on it, through the paper's protocol (n = 1000) and AutoAttack.
#
# 1. train: {dataset}-resnet18 by the paper's recipe (Adam 1e-3, batch 128, no augmentation; 2 epochs on MNIST,
#    3 on OrganAMNIST: about 40 min each on one loaded core), then {dataset}-resnet18-hybrid-full from it by the
#    shipped hybrid recipe (1 epoch), and the control {dataset}-resnet18@extra-epoch (resnet18 trained that epoch
#    as the hybrid's CNN is, with no circuit: train --recipe extra-epoch). One model at a time, each resumable from its checkpoint after every epoch
#    (rerun after an interruption); a model whose card and weights are both in MODEL_DIR is skipped.
# 2. evaluate: grids/resnet18.toml (stage paper: n = 1000; stage adaptive: AutoAttack, n = 500 and 200) into
#    OUT/paper-reproduction.json and OUT/adaptive.json, the files of grids/results.toml; resumable cell by cell.
# 3. tables: OUT/paper-reproduction.md, OUT/adaptive.md (and README.md's tables when OUT is results).
#
# Environment (defaults in brackets):
#   DATASETS [mnist organamnist]   STEPS [train evaluate tables]   THREADS [1, torch threads while training]
#   MODEL_DIR [studies/resnet18/models]   OUT [results]   CKPT [checkpoints: the trainings' epochs]
#   CELLS [studies/resnet18/cells: the cells' finished batches, committed, as in scripts/_study.sh]
#   WORKERS, ADDRESS (as scripts/run_results.sh)
#   TRAIN_EXTRA (more train options)   GRID_EXTRA (more grid options, e.g. "--dry-run", "--stage paper")
#   SMOKE=1: a smoke run on the shipped samples, everything under SMOKE_DIR [/tmp/qshield-resnet18-smoke]
#            (1 epoch of batch 20, n = 10 a cell; nothing in pretrained/, checkpoints/ or results/ is touched)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
read -r -a datasets <<< "${DATASETS:-mnist organamnist}"
STEPS=${STEPS:-train evaluate tables}; THREADS=${THREADS:-1}
MODEL_DIR=${MODEL_DIR:-studies/resnet18/models}; OUT=${OUT:-results}; CKPT=${CKPT:-checkpoints}
CELLS=${CELLS:-$(dirname "$MODEL_DIR")/cells}
read -r -a train_extra <<< "${TRAIN_EXTRA:-}"; read -r -a grid_extra <<< "${GRID_EXTRA:-}"
if [[ ${SMOKE:-0} == 1 ]]; then
  SMOKE_DIR=${SMOKE_DIR:-/tmp/qshield-resnet18-smoke}
  MODEL_DIR=$SMOKE_DIR/models; OUT=$SMOKE_DIR/results; CKPT=$SMOKE_DIR/checkpoints; CELLS=$SMOKE_DIR/cells
  train_extra+=(--data samples --epochs 1 --batch-size 20); grid_extra+=(--n 10 --source samples)
fi

train() {  # dataset model [train options]: train one model unless its card and its weights exist
  local dataset=$1 model=$2 stem=$MODEL_DIR/$1-$2; shift 2
  if [[ -f $stem.json && -f $stem.safetensors ]]; then echo "=== $dataset $model: $stem.* exist, not retrained"; return 0; fi
  echo "=== $(date -u +%FT%TZ) train $dataset $model"
  $PY -m qshield_core train --dataset "$dataset" --model "$model" --resume --threads "$THREADS" --out-dir "$MODEL_DIR" \
      --checkpoint-dir "$CKPT" "$@" "${train_extra[@]}"
}

failed=0
if [[ " $STEPS " == *" train "* ]]; then
  for d in "${datasets[@]}"; do train "$d" resnet18 || exit 1; done
  for d in "${datasets[@]}"; do train "$d" resnet18-hybrid-full || exit 1; done
  for d in "${datasets[@]}"; do train "$d" resnet18@extra-epoch --recipe extra-epoch || exit 1; done
fi
if [[ " $STEPS " == *" evaluate "* ]]; then
  args=(--out-dir "$OUT" --dataset "${datasets[@]}" --model-dir "$MODEL_DIR" --checkpoint-dir "$CELLS")
  [[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
  [[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")
  echo "=== $(date -u +%FT%TZ) grid grids/resnet18.toml ${args[*]} ${grid_extra[*]}"
  $PY -m qshield_core grid grids/resnet18.toml "${args[@]}" "${grid_extra[@]}" || failed=1
fi
if [[ " $STEPS " == *" tables "* && -f $OUT/paper-reproduction.json ]]; then
  $PY -m qshield_core table "$OUT/paper-reproduction.json" --title "QShield: the paper protocol, reproduced" \
      --out "$OUT/paper-reproduction.md"
  tables=()
  for f in paper-reproduction adaptive sanity; do [[ -f $OUT/$f.json ]] && tables+=("$OUT/$f.json"); done
  if ((${#tables[@]} > 1)); then
    readme=(); [[ $OUT == results ]] && readme=(--readme README.md)  # the README's tables show results/
    $PY -m qshield_core table "${tables[@]}" --title "QShield: adaptive attacks and sanity checks" \
        --out "$OUT/adaptive.md" "${readme[@]}"
  fi
fi
echo "=== $(date -u +%FT%TZ) done"
exit $failed
