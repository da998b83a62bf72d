#!/usr/bin/env python
"""Load test: the internalized model on raw queries vs the full-prompt FT model on its full prompt.

    python bench/serve_load.py --internalized runs/A --full-prompt runs/B [--requests 48] [--concurrency 4]

Each run is served by its own ``promptintern serve`` (transformers serve) process on a free
loopback port with one torch thread. The two systems take turns: ``--block`` requests to one,
then ``--block`` to the other, and so on, each turn sent by ``--concurrency`` client threads
(one openai client each), so both see the same background load on a shared machine. The
requests are a fixed list built from the first test queries of the runs' task; when it is done
the servers are stopped (SIGTERM) and the script ends by itself.

- internalized (a run served with the query alone): each request is the raw query as the only
  user message; the export's chat template adds the system message and ``query_format``.
- full prompt (a run served with the template and retrieved examples, e.g. ``full-prompt``):
  each request carries the run's full prompt (system + template + top-k examples + query),
  built by the same functions as ``promptintern infer``; the chat template is the base's.

Both use greedy decoding with the same ``max_tokens``. Measured per system: requests/s (its
requests over the summed wall time of its turns), p50/p95/mean latency per request (send to
answer, queueing behind the turn's other requests included), errors (exceptions or non-200;
must be 0), mean prompt and completion tokens (from the responses' ``usage``), the server's
start time, the CPU seconds per request of the server's whole process tree (user + system, all
threads of the supervisor, worker and model process, during its turns; with one torch thread,
roughly what a request would take on a core of its own) and the
machine's mean 1-minute load average at the start of its turns. Two warm-up
requests per system are sent first and not counted. ``transformers serve`` without continuous
batching runs one ``generate`` at a time, so concurrent requests queue: latency grows with
concurrency while requests/s stays that of one stream.

Writes ``<out>/serve_load.json`` (figures, conditions, machine) and ``<out>/serve_load.log``; an
``<out>`` that already holds results (the committed ones by default) is refused without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 600
log = logging.getLogger("serve_load")


def build_requests(run_dir: Path, n: int) -> tuple[str, list[list[dict[str, str]]]]:
    """(method, chat messages per request) for the first ``n`` test queries, as the run is served.

    Query-alone methods send the raw query only (the chat template wraps it); the others send
    the messages ``infer`` builds (template at τ, retrieved examples).
    """
    from promptintern.config import load_config
    from promptintern.pipeline import prepare, serving_messages

    cfg = load_config(str(run_dir / "config.yaml"))
    prep = prepare(cfg, run_dir)
    test = prep.test[:n]
    if len(test) < n:
        test = [test[i % len(test)] for i in range(n)]
    if prep.plan.serve_k == 0 and prep.plan.serve_tau == 0:
        return cfg.method, [[{"role": "user", "content": inst.query}] for inst in test]
    return cfg.method, [m for _, m in serving_messages(prep, test, prep.plan.serve_tau, prep.plan.serve_k)]


@contextlib.contextmanager
def server(run_dir: Path, threads: int, log_path: Path, max_tokens: int) -> Iterator[tuple[str, float, int]]:
    """``promptintern serve run_dir`` on a free loopback port; yields (base URL, start seconds, pid)."""
    from promptintern.serve import serve_command

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    args = ["--threads", str(threads), "serve", str(run_dir),
            "--max-tokens", str(max_tokens)]  # the server's cap must not cut the forced length
    t0 = time.perf_counter()
    with serve_command(args, log_path, env=env, start_timeout_s=START_TIMEOUT_S, stop_timeout_s=60) as (proc, url):
        yield url, time.perf_counter() - t0, proc.pid
    log.info("server stopped (exit %s)", proc.returncode)


def _one(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        ok = bool(reply.choices) and reply.choices[0].message.content is not None
        usage = reply.usage
        return {"ok": ok, "latency_s": time.perf_counter() - t0, "error": None if ok else "empty reply",
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None}
    except Exception as exc:  # every failure is counted, none stops the test
        return {"ok": False, "latency_s": time.perf_counter() - t0, "error": f"{type(exc).__name__}: {exc}",
                "prompt_tokens": None, "completion_tokens": None}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) used so far by ``pid`` and every process under it.

    The whole tree, because the process that generates is not the one started: ``promptintern
    serve`` runs a worker, and ``transformers serve`` generates in a model process of its own.
    """
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class System:
    """One served run, its requests and what came back."""

    label: str
    run_dir: Path
    method: str
    requests: list[list[dict[str, str]]]
    url: str = ""
    model: str = ""
    start_s: float = 0.0
    pid: int = 0
    cpu_s: float = 0.0
    pool: ThreadPoolExecutor | None = None
    local: threading.local = field(default_factory=threading.local)
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    loadavg: list[float] = field(default_factory=list)

    def connect(self, url: str, concurrency: int) -> None:
        """One openai client per worker thread, all pointed at ``url``."""
        from openai import OpenAI

        def init() -> None:
            self.local.client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)

        self.url = url
        self.pool = ThreadPoolExecutor(concurrency, initializer=init)
        self.model = OpenAI(base_url=url, api_key="unused").models.list().data[0].id

    def send(self, requests: list[list[dict[str, str]]], max_tokens: int) -> list[dict[str, Any]]:
        assert self.pool is not None
        return list(self.pool.map(lambda m: _one(self.local.client, self.model, m, max_tokens), requests))

    def block(self, start: int, size: int, max_tokens: int) -> None:
        """Send requests ``start .. start + size`` concurrently; adds their results and wall time."""
        self.loadavg.append(os.getloadavg()[0])
        t0, cpu0 = time.perf_counter(), cpu_seconds(self.pid)
        self.results += self.send(self.requests[start:start + size], max_tokens)
        self.wall_s += time.perf_counter() - t0
        self.cpu_s += cpu_seconds(self.pid) - cpu0

    def figures(self, concurrency: int, max_tokens: int) -> dict[str, Any]:
        lat = [r["latency_s"] for r in self.results]
        errors = [r["error"] for r in self.results if not r["ok"]]
        good = [r for r in self.results if r["ok"]]
        return {
            "run": str(self.run_dir), "method": self.method,
            "request": "raw query only" if len(self.requests[0]) == 1 else
                       "full prompt (system + template + retrieved examples + query)",
            "requests": len(self.results), "concurrency": concurrency, "max_tokens": max_tokens,
            "errors": len(errors), "error_examples": errors[:3], "wall_s": self.wall_s,
            "requests_per_s": len(self.results) / self.wall_s,
            "latency_p50_s": _percentile(lat, 50), "latency_p95_s": _percentile(lat, 95),
            "latency_mean_s": statistics.fmean(lat),
            "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in good) if good else None,
            "completion_tokens_mean": statistics.fmean(r["completion_tokens"] for r in good) if good else None,
            "server_cpu_s_per_request": self.cpu_s / len(self.results),
            "server_start_s": self.start_s, "loadavg_1min_mean": statistics.fmean(self.loadavg),
        }


def machine(threads: int) -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    import torch

    from promptintern.models import available_cores

    return (f"{cpu}, {available_cores()} cores visible, server on {threads} torch thread(s), "
            f"{platform.system()}, torch {torch.__version__} CPU fp32")


def results_target(parser: argparse.ArgumentParser, out: Path, name: str, overwrite: bool) -> Path:
    """``out/<name>.json``, refused (a parser error) when it exists without ``overwrite``; the folder
    is made and logging goes to the terminal and ``out/<name>.log`` (started afresh)."""
    target = out / f"{name}.json"
    if target.exists() and not overwrite:
        parser.error(f"{target} exists; pass --out for another directory or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{name}.log"
    log_path.write_text("")  # then appended to, by us and by any server started with this log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(log_path)])
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--internalized", required=True, type=Path, help="run served with the query alone")
    p.add_argument("--full-prompt", required=True, type=Path, help="run served with its full prompt")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--block", type=int, default=8, help="requests per system per turn (systems alternate)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out (committed ones too)")
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= 64 or args.requests < 1 or args.block < 1:
        p.error("--concurrency must be 1..64, --requests and --block >= 1")
    results_target(p, args.out, "serve_load", args.overwrite)
    log_path = args.out / "serve_load.log"
    from promptintern.cli import quiet_libraries

    quiet_libraries()
    for name in ("httpx", "httpx2", "openai"):  # one line per request is in the server's access log already
        logging.getLogger(name).setLevel(logging.WARNING)
    doc: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": machine(args.threads), "server": "promptintern serve (transformers serve, "
                           "no continuous batching), loopback",
                           "design": f"systems alternate in turns of {args.block} requests", "systems": {}}
    systems = []
    for label, run_dir in (("internalized", args.internalized), ("full-prompt", args.full_prompt)):
        method, requests = build_requests(run_dir, args.requests)
        systems.append(System(label, run_dir, method, requests))
        log.info("%s: run %s (method %s), %d requests", label, run_dir, method, len(requests))
    with contextlib.ExitStack() as stack:
        for s in systems:
            url, s.start_s, s.pid = stack.enter_context(server(s.run_dir, args.threads, log_path, args.max_tokens))
            log.info("%s: server up at %s after %.1f s", s.label, url, s.start_s)
            s.connect(url, args.concurrency)
            stack.callback(s.pool.shutdown)
            s.send(s.requests[:2], args.max_tokens)  # warm-up, not counted
        for start in range(0, args.requests, args.block):  # interleaved: both see the same background load
            for s in systems:
                s.block(start, args.block, args.max_tokens)
            log.info("%d/%d requests per system sent", min(start + args.block, args.requests), args.requests)
    for s in systems:
        doc["systems"][s.label] = s.figures(args.concurrency, args.max_tokens)
        log.info("%s: %s", s.label, json.dumps({k: v for k, v in doc["systems"][s.label].items()
                                                 if k != "error_examples"}))
    (args.out / "serve_load.json").write_text(json.dumps(doc, indent=2) + "\n")
    bad = sum(s["errors"] for s in doc["systems"].values())
    log.info("wrote %s (%d errors)", args.out / "serve_load.json", bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
