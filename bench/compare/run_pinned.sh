#!/bin/bash
# One `compare --passes runs` of a converge config on the code of a pinned commit (a git worktree whose
# src/ is PIN_SRC), so that edits to the checkout during a run of hours never reach it half way.
# Resumable: rerun the same line after any stop. From the repository root:
#   git worktree add --detach ../bench-pin <commit>
#   PIN_SRC=../bench-pin/src nohup bash bench/compare/run_pinned.sh nl2bash-converge full-prompt,query-only,compressed,promptintern 1 \
#     >> bench/results/compare-nl2bash-converge/runs.log 2>&1 &
cd "$(dirname "$0")/../.."
name=$1 methods=$2 seeds=$3
export PROMPTINTERN_DATA_DIR="${PROMPTINTERN_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$(cd "$PIN_SRC" && pwd)"
echo "== $(date -u) $name: $methods, $seeds seed(s); code of commit $(git -C "$PIN_SRC" rev-parse --short HEAD)"
nice -n 5 .venv/bin/promptintern --threads 1 compare "bench/compare/$name.yaml" --passes runs \
  --methods "$methods" --seeds "$seeds" --out "bench/results/compare-$name"
echo "== $(date -u) done"
