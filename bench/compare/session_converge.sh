#!/bin/bash
# The GeoQuery query split at `converge`, resumable: rerun after any stop and it goes on where it
# stopped (finished (method, seed) pairs are skipped, a stage continues from its last checkpoint).
# Query-only FT seeds 0-1 ran first (an earlier session); then full-prompt FT seed 0 (the reference,
# PromptIntern's stage 0 and the teacher of the new-query methods), PromptIntern and compressed.
cd "$(dirname "$0")/../.."
export PROMPTINTERN_DATA_DIR="${PROMPTINTERN_DATA_DIR:-$(cd .. && pwd)/shared/data}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
O=bench/results/compare-geoquery-query-converge
echo "== $(date -u) query-only, seeds 0-1, commit $(git rev-parse --short HEAD)"
nice -n 5 .venv/bin/promptintern --threads 1 compare bench/compare/geoquery-query-converge.yaml --passes runs \
  --methods query-only --seeds 2 --out $O
echo "== $(date -u) full-prompt, then promptintern (stage 0 reused), then compressed, seed 0"
nice -n 5 .venv/bin/promptintern --threads 1 compare bench/compare/geoquery-query-converge.yaml --passes runs \
  --methods full-prompt,promptintern,compressed --seeds 1 --out $O
echo "== $(date -u) done"
