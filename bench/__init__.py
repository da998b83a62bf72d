"""The promptintern benchmark harness (``python bench/run_bench.py --task nl2bash``); see bench/README.md."""
