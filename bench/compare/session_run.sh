#!/usr/bin/env bash
# One task's compare on 2 shared CPU cores, in the order that leaves something whole if the session
# ends early: seed 0's runs, the speed pass on seed 0's adapters, the remaining seeds, the report.
# Usage: bench/compare/session_run.sh <task> [--set key=value ...]   (rerun to resume)
set -euo pipefail
task=$1; shift
out=bench/results/compare-$task
export OMP_NUM_THREADS=1 PROMPTINTERN_DATA_DIR=${PROMPTINTERN_DATA_DIR:-../shared/data}
pi() { promptintern --threads 1 compare "bench/compare/$task.yaml" --out "$out" "$@"; }
pi --seeds 1 --passes runs "$@"
pi --seeds 1 --passes speed "$@"
pi --passes runs "$@"
pi --passes "" "$@"
