"""Serving a batch of long prompts that share a template: in full, or from copies of its KV cache.

The teacher labels new queries in batches from the template's cache (``infer.prefix_cache`` with a
batch size); this measures what that buys on the task's real prompts: the time to run the prompts
of one batch (one new token) and the time per further decoded token, in full and from the cache,
repeats taken in turn. Usage (from the repository root, data in $PROMPTINTERN_DATA_DIR):

    python bench/prefix_cache_batch.py --task geoquery --k 2 --batch 8 --repeats 3 \
        --out bench/results/prefix-cache-batch/geoquery.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="geoquery")
    ap.add_argument("--k", type=int, default=2, help="retrieved examples in each prompt")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=33, help="tokens forced in the decode timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from promptintern.inference import _Decoder, build_prefix_cache, cacheable_prefix_length, encode_prompts
    from promptintern.models import load_model
    from promptintern.prompt import to_messages
    from promptintern.retrieve import RetrieveConfig, Retriever
    from promptintern.stages import build_prompt
    from promptintern.tasks import get_task

    task = get_task(a.task)
    train, test = task.load_split("train"), task.load_split("test")
    retriever = Retriever.build(train, RetrieveConfig())
    prompts = [to_messages(build_prompt(task, q.query, task.template, retriever.topk(q.query, a.k), a.k), task.format)
               for q in test[: a.batch]]
    model, tok = load_model(a.model, device="cpu")
    seqs = encode_prompts(tok, prompts)
    n = cacheable_prefix_length(seqs)
    cache = build_prefix_cache(model, seqs[0][:n])
    decode = _Decoder(model, tok, 1)
    decode.stops = []  # forced lengths: no answer ends early

    def timed(new: int, cached: bool) -> float:
        decode.max_new_tokens = new
        rows = None
        if cached:
            rows = copy.deepcopy(cache)
            rows.batch_repeat_interleave(len(seqs))
        t0 = time.perf_counter()
        with torch.inference_mode():
            decode(seqs, rows, prefix_len=n if cached else 0)
        return time.perf_counter() - t0

    runs: dict[str, list[float]] = {k: [] for k in ("full_1", "cached_1", "cached_n")}
    for _ in range(a.repeats):  # in turn, so a change of load hits every system alike
        runs["full_1"].append(timed(1, False))
        runs["cached_1"].append(timed(1, True))
        runs["cached_n"].append(timed(a.new_tokens, True))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"task": a.task, "k": a.k, "model": a.model, "batch": len(seqs), "threads": a.threads,
              "prompt_tokens": [len(s) for s in seqs], "prefix_tokens": n, "repeats": runs, "median_s": med,
              "prompts_full_s": med["full_1"], "prompts_cached_s": med["cached_1"],
              "per_decoded_token_s": (med["cached_n"] - med["cached_1"]) / (a.new_tokens - 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "repeats"}))


if __name__ == "__main__":
    main()
