#!/usr/bin/env python
"""Served end to end: ``promptintern serve --engine llama.cpp`` (GGUF) vs ``--engine transformers``.

    python bench/serve_engines.py [--model smollm2-135m] [--requests 8] [--max-tokens 32] [--out DIR]

Each engine serves the same model (the bundled SmolLM2-135M: the HF directory, and its GGUF
conversions) on a free loopback port with one thread, behind ``promptintern serve``'s gate with
an API key. The requests are the first NL2Bash test queries, each as a raw user message, greedy,
``max_tokens`` fixed (the server cap is set to it); every request is answered (the count of
errors is reported and must be 0). At 1 and then 4 concurrent clients (``--requests`` each):
requests/s, p50/p95 latency, mean completion tokens, and the CPU seconds per request of the whole
server process tree. Both engines generate one request at a time, so concurrency adds queueing.

Writes ``<out>/serve_engines.json`` and ``.log``; an existing result is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_load import _percentile, cpu_seconds, results_target  # noqa: E402

log = logging.getLogger("serve_engines")
KEY = "bench-key"


@contextlib.contextmanager
def served(path: Path, engine: str, max_tokens: int, log_path: Path) -> Iterator[tuple[str, int]]:
    from promptintern.serve import serve_command

    args = ["--threads", "1", "serve", str(path), "--engine", engine, "--api-key", KEY,
            "--max-tokens", str(max_tokens), "--device", "cpu"]
    with serve_command(args, log_path, start_timeout_s=600, stop_timeout_s=60) as (proc, url):
        yield url, proc.pid


def load(url: str, pid: int, queries: list[str], max_tokens: int, clients: int) -> dict[str, Any]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def one(q: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                               max_tokens=max_tokens, temperature=0)
            return {"ok": True, "s": time.perf_counter() - t0, "completion": r.usage.completion_tokens,
                    "prompt": r.usage.prompt_tokens}
        except Exception as exc:  # counted, reported
            return {"ok": False, "s": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}"}

    one(queries[0])  # warm-up
    cpu0, t0, load0 = cpu_seconds(pid), time.perf_counter(), os.getloadavg()[0]
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, queries))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    good = [r for r in results if r["ok"]]
    lat = [r["s"] for r in results]
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(good),
            "requests_per_s": len(results) / wall, "latency_p50_s": _percentile(lat, 50),
            "latency_p95_s": _percentile(lat, 95),
            "prompt_tokens_mean": statistics.fmean(r["prompt"] for r in good) if good else None,
            "completion_tokens_mean": statistics.fmean(r["completion"] for r in good) if good else None,
            "cpu_s_per_request": cpu / len(results), "loadavg_1min": load0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-engines")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    target = results_target(p, args.out, "serve_engines", args.overwrite)
    log_path = args.out / "serve_engines.log"
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from promptintern.gguf_export import convert
    from promptintern.models import resolve_model_path
    from promptintern.tasks import get_task

    queries = [i.query for i in get_task("nl2bash").load_split("test", args.data_dir)[:args.requests]]
    model_dir = Path(resolve_model_path(args.model))
    doc: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
                           "max_tokens": args.max_tokens, "threads": 1, "results": {}}
    with tempfile.TemporaryDirectory(prefix="serve-engines-") as scratch:
        targets = [("transformers fp32", model_dir, "transformers")]
        for quant in args.quants.split(","):
            gguf = Path(scratch) / f"model-{quant}.gguf"
            convert(model_dir, gguf, quant)
            targets.append((f"llama.cpp {quant}", gguf, "llama.cpp"))
        for label, path, engine in targets:
            with served(path, engine, args.max_tokens, log_path) as (url, pid):
                for clients in (1, 4):
                    r = load(url, pid, queries, args.max_tokens, clients)
                    doc["results"][f"{label} | {clients} client(s)"] = r
                    log.info("%s | %d client(s): %s", label, clients, json.dumps(r))
    target.write_text(json.dumps(doc, indent=2) + "\n")
    bad = sum(r["errors"] for r in doc["results"].values())
    log.info("wrote %s (%d errors)", os.path.relpath(target), bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
