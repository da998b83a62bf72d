"""Speed separated from answer length: every system generates exactly the same number of tokens.

A fine-tuned model that writes shorter answers looks faster for a reason that has nothing to do
with its prompt. Here the end-of-turn token is suppressed (``min_new_tokens`` = ``max_new_tokens``
= L, transformers' own ``MinNewTokensLengthLogitsProcessor``), so full prompt, prefix-cached full
prompt and query alone all write L tokens and differ only in what they read.

One timed ``generate`` gives three numbers: a logits processor stamps the clock each time the
model has produced a next-token distribution, so the first stamp is the time to first token
(prefill + one step) and the spacing of the rest is the time per output token.

Measured per system and length: TTFT, s/output token and total latency at batch 1 over
``repeats`` runs (median and interquartile range), throughput at the larger batch sizes
(left-padded batches on the library's generation path; the prefix cache serves batch 1, so its
"batch b" is b queries served one after another, which is how the library serves it), peak
memory (CUDA allocator peak, or the process's peak RSS reset before each run on Linux) and KV-cache
bytes per query (from the model config: 2 × layers × KV heads × head dim × bytes × positions).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SYSTEMS = ("full", "prefix-cache", "query")


@dataclass
class SpeedArgs:
    """The speed pass on the trained models (merged LoRA weights, as deployed)."""

    lengths: list[int] = field(default_factory=lambda: [16, 64], metadata={"help": "Forced answer lengths in new tokens (end of turn suppressed)."})
    repeats: int = field(default=5, metadata={"help": "Timed runs per system, length and batch size (median and IQR over them)."})
    batch_sizes: list[int] = field(default_factory=lambda: [8], metadata={"help": "Batch sizes of the throughput measurement (batch 1 is always measured)."})
    queries: int = field(default=8, metadata={"help": "Test queries the timed runs cycle through."})
    as_served_queries: int = field(default=8, metadata={"help": "Test queries answered at batch 1 with natural answer lengths (the 'as served' column)."})
    seed: int = field(default=0, metadata={"help": "Which training seed's adapter is timed (the weights do not change the work done)."})

    def validate(self) -> None:
        from ..errors import ConfigError

        if not self.lengths or min(self.lengths) < 2:
            raise ConfigError("compare.speed.lengths: give lengths >= 2 (a time per token needs two tokens)")
        if self.repeats < 1 or self.queries < 1 or self.as_served_queries < 0:
            raise ConfigError("compare.speed: repeats and queries must be >= 1, as_served_queries >= 0")
        if any(b < 2 for b in self.batch_sizes):
            raise ConfigError("compare.speed.batch_sizes: throughput batch sizes must be >= 2")


@dataclass
class ScalingArgs:
    """Speed vs the length of the recurring prompt (the bundled base model; no training)."""

    prompt_lengths: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000, 4000], metadata={"help": "Recurring-prompt (template) lengths in tokens: the task's template grown from its own documentation or truncated."})
    lengths: list[int] = field(default_factory=lambda: [16, 64], metadata={"help": "Forced answer lengths."})
    repeats: int = field(default=5, metadata={"help": "Timed runs per point."})
    batch_sizes: list[int] = field(default_factory=list, metadata={"help": "Throughput batch sizes (empty: batch 1 only)."})
    queries: int = field(default=5, metadata={"help": "Test queries the timed runs cycle through."})
    model: str | None = field(default=None, metadata={"help": "Model to time; null = the run config's model."})
    target: float = field(default=4.2, metadata={"help": "The speed-up to look for (the paper's 4.2×)."})

    def validate(self) -> None:
        from ..errors import ConfigError

        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ConfigError("compare.scaling.prompt_lengths: give lengths >= 1")
        if not self.lengths or min(self.lengths) < 2:
            raise ConfigError("compare.scaling.lengths: give lengths >= 2")
        if self.repeats < 1 or self.queries < 1:
            raise ConfigError("compare.scaling: repeats and queries must be >= 1")


# ---------------------------------------------------------------- one timed generation


def _clock_processor() -> Any:
    from transformers import LogitsProcessor

    class Clock(LogitsProcessor):
        """Stamps the time each next-token distribution is ready (it changes no score)."""

        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.stamps.append(time.perf_counter())
            return scores

    return Clock()


def _peak_reset(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elif os.path.exists("/proc/self/clear_refs"):
        try:
            with open("/proc/self/clear_refs", "w") as fh:  # "5" resets the peak RSS (VmHWM)
                fh.write("5")
        except OSError:
            pass


def _peak_bytes(device: Any) -> tuple[int | None, str]:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "process peak RSS (VmHWM, reset per run)"
    except OSError:
        pass
    return None, "unavailable"


def kv_bytes_per_position(model: Any) -> int:
    """Bytes of keys and values one token position takes in the KV cache of ``model``."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    element = next(model.parameters()).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * element


@dataclass
class Timed:
    """One timed generation: when each next-token distribution was ready, the end, peak memory."""

    stamps: list[float]  # seconds from the start; stamps[i] = token i+1 ready
    total_s: float
    new_tokens: int
    peak_bytes: int | None

    def at(self, length: int) -> tuple[float, float, float]:
        """(latency, TTFT, s/output token) of the first ``length`` tokens of this generation: the same
        computation as a generation of exactly ``length`` tokens, without its few-ms ending."""
        end = self.total_s if length == self.new_tokens else self.stamps[length - 1]
        per_token = (self.stamps[length - 1] - self.stamps[0]) / (length - 1) if length > 1 else float("nan")
        return end, self.stamps[0], per_token


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=pad_id, padding_side="left")
    mask = pad_sequence([torch.ones(len(s), dtype=torch.long) for s in seqs], batch_first=True, padding_value=0,
                        padding_side="left")
    return ids.to(device), mask.to(device)


def timed_generate(model: Any, tokenizer: Any, seqs: Sequence[Sequence[int]], length: int,
                   cache: Any = None) -> Timed:
    """Generate exactly ``length`` new tokens for each of ``seqs`` (one batch), greedy, timed.

    ``cache`` (batch 1 only): a KV cache of a prefix of the sequence, copied before use as the
    library's prefix-cached serving does (the copy is part of the measured time).
    """
    import torch

    from ..inference import stop_token_ids
    from ..models import cache_keyword

    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    ids, mask = _left_pad(seqs, pad, model.device)
    clock = _clock_processor()
    _peak_reset(model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        past = copy.deepcopy(cache) if cache is not None else None
        out = model.generate(input_ids=ids, attention_mask=mask, **{cache_keyword(model): past}, max_new_tokens=length,
                             min_new_tokens=length, do_sample=False, num_beams=1, eos_token_id=stops,
                             pad_token_id=pad, use_cache=True, logits_processor=[clock])
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    peak, _ = _peak_bytes(model.device)
    return Timed([t - t0 for t in clock.stamps], total, int(out.shape[1] - ids.shape[1]), peak)


def _load() -> list[float] | None:
    """The machine's 1/5/15-minute load averages: other work on the cores skews a timing."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def summarise(values: Sequence[float]) -> dict[str, float]:
    """Median and interquartile range (the spread a reader can trust with a handful of repeats)."""
    a = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(a.size)}


# ---------------------------------------------------------------- a system at one length


@dataclass
class System:
    """What one system reads: token sequences of its prompts, and its cached prefix (or none)."""

    name: str
    seqs: list[list[int]]
    prefix_len: int = 0
    cache: Any = None
    model: Any = None  # the model that serves it (several systems may share one)


def make_system(name: str, model: Any, tokenizer: Any, prompts: Sequence[Any], prefix_cache: bool) -> System:
    """Encode ``prompts`` (chat messages) as the library serves them; with ``prefix_cache`` build the
    KV cache of their common prefix once (the library's prefix-cache path)."""
    from ..inference import build_prefix_cache, cacheable_prefix_length, encode_prompts

    seqs = encode_prompts(tokenizer, list(prompts))
    if not prefix_cache:
        return System(name, seqs, model=model)
    n = cacheable_prefix_length(seqs)
    return System(name, seqs, n, build_prefix_cache(model, seqs[0][:n]) if n else None, model)


def measure_interleaved(tokenizer: Any, systems: Sequence[System], lengths: Sequence[int], repeats: int,
                        batch_sizes: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per system and forced length: batch-1 latency, TTFT and s/token (median, IQR) and throughput.

    The systems' repeats are taken in turn (A, B, C, A, B, C, …), each on its own model, so that a
    change in the machine's load during the measurement falls on every system alike: on a shared
    machine, systems timed one after another differ by the load of their minutes, not only by
    their prompts. Each repeat generates max(``lengths``) tokens; a shorter length is read off the
    same generation's clock at its last token (the first L tokens are the same computation).
    """
    longest = max(lengths)
    for system in systems:  # warm-up, untimed
        timed_generate(system.model, tokenizer, [system.seqs[0]], 2, system.cache)
    runs: dict[str, list[Timed]] = {s.name: [] for s in systems}
    for r in range(repeats):
        for system in systems:
            runs[system.name].append(timed_generate(system.model, tokenizer, [system.seqs[r % len(system.seqs)]],
                                                    longest, system.cache))
    batched: dict[str, dict[int, list[list[Timed]]]] = {s.name: {} for s in systems}
    for b in batch_sizes:
        for _ in range(max(1, min(repeats, 3))):
            for s in systems:
                batched[s.name].setdefault(b, []).append(_throughput_run(tokenizer, s, longest, b))
    return {s.name: _rows(s.model, s, runs[s.name], batched[s.name], lengths) for s in systems}


def _rows(model: Any, system: System, runs: list[Timed], batched: dict[int, list[list[Timed]]],
          lengths: Sequence[int]) -> dict[str, Any]:
    longest = max(lengths)
    if any(r.new_tokens != longest for r in runs):
        raise RuntimeError(f"forced length {longest} not reached ({[r.new_tokens for r in runs]})")
    per_pos = kv_bytes_per_position(model)
    prompt_tokens = float(np.mean([len(s) for s in system.seqs]))
    out = {}
    for L in lengths:
        at = [r.at(L) for r in runs]
        out[str(L)] = {
            "length": L, "new_tokens": [r.new_tokens for r in runs], "timed_from_length": longest,
            "prompt_tokens_mean": prompt_tokens, "cached_prefix_tokens": system.prefix_len,
            "latency_s": summarise([x[0] for x in at]), "ttft_s": summarise([x[1] for x in at]),
            "s_per_output_token": summarise([x[2] for x in at]),
            "latency_s_runs": [x[0] for x in at],
            "peak_memory_bytes": max((r.peak_bytes or 0) for r in runs) or None,
            "peak_memory_kind": _peak_bytes(model.device)[1] + f", over {longest} new tokens",
            # everything resident while the query runs (the prefix-cached path copies the prefix per query)
            "kv_bytes_per_query": int(per_pos * (prompt_tokens + L)),
            "kv_bytes_shared_prefix": int(per_pos * system.prefix_len),
            "kv_bytes_per_position": per_pos,
            "throughput": {str(b): _throughput_at(walls, b, L, system) for b, walls in batched.items()},
            "load_average": _load(),
        }
    return out


def _throughput_run(tokenizer: Any, system: System, length: int, batch: int) -> list[Timed]:
    """One timed run of ``batch`` queries (the prefix-cached system: ``batch`` queries one after another)."""
    seqs = [system.seqs[i % len(system.seqs)] for i in range(batch)]
    if system.cache is not None:
        return [timed_generate(system.model, tokenizer, [s], length, system.cache) for s in seqs]
    return [timed_generate(system.model, tokenizer, seqs, length)]


def _throughput_at(runs: list[list[Timed]], batch: int, length: int, system: System) -> dict[str, Any]:
    walls = summarise([sum(t.at(length)[0] for t in group) for group in runs])
    return {"queries_per_s": batch / walls["median"], "wall_s": walls,
            "how": "sequential batch-1 queries from the prefix cache" if system.cache is not None
            else "one left-padded batch"}


def as_served(model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int, prefix_cache: bool
              ) -> dict[str, Any]:
    """Batch-1 latency with natural answer lengths, on the library's own serving functions."""
    from ..inference import generate, generate_with_prefix_cache

    prompts = list(prompts)
    generate(model, tokenizer, prompts[:1], max_new_tokens=2, batch_size=1, progress=False)  # warm-up
    if prefix_cache:
        gens = generate_with_prefix_cache(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False)
    else:
        gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1, progress=False)
    return {"latency_s": summarise([g.latency_s for g in gens]),
            "output_tokens_mean": float(np.mean([g.output_tokens for g in gens])),
            "input_tokens_mean": float(np.mean([g.input_tokens for g in gens])),
            "n": len(gens), "max_new_tokens": max_new_tokens}


# ---------------------------------------------------------------- the recurring prompt at any length


def template_of_length(task: Any, tokenizer: Any, target: int) -> Any:
    """The task's template with ``target`` tokens (instruction + documentation as rendered): its
    documentation repeated (paragraph by paragraph, from its start) until long enough, then cut."""
    from ..prompt import Template

    base = task.template
    sep = "\n\n"

    def n(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    head = base.instruction.strip()
    paragraphs = [p for p in base.documentation.strip().split(sep) if p.strip()] or [head]
    doc_budget = target - n(head + sep) if head else target
    if doc_budget <= 0:  # shorter than the instruction alone: cut the instruction
        ids = tokenizer(head, add_special_tokens=False)["input_ids"][:target]
        return Template(tokenizer.decode(ids), "")
    doc, i = "", 0
    while n(doc) < doc_budget:
        doc = (doc + sep if doc else "") + paragraphs[i % len(paragraphs)].strip()
        i += 1
    ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:doc_budget]
    return Template(head, tokenizer.decode(ids))


def template_tokens(tokenizer: Any, template: Any) -> int:
    parts = [t.strip() for t in (template.instruction, template.documentation) if t.strip()]
    return len(tokenizer("\n\n".join(parts), add_special_tokens=False)["input_ids"]) if parts else 0


def scaling_point(model: Any, tokenizer: Any, task: Any, queries: Sequence[str], target: int, args: ScalingArgs
                  ) -> dict[str, Any]:
    """Full prompt, prefix-cached full prompt and query alone at one recurring-prompt length."""
    from ..prompt import EMPTY_TEMPLATE, to_messages
    from ..stages import build_prompt

    template = template_of_length(task, tokenizer, target)
    full = [to_messages(build_prompt(task, q, template, [], 0), task.format) for q in queries]
    alone = [to_messages(build_prompt(task, q, EMPTY_TEMPLATE, [], 0), task.format) for q in queries]
    systems = {"full": make_system("full", model, tokenizer, full, False),
               "prefix-cache": make_system("prefix-cache", model, tokenizer, full, True),
               "query": make_system("query", model, tokenizer, alone, False)}
    point: dict[str, Any] = {"target_tokens": target, "template_tokens": template_tokens(tokenizer, template),
                             "systems": {}, "load_average_before": _load()}
    point["systems"] = measure_interleaved(tokenizer, list(systems.values()), args.lengths, args.repeats,
                                           args.batch_sizes)
    point["speedup"] = speedups(point["systems"], args.lengths)
    point["load_average_after"] = _load()
    return point


def speedups(systems: dict[str, dict[str, Any]], lengths: Sequence[int], of: str = "query") -> dict[str, Any]:
    """Median batch-1 latency ratios: full / ``of`` and prefix-cache / ``of`` at every length."""
    out: dict[str, Any] = {}
    for L in lengths:
        mine = systems[of][str(L)]["latency_s"]["median"]
        out[str(L)] = {f"vs_{ref}": systems[ref][str(L)]["latency_s"]["median"] / mine
                       for ref in systems if ref != of}
    return out


def crossing(points: Sequence[dict[str, Any]], length: int, target: float, ref: str = "full") -> dict[str, Any]:
    """Where the query-alone speed-up over ``ref`` first reaches ``target`` (linear interpolation in
    prompt length between measured points), else the largest speed-up measured."""
    xs = [p["template_tokens"] for p in points]
    ys = [p["speedup"][str(length)][f"vs_{ref}"] for p in points]
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= target:
            if i == 0:
                return {"reached": True, "at_template_tokens": float(x), "interpolated": False}
            x0, y0 = xs[i - 1], ys[i - 1]
            at = x0 + (target - y0) * (x - x0) / (y - y0) if y != y0 else float(x)
            return {"reached": True, "at_template_tokens": float(at), "interpolated": True}
    best = int(np.argmax(ys)) if ys else 0
    return {"reached": False, "largest": float(ys[best]) if ys else None,
            "at_template_tokens": float(xs[best]) if xs else None}


# ---------------------------------------------------------------- the passes


def scaling_pass(run_cfg: Any, args: ScalingArgs, out_path: Any, log: Any = print) -> dict[str, Any]:
    """The scaling figure's data, one recurring-prompt length at a time, saved after each (resumable)."""
    from pathlib import Path

    from ..io import read_json, write_json
    from ..models import load_model
    from ..pipeline import load_data

    args.validate()
    out_path = Path(out_path)
    task, _, test = load_data(run_cfg)
    model_name = args.model or run_cfg.model
    settings = {"model": model_name, "task": task.name, "lengths": args.lengths, "repeats": args.repeats,
                "batch_sizes": args.batch_sizes, "queries": args.queries}
    saved = read_json(out_path) if out_path.is_file() else {}
    points = saved.get("points", []) if saved.get("settings") == settings else []
    model, tok = load_model(model_name)
    queries = [inst.query for inst in test[: args.queries]]
    done = {p["target_tokens"] for p in points}
    for target in args.prompt_lengths:
        if target in done:
            continue
        t0 = time.perf_counter()
        points.append(scaling_point(model, tok, task, queries, target, args))
        points.sort(key=lambda p: p["target_tokens"])
        p = next(p for p in points if p["target_tokens"] == target)
        log(f"scaling: template {p['template_tokens']} tokens in {time.perf_counter() - t0:.0f} s "
            f"(load average {p['load_average_before']} → {p['load_average_after']}); speed-up of the "
            "query alone " + ", ".join(f"L={L}: {s['vs_full']:.2f}× vs full, {s['vs_prefix-cache']:.2f}× vs cache"
                                       for L, s in p["speedup"].items()))
        write_json(out_path, _scaling_result(settings, points, args, model))
    result = _scaling_result(settings, points, args, model)
    write_json(out_path, result)
    return result


def _scaling_result(settings: dict[str, Any], points: list[dict[str, Any]], args: ScalingArgs, model: Any
                    ) -> dict[str, Any]:
    from .hardware import hardware

    return {"settings": settings, "hardware": hardware(model), "trained": False,
            "note": "no training: the base model times the same prompts a trained model would read",
            "points": points, "target": args.target,
            "crossing": {str(L): {ref: crossing(points, L, args.target, ref) for ref in ("full", "prefix-cache")}
                         for L in args.lengths} if points else {}}
