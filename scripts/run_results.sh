#!/usr/bin/env bash
# Produce the committed robustness results and their Markdown tables:
#   results/paper-reproduction.json (+ .md)  the paper's protocol: clean accuracy and gradient norms (both modes),
#                                            then its 8 attacks at its epsilon, every model, hybrids in paper mode
#   results/adaptive.json                    the adaptive attacks at the paper's and the common epsilon
#   results/sanity.json                      ASR against epsilon (FGSM, APGD-CE) for the CNN and hybrid-full
#   results/adaptive.md                      tables of all three files together (and README.md's two)
#
# The grid, every cell of those files, is declared in grids/results.toml (stages paper, adaptive,
# adaptive-extra, sanity) and run by `python -m qshield_core grid` on Dask: by default a local cluster
# of one single-threaded worker process per core, started and stopped here; with ADDRESS (or
# $DASK_SCHEDULER_ADDRESS) the running cluster at that address (`dask scheduler`, then
# `PYTHONPATH=. DASK_CONFIG=grids/dask.yaml dask worker ADDRESS --nworkers auto --nthreads 1` from the
# repository root of each machine, each with this repository and the datasets). On this 2-core CPU a paper-suite model takes 5-25 min a process, AutoAttack on a
# CIFAR-10 hybrid 10-30 min a cell.
#
# Resumable: every cell is written as soon as it is done and skipped on the next run (a cell recorded
# with other attack parameters than today's presets is run again), so rerun after an interruption.
# A cell that fails (e.g. a model not trained yet) is retried, then listed; the others go on.
#
# Limit the run with environment variables (defaults in brackets):
#   STAGES    stages of the grid file to run    [all of them]
#   DATASETS  only these datasets               [all]
#   MODELS    only these models                 [all]
#   WORKERS   local worker processes            [one per core]
#   ADDRESS   scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (WORKERS is then not used)
#   GRID [grids/results.toml]  OUT [results]  EXTRA (more grid options, e.g. "--limit 3", "--dry-run")
# Example, a tiny slice:  STAGES=paper DATASETS=mnist MODELS=classical OUT=/tmp/slice \
#                         EXTRA="--n 20 --source samples" bash scripts/run_results.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
GRID=${GRID:-grids/results.toml}; OUT=${OUT:-results}; EXTRA=${EXTRA:-}
args=(--out-dir "$OUT")
# shellcheck disable=SC2206
[[ -n ${STAGES:-} ]] && args+=(--stage $STAGES)
# shellcheck disable=SC2206
[[ -n ${DATASETS:-} ]] && args+=(--dataset $DATASETS)
# shellcheck disable=SC2206
[[ -n ${MODELS:-} ]] && args+=(--model $MODELS)
[[ -n ${WORKERS:-} ]] && args+=(--workers "$WORKERS")
[[ -n ${ADDRESS:-} ]] && args+=(--address "$ADDRESS")

echo "=== $(date -u +%FT%TZ) grid $GRID ${args[*]} $EXTRA"
# shellcheck disable=SC2086
$PY -m qshield_core grid "$GRID" "${args[@]}" $EXTRA
failed=$?

tables=()
for f in paper-reproduction adaptive sanity; do [[ -f $OUT/$f.json ]] && tables+=("$OUT/$f.json"); done
if [[ -f $OUT/paper-reproduction.json ]]; then
  $PY -m qshield_core table "$OUT/paper-reproduction.json" --title "QShield: the paper protocol, reproduced" \
      --out "$OUT/paper-reproduction.md"
fi
if ((${#tables[@]} > 1)); then
  readme=(); [[ $OUT == results ]] && readme=(--readme README.md)  # the README's tables show results/
  $PY -m qshield_core table "${tables[@]}" --title "QShield: adaptive attacks and sanity checks" \
      --out "$OUT/adaptive.md" "${readme[@]}"
fi
exit $failed
