#!/usr/bin/env bash
# Short real-data runs of every task on CPU, with their curves (README "Results: on CPU").
#   bash benchmarks/train_cpu_short.sh [DATA]      DATA: folder with cifar10-jpg/, imdb/, wikitext-2/ (default ../shared/data)
# Runs go to benchmarks/scratch/train-cpu (ignored by git); curves and summary.md to benchmarks/results/train-cpu.
set -euo pipefail
DATA=${1:-../shared/data}
PY=${PY:-.venv/bin/python}
LOGS=benchmarks/scratch/train-cpu
C="--no-progress-bar --logdir $LOGS"
for d in cifar10-jpg imdb wikitext-2; do
  [ -d "$DATA/$d" ] || { echo "train_cpu_short.sh: error: $DATA/$d is missing; pass the folder holding cifar10-jpg/, imdb/ and wikitext-2/" >&2; exit 2; }
done
rm -rf "$LOGS"
# each run: the default model, a budget of a few minutes on 2 cores
$PY train.py --model vit --attention linformer --data-dir "$DATA/cifar10-jpg" $C --batch-size 128 --max-epochs 3 \
    --limit-train-batches 60 --limit-val-batches 10 --limit-test-batches 20
$PY train.py --model imdb --attention performer --data-dir "$DATA/imdb" $C --max-epochs 2
$PY train.py --model wikitext --attention linear --data-dir "$DATA/wikitext-2" $C --max-epochs 1 \
    --limit-train-batches 60 --limit-val-batches 10 --limit-test-batches 10   # ~4 s a step: 33k-word softmax
$PY train.py --model inpaint-cnn --data-dir "$DATA/cifar10-jpg" $C --batch-size 64 --max-epochs 2 \
    --limit-train-batches 100 --limit-val-batches 10 --limit-test-batches 20
$PY train.py --model inpaint-transformer --attention local --data-dir "$DATA/cifar10-jpg" $C --batch-size 64 --max-epochs 2 \
    --limit-train-batches 100 --limit-val-batches 10 --limit-test-batches 20
$PY benchmarks/train_curves.py "$LOGS"/*/version_0 --out benchmarks/results/train-cpu \
    --machine "$($PY -c 'from profiling.machine import cpu_model; print(cpu_model())'), $(nproc) cores, no GPU"
