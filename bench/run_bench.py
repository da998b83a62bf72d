#!/usr/bin/env python
"""Benchmark: every method side by side on one split, one model, one machine.

    python bench/run_bench.py --task nl2bash [--scale default|small|gpu] [--methods a,b] [--set k=v]...
    python bench/run_bench.py --task nl2bash --plan           # stages and optimizer steps per method
    python bench/run_bench.py --task nl2bash --render-only    # Markdown + plot again from the JSON

Each method is one promptintern pipeline run in ``<runs>/<method>`` (train → serve the test set
at batch 8 → score), followed by a batch-1 latency pass over the first ``latency_queries`` test
queries. A method is done when its ``bench.json`` exists; rerunning the same command skips it,
so an interrupted benchmark picks up at the method (and, through the pipeline's own resume, at
the checkpoint or prediction batch) where it stopped.

Fairness: every fine-tuned method trains on the same pairs for the same total number of
optimizer steps. Multi-stage methods divide those steps between their stages (``slice`` stage
data: each stage its own share of the pairs); ``promptintern-revisit`` is the exception by
design: every stage sees all pairs for the full step count, and its larger ``train_steps`` is
reported. Differences to ``full-prompt`` are paired bootstraps over the same test items.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import math
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from promptintern.cli import quiet_libraries
from promptintern.config import RunConfig
from promptintern.configtools import apply_overrides, from_dict, load_yaml
from promptintern.errors import ConfigError, RunDirError, UserError
from promptintern.inference import read_predictions
from promptintern.io import read_json, write_json, write_text
from promptintern.methods import plan as method_plan
from promptintern.pipeline import check_same_run
from promptintern.training.checkpoints import read_history

if __package__ in (None, ""):  # run as a script: make the repository root importable for bench.report
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.ledger import BENCH_FILE, Ledger  # noqa: E402
from bench.report import (  # noqa: E402
    ABLATION_COMPARISONS,
    COMPARED,
    DISTILL_COMPARISONS,
    HEADLINE_METHOD,
    REFERENCE,
    headline,
    readme_section,
    render_markdown,
    update_readme,
    write_outputs,
)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SCALES = ("default", "small", "gpu")
TASKS = ("nl2bash", "mbpp")  # the tasks with a shipped bench config (README's results block)
# BENCH_FILE (bench.ledger): a method's measurements; written last, so it marks the method done
LATENCY_FILE = "latency-b1.jsonl"
ITEM_KEYS = {"exact_match": "exact_match", "structure_match": "structure_match", "pass@1": "passed"}
CONFIG_KEYS = ("run", "bench", "scales")
# TrainArgs fields that change how many pairs a step sees or how many steps a stage takes: the
# harness owns them (per-stage overrides of these would break the equal-steps rule).
STEP_FIELDS = frozenset({"epochs_per_stage", "max_steps_per_stage", "per_device_batch_size",
                         "gradient_accumulation_steps"})

LOG = logging.getLogger("promptintern.bench")

__all__ = ["METHODS", "Bench", "BenchArgs", "BenchMethod", "Prices", "collect", "headline", "load_bench_config", "main",
           "paired_delta", "render_markdown", "run_method", "steps_per_stage"]


@dataclass(frozen=True)
class BenchMethod:
    """How one benchmark method maps onto a promptintern pipeline run."""

    pipeline: str
    about: str
    shape: str | None = None  # schedule.shape override
    compress: str | None = None  # compress.method override
    revisit: bool = False  # stage_mode revisit, the full step count in every stage
    prefix_cache_of: str | None = None  # serve this method's adapter with the prefix KV cache
    loss: str | None = None  # train.loss override (the distillation rows: "ce+kl")
    teacher_of: str | None = None  # frozen KL teacher = this method's adapter (None: teacher "self")


METHODS: dict[str, BenchMethod] = {
    "base-full": BenchMethod("base", "base model, no fine-tuning, full prompt"),
    "full-prompt": BenchMethod("full-prompt", "FT and served with the full prompt (τ0, K)"),
    "full-prompt+prefix-cache": BenchMethod(
        "full-prompt", "the full-prompt adapter served with the template's KV cache, batch 1",
        prefix_cache_of="full-prompt"),
    "compressed": BenchMethod("compressed", "FT and served with the selfinfo-compressed template (τc, K)"),
    "generate": BenchMethod("compressed", "as compressed, template rewritten by the local model (abstractive)",
                            compress="generate"),
    "query-only": BenchMethod("query-only", "FT and served with the query alone"),
    "template-only": BenchMethod("template-only", "τ follows the schedule, k stays K; served (0, K)"),
    "examples-only": BenchMethod("examples-only", "k follows the schedule, τ stays τ0; served (τ0, 0)"),
    "promptintern": BenchMethod("promptintern", "progressive, linear schedule; served with the query alone",
                                shape="linear"),
    "promptintern-exponential": BenchMethod("promptintern", "progressive, exponential schedule",
                                            shape="exponential"),
    "promptintern-inverse_exponential": BenchMethod("promptintern", "progressive, inverse-exponential schedule",
                                                    shape="inverse_exponential"),
    "promptintern-revisit": BenchMethod("promptintern", "linear schedule, every stage sees all pairs (N× steps)",
                                        shape="linear", revisit=True),
    "promptintern+kl": BenchMethod("promptintern", "linear schedule, ce+kl loss, self-teacher on the stage-0 prompt",
                                   shape="linear", loss="ce+kl"),
    "query-only+kl": BenchMethod("query-only", "one query-only stage, ce+kl loss, frozen full-prompt adapter as "
                                 "teacher (its training time counted)", loss="ce+kl", teacher_of="full-prompt"),
}


# ---------------------------------------------------------------- configuration


@dataclass
class Prices:
    """Per-token prices of a hosted fine-tuned model, for $ per 1,000 queries."""

    input_per_1m: float = field(default=3.0, metadata={"help": "$ per 1M input tokens."})
    output_per_1m: float = field(default=6.0, metadata={"help": "$ per 1M output tokens."})
    cached_input_per_1m: float | None = field(default=None, metadata={"help": "$ per 1M input tokens served from a prompt cache (the prefix-cache method); null = billed as input."})
    source: str = field(default="the example prices of a fine-tuned hosted model in the cost model; prefix-cached input billed as input",
                        metadata={"help": "Where the prices come from (printed with the results)."})

    def validate(self) -> None:
        values = (self.input_per_1m, self.output_per_1m, self.cached_input_per_1m)
        if any(v is not None and v < 0 for v in values):
            raise ConfigError("bench.prices: prices must be >= 0")

    def cost_per_1k_queries(self, input_tokens: float, output_tokens: float, cached_tokens: float = 0.0) -> float:
        cached_price = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        dollars = ((input_tokens - cached_tokens) * self.input_per_1m + cached_tokens * cached_price
                   + output_tokens * self.output_per_1m) / 1e6
        return 1000.0 * dollars


@dataclass
class BenchArgs:
    """The benchmark's own settings (the ``bench:`` section of a bench config)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": "Methods to run (always run in the canonical order)."})
    total_steps: int | None = field(default=None, metadata={"help": "Optimizer steps of every fine-tuned method; null = ceil(train pairs / batch) × epochs."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs when total_steps is derived."})
    latency_queries: int = field(default=50, metadata={"help": "First N test queries of the batch-1 latency pass."})
    throughput_batch_size: int = field(default=8, metadata={"help": "Batch size of the main inference pass (throughput)."})
    prefix_cache_full_test: bool = field(default=False, metadata={"help": "Serve the whole test set with the prefix cache and score it; false = only the latency queries, accuracy taken from full-prompt (same adapter, same prompt)."})
    prices: Prices = field(default_factory=Prices, metadata={"help": "Price table."})

    def validate(self) -> None:
        for name in self.methods:
            if name not in METHODS:
                near = difflib.get_close_matches(name, list(METHODS), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; choose from {', '.join(METHODS)}"
                raise ConfigError(f"bench.methods: unknown method {name!r}{hint}")
        if not self.methods:
            raise ConfigError("bench.methods: no method to run")
        if self.total_steps is not None and self.total_steps < 1:
            raise ConfigError(f"bench.total_steps must be >= 1 or null, got {self.total_steps}")
        if self.epochs <= 0:
            raise ConfigError(f"bench.epochs must be > 0, got {self.epochs}")
        if self.latency_queries < 1:
            raise ConfigError(f"bench.latency_queries must be >= 1, got {self.latency_queries}")
        if self.throughput_batch_size < 1:
            raise ConfigError(f"bench.throughput_batch_size must be >= 1, got {self.throughput_batch_size}")


def load_bench_config(path: Path, scale: str, overrides: list[str]) -> tuple[dict[str, Any], BenchArgs]:
    """The raw run config and the bench settings of ``path`` at ``scale``, with ``--set`` applied.

    A bench config has ``run:`` (a promptintern run config), ``bench:`` (:class:`BenchArgs`) and
    ``scales:`` (``{scale: [key=value, ...]}``, applied before the command line's overrides).
    Keys starting with ``bench.`` go to the bench settings, all others to the run config.
    """
    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: choose from {', '.join(SCALES)}")
    raw = load_yaml(str(path))
    unknown = [k for k in raw if k not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r}; expected {', '.join(CONFIG_KEYS)}")
    scale_overrides = (raw.get("scales") or {}).get(scale) or []
    if not isinstance(scale_overrides, list) or not all(isinstance(s, str) for s in scale_overrides):
        raise ConfigError(f"{path}: scales.{scale} must be a list of 'key=value' strings")
    everything = [*scale_overrides, *overrides]
    bench_over = [s.removeprefix("bench.") for s in everything if s.startswith("bench.")]
    run_over = [s for s in everything if not s.startswith("bench.")]
    run_raw = apply_overrides(dict(raw.get("run") or {}), run_over)
    bench_raw = apply_overrides(dict(raw.get("bench") or {}), bench_over)
    return run_raw, from_dict(BenchArgs, bench_raw, where=f"{path}: bench")


def steps_per_stage(total_steps: int, n_stages: int, revisit: bool) -> list[int]:
    """Optimizer steps of each stage: ``total_steps`` split as evenly as possible (earlier stages
    get the remainder), or ``total_steps`` in every stage for ``revisit``."""
    if n_stages == 0:
        return []
    if revisit:
        return [total_steps] * n_stages
    if total_steps < n_stages:
        raise ConfigError(f"bench.total_steps={total_steps} is fewer than the {n_stages} stages to share them")
    q, r = divmod(total_steps, n_stages)
    return [q + 1 if i < r else q for i in range(n_stages)]


def derived_total_steps(n_train: int, batch: int, accumulation: int, epochs: float) -> int:
    """``ceil(n_train / (batch × accumulation)) × epochs``: one pass of the pairs by default."""
    return max(1, math.ceil(math.ceil(n_train / (batch * accumulation)) * epochs))


def _section(d: dict[str, Any], key: str) -> dict[str, Any]:
    d[key] = dict(d.get(key) or {})
    return d[key]


@dataclass
class Bench:
    """One benchmark: the shared run config, the settings, where runs and results go."""

    task: str
    scale: str
    run_raw: dict[str, Any]
    args: BenchArgs
    runs: Path
    ledger: Ledger = field(default_factory=lambda: Ledger(None))  # finished methods kept with the results
    base: RunConfig = field(init=False)
    metric: str = field(init=False)
    test: list[Any] = field(init=False)
    n_train: int = field(init=False)
    total_steps: int = field(init=False)
    _memo: dict[Any, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        from promptintern.pipeline import load_data

        self.base = from_dict(RunConfig, self.run_raw, where="run")
        for index, changes in self.base.train.stage_overrides.items():
            owned = sorted(set(changes) & STEP_FIELDS)
            if owned:
                raise ConfigError(f"run.train.stage_overrides.{index}.{owned[0]}: the benchmark sets the steps of "
                                  "every stage itself (same total steps for every method); remove it")
        task, train, self.test = load_data(self.base)
        self.metric, self.n_train = task.metric, len(train)
        t = self.base.train
        self.total_steps = self.args.total_steps or derived_total_steps(
            self.n_train, t.per_device_batch_size, t.gradient_accumulation_steps, self.args.epochs)

    def run_dir(self, name: str) -> Path:
        return self.runs / name

    def config(self, name: str) -> RunConfig:
        """The pipeline config of method ``name`` (for the prefix-cache method: of its source)."""
        spec = METHODS[name]
        if spec.prefix_cache_of:
            return self.config(spec.prefix_cache_of)
        d = copy.deepcopy(self.run_raw)
        d.update(method=spec.pipeline, baselines=[], output_dir=str(self.run_dir(name)))
        _section(d, "data")["stage_mode"] = "revisit" if spec.revisit else "slice"
        if spec.shape:
            _section(d, "schedule")["shape"] = spec.shape
        if spec.compress:
            _section(d, "compress")["method"] = spec.compress
        _section(d, "infer").update(batch_size=self.args.throughput_batch_size, prefix_cache=False)
        if spec.loss:
            _section(d, "train")["loss"] = spec.loss
        steps = self.planned_steps(name)
        if steps:
            train = _section(d, "train")
            train["max_steps_per_stage"] = min(steps)
            stage_overrides = {int(i): dict(v) for i, v in (train.get("stage_overrides") or {}).items()}
            for i, s in enumerate(steps):
                if s != min(steps):
                    stage_overrides.setdefault(i, {})["max_steps_per_stage"] = s
            train["stage_overrides"] = stage_overrides
        cfg = from_dict(RunConfig, d, where=f"method {name}")
        if spec.teacher_of:  # set after validation: the teacher adapter may not be trained yet
            cfg.train.teacher = str(self.teacher_adapter(name))
            cfg.train.teacher_cache = True
        return cfg

    def teacher_adapter(self, name: str) -> Path:
        """The frozen teacher's adapter directory of a ``teacher_of`` method."""
        teacher = METHODS[name].teacher_of
        assert teacher is not None
        return (self.run_dir(teacher) / "adapter").resolve()

    def planned_steps(self, name: str) -> list[int]:
        spec = METHODS[name]
        p = method_plan(spec.pipeline, replace(self.base.schedule, shape=spec.shape or self.base.schedule.shape),
                        self.base.compressed_tau)
        return steps_per_stage(self.total_steps, len(p.points), spec.revisit)

    def fingerprint(self, name: str) -> str:
        """What a finished method's ``bench.json`` must have been measured with."""
        spec, cfg = METHODS[name], self.config(name)
        if spec.prefix_cache_of:
            n = "all" if self.args.prefix_cache_full_test else self.args.latency_queries
            return f"{cfg.fingerprint()}+prefix-cache:{n}"
        if spec.teacher_of:  # the teacher by what it is, not where its run directory happens to be
            cfg.train.teacher = f"adapter of {spec.teacher_of} {self.fingerprint(spec.teacher_of)}"
        return f"{cfg.fingerprint()}+latency:{self.args.latency_queries}"


# ---------------------------------------------------------------- running one method


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _display(path: Path) -> str:
    """A path relative to the repository when inside it (results must not hold machine paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _finished(bench: Bench, name: str, derived: tuple[Path, ...]) -> dict[str, Any] | None:
    """The method's ``bench.json`` entry if measured under the current settings, else None.

    An entry measured under other bench settings (latency queries, prefix-cache mode) is removed
    with the ``derived`` files, so the method is measured again; its pipeline run is kept.
    """
    path = bench.run_dir(name) / BENCH_FILE
    restored = bench.ledger.restore(name, bench.run_dir(name), bench.fingerprint(name))
    if restored is not None:
        LOG.info("%s: restored from %s (measured %s)", name, _display(bench.ledger.root / name), restored["finished"])
        return restored
    if not path.is_file():
        return None
    entry = read_json(path)
    if entry.get("fingerprint") == bench.fingerprint(name):
        return entry
    LOG.info("%s: measured under other bench settings; measuring again", name)
    for f in (path, *derived):
        f.unlink(missing_ok=True)
    return None


def latency_pass(cfg: RunConfig, run_dir: Path, out: Path, n: int | None, prefix_cache: bool = False
                 ) -> tuple[dict[str, Any], Any]:
    """Serve the first ``n`` test queries (all when None) at batch size 1 into ``out``.

    The model (with the run's adapter, loaded as the pipeline serves it) is warmed up on one
    query first, untimed, so the first measured query does not pay for lazy initialisation.
    Returns (stats, prepared run).
    """
    from promptintern.answer_length import resolve_infer_args
    from promptintern.inference import generate, load_for_inference, run_inference
    from promptintern.pipeline import prepare, serving_messages

    prep = prepare(cfg, run_dir)
    adapter = run_dir / "adapter" if prep.plan.trains else None
    model, tok = load_for_inference(cfg.model, adapter)
    queries = prep.test if n is None else prep.test[:n]
    items = serving_messages(prep, queries, prep.plan.serve_tau, prep.plan.serve_k)
    generate(model, tok, [items[0][1]], max_new_tokens=2, batch_size=1, progress=False)
    infer = resolve_infer_args(cfg.infer, cfg.model, prep.task, prep.train, queries)  # as the pipeline does
    args = replace(infer, batch_size=1, prefix_cache=prefix_cache, progress=False)
    return run_inference(model, tok, items, out, args, resume=True), prep


def run_method(bench: Bench, name: str) -> dict[str, Any]:
    """Run (or reuse) method ``name``; returns its ``bench.json`` entry."""
    if METHODS[name].prefix_cache_of:
        return _run_prefix_cache(bench, name)
    cfg, run_dir = bench.config(name), bench.run_dir(name)
    check_same_run(run_dir, cfg)  # before the teacher or anything else runs
    done = _finished(bench, name, (run_dir / "predictions" / LATENCY_FILE,))
    if done is not None:
        LOG.info("%s: finished earlier, kept (%s)", name, _display(run_dir / BENCH_FILE))
        return done
    teacher = _run_teacher(bench, name)
    t0 = time.perf_counter()
    if (run_dir / "metrics.json").is_file():
        LOG.info("%s: pipeline run finished earlier, kept", name)
    else:
        from promptintern.pipeline import run

        LOG.info("%s: pipeline run (method %s, %s stages, steps per stage %s) in %s", name, cfg.method,
                 cfg.data.stage_mode, bench.planned_steps(name) or "-", _display(run_dir))
        run(cfg, resume=True)
    metrics = read_json(run_dir / "metrics.json")
    LOG.info("%s: latency pass, batch 1, first %d test queries", name, bench.args.latency_queries)
    lat, _ = latency_pass(cfg, run_dir, run_dir / "predictions" / LATENCY_FILE, bench.args.latency_queries)
    system = metrics["systems"][cfg.method]
    hist = read_history(run_dir)
    steps = [int(s["steps"]) for s in hist["stages"]]
    entry = {
        "input_tokens_mean": system["input_tokens_mean"],
        "output_tokens_mean": system["output_tokens_mean"],
        "latency_s_mean": lat["latency_s_mean"], "latency_n": lat["n"], "latency_batch_size": 1,
        "throughput_qps": system["throughput_qps"], "throughput_batch_size": system["batch_size"],
        "train_wall_s": float(hist.get("train_wall_s", 0.0)),
        "train_steps": sum(steps), "steps_per_stage": steps, "stage_mode": cfg.data.stage_mode,
        "stages": metrics["schedule"],
        "metrics": system["metrics"], "ci95": system["ci95"],
        "served": {"tau": system["tau"], "k": system["k"]}, "trained": system["trained"],
        "pipeline_method": cfg.method, "schedule_shape": cfg.schedule.shape, "compress_method": cfg.compress.method,
        "n_test": system["n"], "missing": system["missing"], "bleu_tokenizer": system.get("bleu_tokenizer"),
        "run_dir": _display(run_dir), "bench_wall_s": time.perf_counter() - t0, "finished": _now(),
        "items": {"method": name, "system": cfg.method, "predictions": f"predictions/{cfg.method}.jsonl"},
        "fingerprint": bench.fingerprint(name),
    }
    if hist.get("teacher_wall_s"):
        entry["teacher_wall_s"] = float(hist["teacher_wall_s"])
    if teacher is not None:  # the frozen teacher's own training is part of this method's cost
        entry.update(own_train_wall_s=entry["train_wall_s"], teacher_train_wall_s=teacher["train_wall_s"],
                     teacher_from=METHODS[name].teacher_of)
        entry["train_wall_s"] += teacher["train_wall_s"]
    entry["hardware"] = hardware()
    write_json(run_dir / BENCH_FILE, entry)
    bench.ledger.save(name, run_dir, entry)
    LOG.info("%s: done in %.0f s — %s", name, entry["bench_wall_s"], _summary(bench.metric, entry))
    return entry


def _run_teacher(bench: Bench, name: str) -> dict[str, Any] | None:
    """Run (or reuse) the method whose adapter is ``name``'s frozen KL teacher; None without one."""
    teacher = METHODS[name].teacher_of
    if teacher is None:
        return None
    entry = run_method(bench, teacher)
    _need_adapter(bench, teacher, name)
    return entry


def _need_adapter(bench: Bench, source: str, user: str) -> None:
    """A method restored from the ledger has no adapter; one that serves or distils it cannot go on."""
    if not (bench.run_dir(source) / "adapter").is_dir():
        raise RunDirError(f"{user} needs {source}'s adapter, but {source} was restored from "
                          f"{_display(bench.ledger.root / source)} without one; delete that directory "
                          f"to train {source} again")


def _run_prefix_cache(bench: Bench, name: str) -> dict[str, Any]:
    """Serve the source method's adapter with the template's KV cache, at batch 1 (no training)."""
    source = METHODS[name].prefix_cache_of
    assert source is not None
    run_dir, fingerprint = bench.run_dir(name), bench.fingerprint(name)
    src = run_method(bench, source)  # the adapter, predictions and accuracy to compare with (fast when done)
    done = _finished(bench, name, (run_dir / "predictions" / LATENCY_FILE, run_dir / "metrics.json"))
    if done is not None:
        LOG.info("%s: finished earlier, kept (%s)", name, _display(run_dir / BENCH_FILE))
        return done
    _need_adapter(bench, source, name)
    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "source.json", {"source": source, "fingerprint": fingerprint})
    cfg, src_dir = bench.config(source), bench.run_dir(source)
    full = bench.args.prefix_cache_full_test
    n = None if full else bench.args.latency_queries
    LOG.info("%s: %s's adapter with the prefix KV cache, batch 1, %s test queries", name, source,
             "all" if full else n)
    lat, prep = latency_pass(cfg, src_dir, run_dir / "predictions" / LATENCY_FILE, n, prefix_cache=True)
    src_system = read_json(src_dir / "metrics.json")["systems"][cfg.method]
    if full:
        from promptintern.evaluate import score

        preds = read_predictions(run_dir / "predictions" / LATENCY_FILE)
        scored = score(prep.task.metric, preds, prep.test, bootstrap=cfg.eval.bootstrap,
                       workers=cfg.eval.workers, timeout_s=cfg.eval.timeout_s)
        system = {**lat, **scored}
        write_json(run_dir / "metrics.json", {"task": prep.task.name, "metric": prep.task.metric,
                                              "systems": {"prefix-cache": system}})
        items = {"method": name, "system": "prefix-cache", "predictions": f"predictions/{LATENCY_FILE}"}
    else:
        system, items = src_system, src["items"]
    agreement = _agreement(run_dir / "predictions" / LATENCY_FILE, src_dir / src["items"]["predictions"])
    entry = {
        "input_tokens_mean": system["input_tokens_mean"], "cached_tokens_mean": float(lat["prefix_tokens"]),
        "output_tokens_mean": system["output_tokens_mean"],
        "latency_s_mean": lat["latency_s_mean"], "latency_n": lat["n"], "latency_batch_size": 1,
        "throughput_qps": lat["throughput_qps"], "throughput_batch_size": 1,
        "train_wall_s": src["train_wall_s"], "train_steps": src["train_steps"],
        "steps_per_stage": src["steps_per_stage"], "stage_mode": src["stage_mode"], "stages": src["stages"],
        "adapter_from": source,
        "metrics": system["metrics"], "ci95": system["ci95"],
        "metrics_from": name if full else f"{source} (same adapter and prompt; predictions agree on "
                                          f"{100 * agreement:.0f}% of the latency queries)",
        "agreement_with_source": agreement,
        "served": src["served"], "trained": True, "pipeline_method": cfg.method,
        "schedule_shape": src["schedule_shape"], "compress_method": src["compress_method"],
        "n_test": system["n"], "missing": system["missing"], "bleu_tokenizer": system.get("bleu_tokenizer"),
        "run_dir": _display(run_dir), "bench_wall_s": time.perf_counter() - t0, "finished": _now(),
        "items": items, "fingerprint": fingerprint, "hardware": hardware(),
    }
    write_json(run_dir / BENCH_FILE, entry)
    bench.ledger.save(name, run_dir, entry)
    LOG.info("%s: done in %.0f s — %s", name, entry["bench_wall_s"], _summary(bench.metric, entry))
    return entry


def _agreement(path: Path, reference: Path) -> float:
    """Share of the rows of ``path`` whose prediction equals ``reference``'s for the same id."""
    mine, ref = read_predictions(path), read_predictions(reference)
    return sum(ref.get(i) == p for i, p in mine.items()) / len(mine) if mine else 0.0


def _summary(metric: str, e: dict[str, Any]) -> str:
    value, ci = e["metrics"].get(metric), e["ci95"].get(metric)
    shown = "n/a" if value is None else f"{value:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")
    return (f"{metric} {shown}, {e['input_tokens_mean']:.0f} input tokens, latency {e['latency_s_mean']:.3f} s (b1), "
            f"{e['throughput_qps']:.2f} q/s (b{e['throughput_batch_size']}), train {e['train_wall_s']:.0f} s "
            f"({e['train_steps']} steps)")


# ---------------------------------------------------------------- paired differences


def item_statistic(metric: str, tokenize: str) -> Any:
    """The statistic of a resample of per-item data: corpus BLEU of summed stats, else mean of 0/1 in %."""
    from promptintern.evaluate.bootstrap import mean_percent
    from promptintern.evaluate.nl2bash import bleu_from_stats

    return (lambda s: bleu_from_stats(s, tokenize)) if metric == "bleu" else mean_percent


def paired_delta(metric: str, a_items: np.ndarray, b_items: np.ndarray, n: int = 1000, seed: int = 0,
                 tokenize: str = "13a") -> dict[str, Any]:
    """Difference a − b of ``metric`` and its paired-bootstrap 95% interval (same resampled items).

    Items are sentence BLEU sufficient statistics (rows of ``bleu_stats``) for ``bleu``, else 0/1
    outcomes per test item.
    """
    from promptintern.evaluate.bootstrap import paired_bootstrap

    fn = item_statistic(metric, tokenize)
    delta = fn(np.asarray(a_items)) - fn(np.asarray(b_items))
    lo, hi = paired_bootstrap(a_items, b_items, fn, n=n, seed=seed) if n > 0 else (delta, delta)
    return {"delta": float(delta), "ci95": [float(lo), float(hi)]}


def item_arrays(bench: Bench, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per-test-item data of every metric of a method, in test-split order."""
    src = entry["items"]
    key = (src["method"], src["system"], entry["finished"])
    if key in bench._memo:
        return bench._memo[key]
    from promptintern.evaluate.nl2bash import DEFAULT_TOKENIZER, bleu_stats, clean_prediction

    run_dir = bench.run_dir(src["method"])
    system = read_json(run_dir / "metrics.json")["systems"][src["system"]]
    ids = [inst.id for inst in bench.test]
    out: dict[str, np.ndarray] = {}
    for metric in system["metrics"]:
        if metric == "bleu":
            preds = read_predictions(run_dir / src["predictions"])
            hyps = [clean_prediction(preds[i]) if i in preds else "" for i in ids]
            tokenize = system.get("bleu_tokenizer", DEFAULT_TOKENIZER)
            out[metric] = bleu_stats(hyps, [inst.answer for inst in bench.test], tokenize)
        else:
            field_name = ITEM_KEYS.get(metric, metric)
            out[metric] = np.array([float(bool(system["per_item"][i].get(field_name, False))) for i in ids])
        recomputed = item_statistic(metric, system.get("bleu_tokenizer") or "13a")(out[metric])
        if abs(recomputed - system["metrics"][metric]) > 1e-6:  # the paired deltas would not match the table
            LOG.warning("%s: %s from per-item data is %.4f, metrics.json says %.4f", src["method"], metric,
                        recomputed, system["metrics"][metric])
    bench._memo[key] = out
    return out


def _deltas(bench: Bench, a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Paired differences a − b of every metric both methods have (memoised per finished pair)."""
    from promptintern.evaluate.nl2bash import DEFAULT_TOKENIZER

    key = ("delta", a["finished"], b["finished"], a["items"]["method"], b["items"]["method"])
    if key not in bench._memo:
        ia, ib = item_arrays(bench, a), item_arrays(bench, b)
        tokenize = a.get("bleu_tokenizer") or DEFAULT_TOKENIZER
        bench._memo[key] = {m: paired_delta(m, ia[m], ib[m], n=bench.base.eval.bootstrap, tokenize=tokenize)
                            for m in ia if m in ib}
    return bench._memo[key]


# ---------------------------------------------------------------- results


def hardware() -> str:
    """The machine in words: GPU name, or CPU model and the cores this process may use."""
    import torch

    from promptintern.models import available_cores

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {available_cores()} cores ({torch.get_num_threads()} torch threads), "
            f"{platform.system()}, torch {torch.__version__} CPU fp32")


def collect(bench: Bench) -> dict[str, Any]:
    """The results document from every finished method in the runs directory (canonical order)."""
    entries = {}
    for name in METHODS:
        path = bench.run_dir(name) / BENCH_FILE
        bench.ledger.restore(name, bench.run_dir(name), bench.fingerprint(name))
        if path.is_file():
            entry = read_json(path)
            if entry.get("fingerprint") == bench.fingerprint(name):
                entries[name] = entry
            else:
                LOG.warning("%s: measured with another config, left out of the results", name)
    ref = entries.get(REFERENCE)
    methods = {}
    for name, entry in entries.items():
        out = {"about": METHODS[name].about, **{k: v for k, v in entry.items() if k not in ("items", "fingerprint")}}
        out["cost_per_1k_queries"] = bench.args.prices.cost_per_1k_queries(
            entry["input_tokens_mean"], entry["output_tokens_mean"], entry.get("cached_tokens_mean", 0.0))
        if ref is not None:
            d = _deltas(bench, entry, ref)
            out["delta_vs_full_prompt"] = {m: v["delta"] for m, v in d.items()}
            out["delta_vs_full_prompt_ci95"] = {m: v["ci95"] for m, v in d.items()}
        else:
            out["delta_vs_full_prompt"], out["delta_vs_full_prompt_ci95"] = {}, {}
        methods[name] = out
    comparisons = {}
    if HEADLINE_METHOD in entries:
        for other in COMPARED:
            if other in entries:
                comparisons[f"{HEADLINE_METHOD} vs {other}"] = _deltas(bench, entries[HEADLINE_METHOD], entries[other])
    for a, b in DISTILL_COMPARISONS + ABLATION_COMPARISONS:
        if a in entries and b in entries:
            comparisons[f"{a} vs {b}"] = _deltas(bench, entries[a], entries[b])
    prices = bench.args.prices
    pending = [m for m in bench.args.methods if m not in entries]
    results = {
        "task": bench.task, "model": bench.base.model, "hardware": _machines(entries),
        "date": max((e["finished"] for e in entries.values()), default=_now()),  # of the last measurement
        "scale": {"name": bench.scale, "train": bench.n_train, "test": len(bench.test),
                  "stages": bench.base.schedule.stages, "total_steps": bench.total_steps,
                  "latency_queries": bench.args.latency_queries,
                  "throughput_batch_size": bench.args.throughput_batch_size,
                  "max_new_tokens": bench.base.infer.max_new_tokens, "k": bench.base.schedule.k,
                  "compressed_tau": bench.base.compressed_tau},
        "prices": {"input_per_1k": _per_1k(prices.input_per_1m), "output_per_1k": _per_1k(prices.output_per_1m),
                   "cached_input_per_1k": _per_1k(prices.cached_input_per_1m), "source": prices.source},
        "metric": bench.metric,
        "bootstrap": {"n": bench.base.eval.bootstrap, "seed": 0, "alpha": 0.05},
        "methods": methods, "method_order": list(methods), "comparisons": comparisons,
        "complete": not pending, "pending": pending,
    }
    results["headline"] = headline(results)
    return results


def _machines(entries: dict[str, dict[str, Any]]) -> str:
    """The machine(s) the entries were measured on (this one when none says); several joined by ' | '."""
    found = list(dict.fromkeys(e["hardware"] for e in entries.values() if e.get("hardware")))
    return " | ".join(found) if found else hardware()


def _per_1k(per_1m: float | None) -> float | None:
    return None if per_1m is None else per_1m / 1000.0


# ---------------------------------------------------------------- CLI


def print_plan(bench: Bench, names: list[str]) -> None:
    """Each method's pipeline method, stage points and optimizer steps: the fairness check, runnable."""
    print(f"{bench.task}: {bench.n_train} training pairs, {len(bench.test)} test items, "
          f"total_steps {bench.total_steps}")
    for name in names:
        spec, cfg = METHODS[name], bench.config(name)
        points = method_plan(cfg.method, cfg.schedule, cfg.compressed_tau).points
        stages = ", ".join(f"({p.tau:.2f}, {p.k})" for p in points) or "-"
        steps = bench.planned_steps(name)
        extra = f" (prefix cache of {spec.prefix_cache_of}'s adapter)" if spec.prefix_cache_of else ""
        print(f"  {name:34s} {cfg.method:14s} {cfg.data.stage_mode:8s} stages {stages:36s} "
              f"steps {steps or '-'} = {sum(steps)}{extra}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=False, help="nl2bash or mbpp: names bench/configs/<task>.yaml and the results files")
    p.add_argument("--scale", choices=SCALES, default="default", help="preset in the config's scales: section")
    p.add_argument("--config", help="bench config (default bench/configs/<task>.yaml)")
    p.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}")
    p.add_argument("--runs", help="run directories (default bench/runs/<task>[-<scale>])")
    p.add_argument("--results", help="results directory (default bench/results)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config field (train.learning_rate=1e-4) or a bench one (bench.total_steps=30)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the available cores)")
    p.add_argument("--plan", action="store_true", help="print every method's stages and steps, run nothing")
    p.add_argument("--render-only", action="store_true", help="rewrite <task>.md and <task>.png from <task>.json")
    p.add_argument("--readme", action="store_true",
                   help="rewrite README.md's results block from bench/results/<task>.json of every task (--task ignored)")
    return p


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a log file under nohup, a capture in tests)."""

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging() -> None:
    if not LOG.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


def write_readme(results_dir: Path, readme: Path = ROOT / "README.md") -> list[str]:
    """Rewrite ``readme``'s results block from the default-scale results of every task; the tasks used."""
    found = [read_json(p) for p in sorted(results_dir.glob("*.json")) if p.stem in TASKS]
    try:
        text = update_readme(readme.read_text(encoding="utf-8"), readme_section(found, _display(results_dir)))
    except ValueError as exc:
        raise ConfigError(f"{readme}: {exc}") from None
    write_text(readme, text)
    return [r["task"] for r in found]


def _run(args: argparse.Namespace) -> int:
    stem = args.task if args.scale == "default" else f"{args.task}-{args.scale}"
    results_dir = Path(args.results) if args.results else BENCH_DIR / "results"
    if args.readme:
        LOG.info("README results block rewritten from: %s", ", ".join(write_readme(results_dir)) or "no results")
        return 0
    if args.render_only:
        path = results_dir / f"{stem}.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no results to render; run the benchmark first")
        write_outputs(read_json(path), results_dir, stem, with_json=False)
        LOG.info("rendered %s and %s", _display(results_dir / f"{stem}.md"), _display(results_dir / f"{stem}.png"))
        return 0
    config = Path(args.config) if args.config else BENCH_DIR / "configs" / f"{args.task}.yaml"
    run_raw, bargs = load_bench_config(config, args.scale, args.set)
    chosen = bargs.methods
    if args.methods:  # runs a subset now; the results still count the config's methods as the whole
        chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
        replace(bargs, methods=chosen).validate()
    from promptintern.models import set_cpu_threads

    set_cpu_threads(args.threads)
    runs = Path(args.runs) if args.runs else BENCH_DIR / "runs" / stem
    bench = Bench(args.task, args.scale, run_raw, bargs, runs, Ledger(results_dir / f"{stem}-methods"))
    order = [m for m in METHODS if m in chosen]
    if args.plan:
        print_plan(bench, order)
        return 0
    LOG.info("bench %s (%s scale): %s, %d training pairs, %d test items, %d steps per fine-tuned method, runs in %s",
             args.task, args.scale, bench.base.model, bench.n_train, len(bench.test), bench.total_steps,
             _display(runs))
    t0 = time.perf_counter()
    for i, name in enumerate(order, start=1):
        LOG.info("[%d/%d] %s", i, len(order), name)
        fresh = not (bench.run_dir(name) / BENCH_FILE).is_file()
        run_method(bench, name)
        if fresh and i < len(order):  # partial results after every method measured now
            write_outputs(collect(bench), results_dir, stem)
    write_outputs(collect(bench), results_dir, stem)
    LOG.info("all %d methods done in %.0f s; results: %s", len(order), time.perf_counter() - t0,
             _display(results_dir / f"{stem}.md"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.task or args.readme):
        parser.error("--task is required")
    _setup_logging()
    quiet_libraries()
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        LOG.info("interrupted; run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
