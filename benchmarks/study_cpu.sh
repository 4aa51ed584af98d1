#!/usr/bin/env bash
# The comparison study of every applicable attention mechanism on each task, on CPU with real data
# (README "The comparison study"). Budgets are what a 2-core machine affords: small models (dim 64),
# a few hundred steps each, the same for every mechanism of a task (ViT: 3 seeds).
#   bash benchmarks/study_cpu.sh [DATA] [TASK...]   DATA: folder with cifar10-jpg/, imdb/, wikitext-2/ (default ../shared/data)
# Runs go to benchmarks/scratch/study-cpu (ignored by git); each study's report, table, plots and sweep to
# benchmarks/results/study-cpu-<task>/. Re-running skips finished runs.
set -euo pipefail
DATA=${1:-../shared/data}
shift || true
TASKS=${*:-vit imdb wikitext inpaint-transformer}
PY=${PY:-.venv/bin/python}
LOGS=benchmarks/scratch/study-cpu
for d in cifar10-jpg imdb wikitext-2; do
  [ -d "$DATA/$d" ] || { echo "study_cpu.sh: error: $DATA/$d is missing; pass the folder holding cifar10-jpg/, imdb/ and wikitext-2/" >&2; exit 2; }
done
C="--attention all --no-progress-bar --logdir $LOGS --dim 64 --heads 4 --max-epochs 2 --num-workers 0"
# options that make the approximations approximate at these short sequences (their defaults exceed them)
SHORT="--attention-opt linformer.k=16 --attention-opt nystromformer.landmarks=16 --attention-opt local.window=16 \
       --attention-opt hybrid.window=16 --attention-opt performer.features=64"
LONG="--attention-opt linformer.k=64 --attention-opt nystromformer.landmarks=32 --attention-opt local.window=32 \
      --attention-opt hybrid.window=32 --attention-opt performer.features=64"
for task in $TASKS; do
  case $task in
    vit) $PY train.py --model vit --data-dir "$DATA/cifar10-jpg" $C $SHORT --depth 2 --batch-size 64 --seeds 3 \
           --limit-train-batches 200 --limit-val-batches 20 --limit-test-batches 40 --study-dir benchmarks/results/study-cpu-vit ;;
    imdb) $PY train.py --model imdb --data-dir "$DATA/imdb" $C $LONG --depth 1 --seq-len 256 --batch-size 32 \
           --limit-train-batches 150 --limit-val-batches 20 --limit-test-batches 40 --study-dir benchmarks/results/study-cpu-imdb ;;
    wikitext) $PY train.py --model wikitext --data-dir "$DATA/wikitext-2" $C $LONG --tokenizer bpe --depth 2 --seq-len 128 \
           --batch-size 16 --limit-train-batches 150 --limit-val-batches 20 --limit-test-batches 20 \
           --study-dir benchmarks/results/study-cpu-wikitext ;;
    inpaint-transformer) $PY train.py --model inpaint-transformer --data-dir "$DATA/cifar10-jpg" $C $SHORT --depth 2 \
           --batch-size 32 --limit-train-batches 150 --limit-val-batches 10 --limit-test-batches 20 \
           --study-dir benchmarks/results/study-cpu-inpaint-transformer ;;
    *) echo "study_cpu.sh: error: unknown task $task; use vit, imdb, wikitext or inpaint-transformer" >&2; exit 2 ;;
  esac
done
