#!/usr/bin/env bash
# Short CPU runs of the generated LRA tasks (ListOps, Pathfinder) with softmax and one linear-time mechanism,
# to show that each learns above chance within a CPU budget (docs/results.md, "Long Range Arena").
#   bash benchmarks/lra_cpu_short.sh [STEPS]        STEPS: optimiser steps per run (default 600)
# The small recipe (the PyTorch reproductions') with a budget cut to STEPS, so its warm-up is cut to a tenth of
# the budget and its peak learning rate raised to 1e-3; every other setting is the recipe's. Runs go to
# benchmarks/scratch/lra-cpu (ignored by git); curves and summary.md to benchmarks/results/lra-cpu-short.
set -euo pipefail
STEPS=${1:-600}
PY=${PY:-.venv/bin/python}
LOGS=benchmarks/scratch/lra-cpu
BUDGET="--max-steps $STEPS --warmup 0.1 --lr 1e-3 --val-check-interval 200 --limit-val-batches 32 --no-progress-bar --logdir $LOGS"
mkdir -p "$LOGS"
for attention in softmax linear; do
  $PY train.py --model lra-listops --attention "$attention" $BUDGET
  $PY train.py --model lra-pathfinder --attention "$attention" --batch-size 64 $BUDGET
done
$PY benchmarks/train_curves.py "$LOGS"/lra-*/version_0 --out benchmarks/results/lra-cpu-short \
    --machine "$($PY -c 'from profiling.machine import cpu_model; print(cpu_model())'), $(nproc) cores, no GPU"
