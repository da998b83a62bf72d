"""Generation time with and without a competing busy process, per thread count and OpenMP wait policy.

Why: torch's OpenMP threads spin at every barrier by default; when another process takes one of
the cores, the spinning threads wait on a descheduled sibling and a short generation can take ten
times longer. This script measures that on the bundled model so the default can be chosen on data::

    python bench/threads_contention.py --queries 8 --max-new-tokens 24

Each setting runs in a fresh interpreter (the wait policy is read when torch loads OpenMP); the
competitor is ``python -c 'while True: pass'``, started before and stopped (by its pid) after.
Prints one JSON line per setting (wall and CPU seconds of the generation: spinning threads burn
CPU that other processes on the machine could have used) and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SQL_TASK = ROOT / "examples" / "sql" / "task.yaml"


def child(queries: int, max_new_tokens: int, batch_size: int) -> None:
    """One measurement in this process: load the model, answer ``queries`` SQL questions, print JSON.

    torch is imported first, so libgomp sees the wait policy of the parent's environment, not the
    default ``import promptintern`` would put in place."""
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    import torch

    from promptintern.inference import generate
    from promptintern.io import read_jsonl
    from promptintern.models import load_model
    from promptintern.prompt import to_messages
    from promptintern.stages import build_prompt
    from promptintern.tasks import get_task

    threads = int(os.environ["BENCH_THREADS"])
    torch.set_num_threads(threads)
    task = get_task(str(SQL_TASK))
    rows = read_jsonl(SQL_TASK.parent / "train.jsonl")[:queries]
    prompts = [to_messages(build_prompt(task, r["query"], task.template, [], 0), task.format) for r in rows]
    model, tokenizer = load_model("smollm2-135m", device="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"threads": threads, "wait_policy": policy,
                      "queries": len(out), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}))


def measure(threads: int, policy: str | None, contended: bool, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env["BENCH_THREADS"] = str(threads)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if contended else None
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "--queries", str(args.queries),
                              "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)],
                             env=env, check=True, capture_output=True, text=True)
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["competitor"] = contended
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--queries", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1, 1])
    p.add_argument("--policies", nargs="+", default=["unset", "PASSIVE"])
    p.add_argument("--competitor", choices=("both", "yes", "no"), default="both",
                   help="measure with the busy competitor, without it, or both")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all settings (interleaved)")
    args = p.parse_args()
    if args.child:
        child(args.queries, args.max_new_tokens, args.batch_size)
        return
    rows = []
    sides = {"both": (False, True), "yes": (True,), "no": (False,)}[args.competitor]
    for _ in range(args.repeats):
        for threads in args.threads:
            for policy in args.policies:
                for contended in sides:
                    r = measure(threads, None if policy == "unset" else policy, contended, args)
                    print(json.dumps(r), flush=True)
                    rows.append(r)
    print("\n| threads | OMP_WAIT_POLICY | competitor | wall s | CPU s |\n|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['threads']} | {r['wait_policy']} | {'busy loop' if r['competitor'] else 'none'} | "
              f"{r['wall_s']:.2f} | {r.get('cpu_s', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
