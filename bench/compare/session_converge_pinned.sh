#!/bin/bash
# session_converge.sh's second command, run on the code of a pinned commit (a git worktree at
# $PIN_SRC/..), so that edits to the checkout during a run of hours never reach a running
# benchmark half way. Resumable like session_converge.sh. Usage, from the repository root:
#   git worktree add --detach ../bench-pin <commit>; PIN_SRC=../bench-pin/src bash bench/compare/session_converge_pinned.sh
cd "$(dirname "$0")/../.."
export PROMPTINTERN_DATA_DIR="${PROMPTINTERN_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$(cd "$PIN_SRC" && pwd)"
O=bench/results/compare-geoquery-query-converge
echo "== $(date -u) full-prompt, then promptintern (stage 0 reused), then compressed, seed 0; code of commit $(git -C "$PIN_SRC" rev-parse --short HEAD)"
nice -n 5 .venv/bin/promptintern --threads 1 compare bench/compare/geoquery-query-converge.yaml --passes runs \
  --methods full-prompt,promptintern,compressed --seeds 1 --out $O
echo "== $(date -u) done"
