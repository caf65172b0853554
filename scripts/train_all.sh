#!/usr/bin/env bash
# Train every shipped model from scratch, in order, on this machine (2 CPU threads).
# Usage: bash scripts/train_all.sh [models...]   (default: the six core models, the paper's DNN baseline,
#   then the entanglement study)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
core=(mnist:classical organamnist:classical cifar10:classical mnist:hybrid-full organamnist:hybrid-full cifar10:hybrid-full)
baseline=(mnist:dnn organamnist:dnn cifar10:dnn)
study=()
for d in mnist organamnist cifar10; do for e in none linear star; do study+=("$d:hybrid-$e"); done; done
jobs=("${@:-${core[@]} ${baseline[@]} ${study[@]}}")
for job in ${jobs[@]}; do
  dataset=${job%%:*}; model=${job#*:}
  echo "=== $(date -u +%FT%TZ) $dataset $model"
  $PY -m qshield_core train --dataset "$dataset" --model "$model" --resume
done
echo "=== all done $(date -u +%FT%TZ)"
