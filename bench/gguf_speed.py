#!/usr/bin/env python
"""One stream, one thread: llama.cpp (GGUF f16, q8_0) vs torch fp32 on the same model and prompts.

    python bench/gguf_speed.py [--model smollm2-135m] [--repeats 3] [--new-tokens 32] [--out DIR]

The model is the bundled SmolLM2-135M (an HF directory, converted to GGUF by the same converter
``promptintern export --format gguf`` runs); speed does not depend on the weights, so the base
stands for any run of it. Two NL2Bash prompts, as the methods serve them: the raw query in the
task's chat format (the internalized model) and the full prompt (system + template + 2 examples +
query, the full-prompt FT model). Per engine and prompt, each repeated ``--repeats`` times (median
kept), in-process, greedy, ``--new-tokens`` forced (end of turn suppressed):

- prefill: time to the first token (a generation of 1 token, from an empty cache);
- decode: tokens/s of the remaining ``new_tokens - 1`` tokens (total minus prefill);
- llama.cpp with its prompt cache: the full prompt again for another query after one request
  (llama-cpp-python keeps the KV of the longest common prefix: the template and examples).

Writes ``<out>/gguf_speed.json`` and ``.log``; an existing result is kept unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_load import results_target  # noqa: E402

log = logging.getLogger("gguf_speed")


def prompts(tokenizer: Any, data_dir: str | None) -> dict[str, list[str]]:
    """Two prompt texts per kind (raw query, full prompt) for two test queries, as infer renders them."""
    from promptintern.prompt import EMPTY_TEMPLATE, chat_prompt_text, to_messages
    from promptintern.stages import build_prompt
    from promptintern.tasks import get_task

    task = get_task("nl2bash")
    train, test = task.load_split("train", data_dir), task.load_split("test", data_dir)
    out: dict[str, list[str]] = {"raw query": [], "full prompt": []}
    for inst in test[:2]:
        raw = to_messages(build_prompt(task, inst.query, EMPTY_TEMPLATE, [], 0), task.format)
        full = to_messages(build_prompt(task, inst.query, task.template, train[:2], 2), task.format)
        out["raw query"].append(chat_prompt_text(tokenizer, raw))
        out["full prompt"].append(chat_prompt_text(tokenizer, full))
    return out


def torch_engine(model_dir: str, threads: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)

    def run(text: str, new_tokens: int, keep_cache: bool = False) -> tuple[float, int]:
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.eos_token_id)
        return time.perf_counter() - t0, ids["input_ids"].shape[1]

    return run


def llama_engine(gguf: Path, threads: int) -> Any:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                verbose=False)
    no_eos = {llm.token_eos(): -1e9}

    def run(text: str, new_tokens: int, keep_cache: bool = False) -> tuple[float, int]:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        if not keep_cache:
            llm.reset()  # forget the evaluated tokens: the whole prompt is computed again
        t0 = time.perf_counter()
        llm.create_completion(tokens, max_tokens=new_tokens, temperature=0, logit_bias=no_eos, repeat_penalty=1.0)
        return time.perf_counter() - t0, len(tokens)

    return run


def measure(run: Any, texts: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    prefill, total, n_prompt = [], [], 0
    run(texts[0], 2)  # warm-up
    for _ in range(repeats):
        for text in texts:
            p, n_prompt = run(text, 1)
            t, _ = run(text, new_tokens)
            prefill.append(p)
            total.append(t)
    ttft = statistics.median(prefill)
    decode = (new_tokens - 1) / max(1e-9, statistics.median(total) - ttft)
    return {"prompt_tokens": n_prompt, "ttft_s": ttft, "decode_tok_s": decode, "total_s": statistics.median(total),
            "samples": len(prefill)}


def measure_cached(run: Any, texts: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    """The second of two different queries with the same template and examples (prefix in the KV cache)."""
    prefill = []
    for _ in range(repeats):
        run(texts[0], 1)
        p, n = run(texts[1], 1, keep_cache=True)
        prefill.append(p)
    return {"prompt_tokens": n, "ttft_s": statistics.median(prefill), "samples": len(prefill)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gguf-speed")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    target = results_target(p, args.out, "gguf_speed", args.overwrite)
    from transformers import AutoTokenizer

    from promptintern.gguf_export import convert
    from promptintern.models import resolve_model_path

    model_dir = str(resolve_model_path(args.model))
    texts = prompts(AutoTokenizer.from_pretrained(model_dir), args.data_dir)
    doc: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)",
        "new_tokens": args.new_tokens, "repeats": args.repeats, "loadavg_start": os.getloadavg()[0], "results": {}}
    with tempfile.TemporaryDirectory(prefix="gguf-speed-") as scratch:
        engines = {"torch fp32": lambda: torch_engine(model_dir, args.threads)}
        for quant in ("f16", "q8_0"):
            gguf = Path(scratch) / f"{quant}.gguf"
            convert(Path(model_dir), gguf, quant)
            engines[f"llama.cpp {quant}"] = lambda g=gguf: llama_engine(g, args.threads)
        for name, make in engines.items():
            run = make()
            for kind, kind_texts in texts.items():
                r = measure(run, kind_texts, args.new_tokens, args.repeats)
                doc["results"][f"{name} | {kind}"] = r
                log.info("%s | %s: %s", name, kind, json.dumps(r))
            if name.startswith("llama.cpp"):
                r = measure_cached(run, texts["full prompt"], args.new_tokens, args.repeats)
                doc["results"][f"{name} | full prompt, prefix cached"] = r
                log.info("%s | full prompt, prefix cached: %s", name, json.dumps(r))
            del run
    doc["loadavg_end"] = os.getloadavg()[0]
    target.write_text(json.dumps(doc, indent=2) + "\n")
    log.info("wrote %s", os.path.relpath(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
