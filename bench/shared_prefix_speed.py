"""Training step time and peak memory with and without the shared prefix, on a config's stage 0.

    python bench/shared_prefix_speed.py configs/nl2bash.yaml [--set k=v ...] [--batches 6] [--repeats 2]
    python bench/shared_prefix_speed.py configs/nl2bash.yaml --only off      # one mode, for its peak memory

The same batches (stage 0 records in a seeded order, ``train.per_device_batch_size`` rows) run
forward + backward through the LoRA model with ``shared_prefix`` off and auto, interleaved
(off, auto, off, auto, ...) so that machine noise hits both alike; the medians and their ratio are
printed as one JSON line. Peak resident memory needs one process per mode (``--only``): the kernel
keeps only a process's maximum. Everything comes from the library (config, prepare, tokenize,
collate, answer_loss); nothing here re-implements training.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time


def _run_block(path: str) -> str:
    """A benchmark config (``run:`` holds the shared run config) as a plain run config file."""
    import tempfile
    from pathlib import Path

    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "run" not in data:
        return path
    out = Path(tempfile.mkdtemp(prefix="promptintern-bench-")) / "run.yaml"
    out.write_text(yaml.safe_dump(data["run"]))
    return str(out)


def _batches(cfg, n_batches: int, seed: int):
    from promptintern.models import load_tokenizer
    from promptintern.pipeline import prepare
    from promptintern.training import PadCollator, tokenize_records

    prep = prepare(cfg)
    records = list(prep.stages[0].records)
    random.Random(seed).shuffle(records)
    tok = load_tokenizer(cfg.model)
    data, _ = tokenize_records(records, tok, cfg.train.max_length)
    size = cfg.train.per_device_batch_size
    collate = PadCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return [collate(data[i * size:(i + 1) * size]) for i in range(min(n_batches, len(data) // size))]


def _model(cfg):
    from peft import get_peft_model

    from promptintern.models import load_model

    base, _ = load_model(cfg.model, device="cpu")
    model = get_peft_model(base, cfg.lora.to_peft())
    model.train()
    return model


def _step(model, batch, mode: str, tokens: list, cpu: list) -> float:
    """Forward + backward of one batch; returns wall seconds and appends process CPU seconds to ``cpu``
    (on a shared machine CPU time is the steadier figure: wall time includes waiting for a core)."""
    from promptintern.training import answer_loss

    start, start_cpu = time.perf_counter(), time.process_time()
    loss = answer_loss(model, batch, shared_prefix=mode, tokens=tokens)
    loss.backward()
    model.zero_grad(set_to_none=True)
    cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", choices=("off", "auto"), default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed first step (saves one step)")
    a = p.parse_args(argv)

    import torch

    from promptintern.config import load_config
    from promptintern.training import token_summary

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(_run_block(a.config), a.set)
    batches = _batches(cfg, a.batches, cfg.train.seed)
    model = _model(cfg)
    modes = [a.only] if a.only else ["off", "auto"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    tokens: dict[str, list] = {m: [] for m in modes}
    if not a.no_warmup:
        _step(model, batches[0], modes[0], [], [])  # warm-up (allocator, kernels), not timed
    for _ in range(a.repeats):
        for batch in batches:
            for mode in modes:
                times[mode].append(_step(model, batch, mode, tokens[mode], cpu[mode]))
                print(f"{mode}: {times[mode][-1]:.2f} s wall, {cpu[mode][-1]:.2f} s CPU "
                      f"(width {batch['input_ids'].shape[1]})", file=sys.stderr, flush=True)
    out = {"config": a.config, "set": a.set, "batch_size": cfg.train.per_device_batch_size,
           "batches": len(batches), "repeats": a.repeats, "threads": a.threads}
    for mode in modes:
        summary = token_summary(tokens[mode])
        out[mode] = {"wall_s": [round(t, 2) for t in times[mode]], "cpu_s": [round(t, 2) for t in cpu[mode]],
                     "median_wall_s": round(statistics.median(times[mode]), 2),
                     "median_cpu_s": round(statistics.median(cpu[mode]), 2), "tokens": summary["tokens"]}
    if a.only:
        out[a.only]["peak_rss_mb"] = token_summary([])["peak_rss_mb"]
    else:
        for kind, series in (("wall", times), ("cpu", cpu)):
            pairs = [o / s for o, s in zip(series["off"], series["auto"], strict=True)]
            out[f"speedup_{kind}_per_batch"] = [round(x, 2) for x in pairs]
            out[f"speedup_{kind}_median"] = round(statistics.median(pairs), 2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
