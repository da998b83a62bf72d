"""MBPP reference solutions through the sandbox on one split: pass rate, seconds per item, oracle fallbacks.

    PYTHONPATH=src python bench/sandbox/mbpp_reference.py [split] [workers] > bench/sandbox/LOG.json

Measures the cost and the honesty of the verdict machinery: every reference solution should pass.
"""

from __future__ import annotations

import json
import sys
import time

from promptintern.evaluate.mbpp import pass_at_1
from promptintern.tasks import get_task


def main() -> int:
    split = sys.argv[1] if len(sys.argv) > 1 else "test"
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    instances = get_task("mbpp").load_split(split, None)  # the data directory of $PROMPTINTERN_DATA_DIR
    start = time.monotonic()
    res = pass_at_1({i.id: i.answer for i in instances}, instances, workers=workers, timeout_s=20)
    elapsed = time.monotonic() - start
    failed = sorted((k for k, v in res["per_item"].items() if not v["passed"]), key=int)
    print(json.dumps({
        "split": split, "n": res["n"], "passed": res["passed"], "pass@1": res["pass@1"],
        "workers": workers, "elapsed_s": round(elapsed, 1),
        "s_per_item_wall": round(elapsed / max(1, res["n"]), 4),
        "s_per_item_sandbox_mean": round(sum(v.get("wall_s", 0) for v in res["per_item"].values()) / max(1, res["n"]), 4),
        "oracle_fallback": res.get("oracle_fallback"),
        "failed": failed,
        "failed_detail": {k: res["per_item"][k].get("detail", "") for k in failed},
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
