#!/usr/bin/env bash
# Produce the committed robustness results and their Markdown tables:
#   results/paper-reproduction.json (+ .md)  the paper's protocol: clean accuracy and gradient norms (both modes),
#                                            then its 8 attacks at its epsilon, every model, hybrids in paper mode
#   results/adaptive.json                    the adaptive attacks at the paper's and the common epsilon
#                                            (on this 2-core CPU, 1 thread a process: a paper-suite model takes
#                                            5-25 min, AutoAttack on a CIFAR-10 hybrid 10-30 min a cell, the
#                                            sanity stage about 30 min; spread it with EXTRA="--shard i/k")
#   results/sanity.json                      ASR against epsilon (FGSM, APGD-CE) for the CNN and hybrid-full
#   results/adaptive.md                      tables of all three files together (and README.md's two)
#
# Resumable: every cell is written as soon as it is done and skipped on the next run, so rerun after an
# interruption. A model that is not trained yet is reported and skipped; rerun once it exists.
#
# Limit the run with environment variables (defaults in brackets):
#   STAGES      which stages to run            ["paper adaptive sanity"]
#   DATASETS    datasets                       ["mnist organamnist cifar10"]
#   MODELS      models of the paper stage      ["classical hybrid-none hybrid-linear hybrid-star hybrid-full"]
#   HYBRIDS     hybrids of the adaptive stage (APGD-CE, transfer, AutoAttack, BPDA) ["hybrid-none hybrid-linear
#               hybrid-star hybrid-full"]
#   FULL_MODELS hybrids that also get PGD-100, APGD-CE/-DLR, Square-5000, the differentiable mode and the EOT
#               attacks (autoattack-rand, eot-pgd) ["hybrid-full"]
#   N           points per paper cell [1000];  N_ADAPTIVE [200];  N_EOT [100];  N_SWEEP [100]
#   SEED [0]  THREADS [2]  OUT [results]  EXTRA (more evaluate options, e.g. "--limit 3" or "--shard 0/4")
# Example, a tiny slice:  STAGES=paper DATASETS=mnist MODELS=classical N=20 EXTRA="--source samples" \
#                         bash scripts/run_results.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
STAGES=${STAGES:-paper adaptive sanity}
DATASETS=${DATASETS:-mnist organamnist cifar10}
MODELS=${MODELS:-classical hybrid-none hybrid-linear hybrid-star hybrid-full}
HYBRIDS=${HYBRIDS:-hybrid-none hybrid-linear hybrid-star hybrid-full}
FULL_MODELS=${FULL_MODELS:-hybrid-full}
N=${N:-1000}; N_ADAPTIVE=${N_ADAPTIVE:-200}; N_EOT=${N_EOT:-100}; N_SWEEP=${N_SWEEP:-100}
SEED=${SEED:-0}; THREADS=${THREADS:-2}; OUT=${OUT:-results}; EXTRA=${EXTRA:-}
mkdir -p "$OUT"
failed=0

run() {  # run one evaluate command; a failure (e.g. a model not trained yet) is reported, not fatal
  echo "=== $(date -u +%FT%TZ) $*"
  # shellcheck disable=SC2086
  if ! $PY -m qshield_core evaluate "$@" --seed "$SEED" --threads "$THREADS" $EXTRA; then
    echo "!!! failed (rerun later to resume): $*"; failed=1
  fi
}

has() { [[ " $1 " == *" $2 "* ]]; }

paper_eps() { case $1 in mnist) echo 32/255;; organamnist) echo 8/255;; cifar10) echo 2/255;; esac; }
common_eps() { case $1 in mnist) echo 0.3;; *) echo 8/255;; esac; }
sweep_eps() { case $1 in mnist) echo 0.05 0.1 0.15 0.2 0.3 0.4;; *) echo 1/255 2/255 4/255 8/255 16/255 32/255;; esac; }

if has "$STAGES" paper; then
  for d in $DATASETS; do
    for m in $MODELS; do
      modes=paper; [[ $m == hybrid-* ]] && modes="paper differentiable"
      # shellcheck disable=SC2086
      run --dataset "$d" --model "$m" --grad-mode $modes --attack none --n "$N" --json "$OUT/paper-reproduction.json"
      run --dataset "$d" --model "$m" --grad-mode paper --attack paper-suite --n "$N" \
          --json "$OUT/paper-reproduction.json"
    done
  done
fi

if has "$STAGES" adaptive; then
  for d in $DATASETS; do
    eps="$(paper_eps "$d") $(common_eps "$d")"
    # shellcheck disable=SC2086
    run --dataset "$d" --model classical --attack apgd-ce autoattack --eps $eps --n "$N_ADAPTIVE" \
        --json "$OUT/adaptive.json"
    for m in $HYBRIDS; do
      # every hybrid: APGD-CE, transfer, AutoAttack (APGD-CE, APGD-T, FAB-T, Square-5000) and BPDA, paper mode
      # shellcheck disable=SC2086
      run --dataset "$d" --model "$m" --grad-mode paper --attack apgd-ce transfer-classical autoattack bpda --eps $eps \
          --n "$N_ADAPTIVE" --json "$OUT/adaptive.json"
      if has "$FULL_MODELS" "$m"; then
        # the full set: each white-box and score-based attack on its own, the differentiable twin, and EOT
        # shellcheck disable=SC2086
        run --dataset "$d" --model "$m" --grad-mode paper --attack pgd100 apgd-ce apgd-dlr square5000 --eps $eps \
            --n "$N_ADAPTIVE" --json "$OUT/adaptive.json"
        # shellcheck disable=SC2086
        run --dataset "$d" --model "$m" --grad-mode differentiable --attack apgd-ce autoattack --eps $eps \
            --n "$N_ADAPTIVE" --json "$OUT/adaptive.json"
        # shellcheck disable=SC2086
        run --dataset "$d" --model "$m" --grad-mode paper --attack eot-pgd autoattack-rand --eps $eps \
            --n "$N_EOT" --json "$OUT/adaptive.json"
      fi
    done
  done
fi

if has "$STAGES" sanity; then
  for d in $DATASETS; do
    # shellcheck disable=SC2046
    run --dataset "$d" --model classical hybrid-full --grad-mode paper differentiable --attack fgsm apgd-ce \
        --eps $(sweep_eps "$d") --n "$N_SWEEP" --json "$OUT/sanity.json"
  done
fi

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
