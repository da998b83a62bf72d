#!/bin/bash
cd "$(dirname "$0")/../.."
export PROMPTINTERN_DATA_DIR="${PROMPTINTERN_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
O=bench/results/compare-geoquery-query-converge
echo "== $(date -u) query-only, seeds 0-1, commit $(git rev-parse --short HEAD)"
nice -n 5 .venv/bin/promptintern --threads 1 compare bench/compare/geoquery-query-converge.yaml --passes runs \
  --methods query-only --seeds 2 --out $O
echo "== $(date -u) full-prompt, then promptintern (stage 0 reused), seed 0"
nice -n 5 .venv/bin/promptintern --threads 1 compare bench/compare/geoquery-query-converge.yaml --passes runs \
  --methods full-prompt,promptintern --seeds 1 --out $O
echo "== $(date -u) done"
# Later in the same session (2 threads, nothing else running): the question split's query-only FT, seed 0
# nice -n 5 .venv/bin/promptintern --threads 2 compare bench/compare/geoquery-question-converge.yaml --passes runs \
#   --methods query-only --seeds 1 --out bench/results/compare-geoquery-question-converge
