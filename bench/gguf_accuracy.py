#!/usr/bin/env python
"""What quantization costs: a run's GGUF exports answering its test set under llama.cpp vs the HF model.

    python bench/gguf_accuracy.py --run runs/demo [--quants f16,q8_0] [--out DIR]

For each quant: ``promptintern export --format gguf --quant Q`` of the run, then every test query
of the run (the same instances ``promptintern run`` scored) as a raw user message through
llama.cpp's chat completion with the GGUF's own chat template, greedy, ``max_tokens`` = the run's
answer length, one thread; the answers are scored by the function ``promptintern run`` scores with
(on the run's test instances), and
compared with the run's own predictions (HF, fp32, from ``promptintern run``): the metrics side by
side and the share of answers that are identical.

Writes ``<out>/gguf_accuracy.json``, the predictions per quant and the log; an existing result is
kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_load import results_target  # noqa: E402

log = logging.getLogger("gguf_accuracy")


def answer(gguf: Path, queries: list[tuple[str, str]], max_tokens: int) -> list[dict[str, Any]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    rows = []
    for qid, query in queries:
        t0 = time.perf_counter()
        r = llm.create_chat_completion(messages=[{"role": "user", "content": query}], temperature=0,
                                       max_tokens=max_tokens, repeat_penalty=1.0)
        rows.append({"id": qid, "prediction": (r["choices"][0]["message"]["content"] or "").strip(),
                     "input_tokens": r["usage"]["prompt_tokens"], "output_tokens": r["usage"]["completion_tokens"],
                     "latency_s": time.perf_counter() - t0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gguf-accuracy")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    target = results_target(p, args.out, "gguf_accuracy", args.overwrite)
    from promptintern.config import load_config
    from promptintern.evaluate import score
    from promptintern.exporter import served_max_tokens
    from promptintern.gguf_export import export_gguf
    from promptintern.io import read_json, write_jsonl
    from promptintern.pipeline import check

    cfg = load_config(str(args.run / "config.yaml"))
    checked = check(cfg)
    queries = [(inst.id, inst.query) for inst in checked.test]
    cap = served_max_tokens(args.run) or 64
    metrics = read_json(args.run / "metrics.json")
    system = metrics["systems"][cfg.method]
    hf_preds = {}
    for path in sorted(args.run.rglob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and {"id", "prediction"} <= set(rows[0]) and {r["id"] for r in rows} == {q for q, _ in queries} \
                and cfg.method in path.name:
            hf_preds = {r["id"]: r["prediction"] for r in rows}
    doc: dict[str, Any] = {"run": args.run.name,  # the folder's name: its path is this machine's
                            "method": cfg.method, "task": cfg.task, "n_test": len(queries),
                           "max_tokens": cap, "metric": metrics.get("metric"),
                           "hf fp32": {"metrics": system["metrics"], "ci95": system.get("ci95"),
                                       "source": "the run's metrics.json"}, "quants": {}}
    log.info("hf fp32: %s", system["metrics"])
    with tempfile.TemporaryDirectory(prefix="gguf-acc-", dir=args.out) as scratch:
        for quant in args.quants.split(","):
            gguf = export_gguf(args.run, Path(scratch) / quant, quant=quant)
            rows = answer(gguf, queries, cap)
            preds = args.out / f"predictions-{quant}.jsonl"
            write_jsonl(preds, rows)
            scored = score(checked.task.metric, {r["id"]: r["prediction"] for r in rows}, checked.test,
                           bootstrap=cfg.eval.bootstrap, sandbox=cfg.eval.sandbox)
            same = sum(hf_preds.get(r["id"]) == r["prediction"] for r in rows) if hf_preds else None
            doc["quants"][quant] = {"metrics": scored["metrics"], "ci95": scored.get("ci95"), "identical_to_hf": same,
                                    "gguf_bytes": gguf.stat().st_size}
            log.info("%s: %s; identical answers %s/%d", quant, scored["metrics"], same, len(rows))
    target.write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s", os.path.relpath(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
