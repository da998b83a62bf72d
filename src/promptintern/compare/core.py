"""The comparison end to end: runs → speed pass → scaling pass → statistics, cost, verdict → report.

Each pass saves what it measured in the output directory (``speed.json``, ``scaling.json``) and
skips what is already there under the same settings, so ``promptintern compare`` can be stopped
and rerun at any point. ``results.json`` and ``report.md`` are rebuilt from everything stored
every time, so a report with some (method, seed) runs still missing says which.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import read_json, write_json
from .cost import break_even, method_costs
from .plan import METHODS, REFERENCES, Plan, load_compare_config
from .runs import finished, read_run, run_all
from .slices import slices
from .stats import above_floor, accuracy, item_scores, statistic_name
from .teacher_data import answers_path
from .teacher_data import summary as teacher_data_summary
from .verdict import verdict

PASSES = ("runs", "speed", "scaling")


def default_out(config_path: str) -> Path:
    return Path("compare") / Path(config_path).stem


def compare(config_path: str, *, methods: Sequence[str] | None = None, seeds: int | None = None,
            out: Path | None = None, overrides: Sequence[str] = (), passes: Sequence[str] = PASSES,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the passes in ``passes`` (resumably), then write results.json and report.md into ``out``."""
    from .report import write_outputs

    sets = list(overrides)
    if methods:
        sets.append("compare.methods=[" + ",".join(methods) + "]")
    if seeds is not None:
        sets.append(f"compare.seeds={seeds}")
    run_raw, args = load_compare_config(config_path, sets)
    out = Path(out) if out else default_out(config_path)
    plan = Plan(run_raw, args, out)
    out.mkdir(parents=True, exist_ok=True)
    if "runs" in passes:
        run_all(plan, log)
    if "speed" in passes:
        speed_pass(plan, log)
    if "scaling" in passes:
        from .speed import scaling_pass

        scaling_pass(plan.base, args.scaling, out / "scaling.json", log)
    results = collect(plan)
    write_outputs(results, out)
    log(f"results → {out / 'results.json'}, report → {out / 'report.md'}")
    return results


# ---------------------------------------------------------------- speed on the trained models


SPEED_PROTOCOL = "interleaved"  # the systems' repeats taken in turn (see speed_pass)


def _speed_settings(plan: Plan, method: str) -> dict[str, Any]:
    seed = plan.args.speed.seed
    return {**asdict(plan.args.speed), "protocol": SPEED_PROTOCOL,
            "fingerprint": plan.config(method, seed).fingerprint()}


def speed_pass(plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """Forced-length speed of every method's merged model (seed ``speed.seed``), saved per method.

    The methods not measured yet are timed together, their repeats interleaved (each method's
    merged model loaded once and kept), so load changes on a shared machine fall on all alike;
    the as-served pass then runs each method's queries in turn.
    """
    from .hardware import hardware
    from .speed import as_served, measure_interleaved

    args, path = plan.args.speed, plan.out / "speed.json"
    args.validate()
    saved = read_json(path) if path.is_file() else {"methods": {}}
    pending = []
    for method in plan.args.methods:
        if not finished(plan, method, args.seed):
            log(f"speed {method}: seed {args.seed} not trained yet, skipped")
        elif saved["methods"].get(method, {}).get("settings") == _speed_settings(plan, method):
            log(f"speed {method}: measured earlier, kept")
        else:
            pending.append(method)
    if not pending:
        return saved
    t0 = time.perf_counter()
    served = _speed_systems(plan, pending)
    log(f"speed: {', '.join(pending)} timed together, repeats interleaved")
    tok = next(iter(served.values()))["tok"]
    forced = measure_interleaved(tok, [v["system"] for v in served.values()], args.lengths, args.repeats,
                                 args.batch_sizes)
    for method, v in served.items():
        entry = {"settings": _speed_settings(plan, method), "hardware": hardware(v["system"].model),
                 "merged": v["merged"], "forced": forced[method]}
        if args.as_served_queries:
            entry["as_served"] = as_served(v["system"].model, tok, v["prompts"][: args.as_served_queries],
                                           v["max_new_tokens"], v["system"].cache is not None)
        entry["wall_s"] = time.perf_counter() - t0  # the whole interleaved pass up to this method's end
        saved["methods"][method] = entry
        write_json(path, saved)
        lat = ", ".join(f"L={L}: {r['latency_s']['median']:.3f} s" for L, r in entry["forced"].items())
        log(f"speed {method}: {lat} (batch 1 medians)")
    return saved


def _speed_systems(plan: Plan, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: its timed :class:`System` (on its source's merged model, loaded once per
    adapter), its serving prompts, whether weights were merged, and its answer-length limit."""
    from ..answer_length import resolve_infer_args
    from ..inference import load_for_serving
    from ..pipeline import prepare, serving_messages
    from .speed import make_system

    args, loaded, out = plan.args.speed, {}, {}
    for method in methods:
        source = METHODS[method].prefix_cache_of or method
        cfg, run_dir = plan.config(method, args.seed), plan.run_dir(method, args.seed)
        prep = prepare(cfg, run_dir)
        adapter = run_dir / "adapter" if prep.plan.trains else None
        if source not in loaded:
            loaded[source] = load_for_serving(cfg.model, adapter, merge=True)
        model, tok = loaded[source]
        n = max(args.queries, args.as_served_queries)
        prompts = [m for _, m in serving_messages(prep, prep.test[:n], prep.plan.serve_tau, prep.plan.serve_k)]
        cached = METHODS[method].prefix_cache_of is not None
        out[method] = {"system": make_system(method, model, tok, prompts[: args.queries], cached), "tok": tok,
                       "prompts": prompts, "merged": adapter is not None,
                       "max_new_tokens": resolve_infer_args(cfg.infer, cfg.model, prep.task, prep.train).max_new_tokens}
    return out


# ---------------------------------------------------------------- collecting everything stored


def _prefix_tokens(plan: Plan, method: str, seed: int, speed: dict[str, Any]) -> float:
    """Tokens of the cached prefix (from the speed pass, else counted on the test prompts)."""
    forced = speed.get("methods", {}).get(method, {}).get("forced", {})
    if forced:
        return float(next(iter(forced.values()))["cached_prefix_tokens"])
    from ..inference import cacheable_prefix_length, encode_prompts
    from ..models import load_tokenizer
    from ..pipeline import prepare, serving_messages

    cfg = plan.config(method, seed)
    prep = prepare(cfg, plan.run_dir(method, seed))
    items = serving_messages(prep, prep.test[:32], prep.plan.serve_tau, prep.plan.serve_k)
    return float(cacheable_prefix_length(encode_prompts(load_tokenizer(cfg.model), [m for _, m in items])))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def collect(plan: Plan) -> dict[str, Any]:
    """results.json: plan, per-method runs, accuracy statistics, speed, scaling, cost, verdict."""
    speed = read_json(plan.out / "speed.json") if (plan.out / "speed.json").is_file() else {"methods": {}}
    walls = read_json(plan.out / "wall_s.json") if (plan.out / "wall_s.json").is_file() else {}
    scaling = read_json(plan.out / "scaling.json") if (plan.out / "scaling.json").is_file() else None
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    pending = []
    for method in plan.args.methods:
        runs[method] = {}
        for seed in plan.seeds:
            r = read_run(plan, method, seed)
            if r is None:
                pending.append(f"{method}/seed-{seed}")
            else:
                runs[method][seed] = r
    metric = next((r["metric"] for m in runs.values() for r in m.values()), None)
    fallback = scaling["settings"]["task"] if scaling else str(plan.base.task)
    task_name = next((r["task"] for m in runs.values() for r in m.values()), fallback)
    scores = {m: {s: item_scores(r["system"], metric) for s, r in rs.items()} for m, rs in runs.items()}
    acc = accuracy(scores, [r for r in REFERENCES if r in plan.args.methods], plan.args.resamples,
                   plan.args.bootstrap_seed) if metric else {"methods": {}, "differences": {}, "n_items": 0}
    acc["floor"] = above_floor(scores, plan.args.resamples, plan.args.bootstrap_seed) if metric else {}
    methods = {m: _method_summary(plan, m, rs, speed) for m, rs in runs.items() if rs}
    for m, summary in methods.items():
        source = METHODS[m].prefix_cache_of or m
        summary["pipeline_wall_s_per_seed"] = [walls.get(f"{source}/{s}") for s in summary["seeds"]]
    cost = _costs(plan, methods)
    results = {
        "task": task_name, "model": plan.base.model, "metric": metric,
        "statistic": statistic_name(metric) if metric else None, "plan": plan.describe(),
        "complete": not pending, "pending": pending, "methods": methods, "accuracy": acc,
        "speed": speed, "speedups": _speedups(speed, plan.args.speed.lengths),
        "speedup_ranges": _paired_speedups(speed, plan.args.speed.lengths), "scaling": scaling,
        "cost": cost, "tolerance": plan.args.tolerance, "resamples": plan.args.resamples,
        "teacher_data": teacher_data_summary(plan.out, plan.seeds)
        if any(METHODS[m].teacher for m in plan.args.methods) else None,
        "slices": slices(plan, runs, scores),
    }
    results["verdict"] = verdict(results, plan.args)
    return results


def _method_summary(plan: Plan, method: str, rs: dict[int, dict[str, Any]], speed: dict[str, Any]
                    ) -> dict[str, Any]:
    systems = [r["system"] for r in rs.values()]
    headline = [s["metrics"][s["metric"]] for s in systems]
    out = {
        "about": METHODS[method].about, "seeds": sorted(rs),
        "headline_metric_per_seed": headline,  # the run's own table (corpus BLEU for NL2Bash)
        "input_tokens_mean": _mean([s["input_tokens_mean"] for s in systems]),
        "output_tokens_mean": _mean([s["output_tokens_mean"] for s in systems]),
        "train_steps": [sum(r["steps"]) for r in rs.values()],
        "steps_per_stage": next(iter(rs.values()))["steps"],
        "train_wall_s_mean": _mean([r["train_wall_s"] for r in rs.values()]),
        "train_wall_s_per_seed": [r["train_wall_s"] for r in rs.values()],
        "train_tokens_mean": _mean([r["train_tokens"] for r in rs.values()]),
        "run_dirs": [r["run_dir"] for r in rs.values()],
        "stages_per_seed": {s: r["stages"] for s, r in rs.items()},
        "to_best_tokens_per_seed": [r["to_best"]["tokens"] for r in rs.values()],
        "to_best_wall_s_per_seed": [r["to_best"]["wall_s"] for r in rs.values()],
        "validation_s_mean": _mean([sum(st["validation_s"] for st in r["stages"]) for r in rs.values()]),
        "runaway_share_per_seed": [r["runaway_share"] for r in rs.values()],
    }
    if METHODS[method].prefix_cache_of:
        out["cached_tokens"] = _prefix_tokens(plan, method, next(iter(rs)), speed)
    if METHODS[method].teacher:  # the teacher's labelling is part of what this method cost to train
        costs = [read_json(answers_path(plan.out, s).with_suffix(".json"))["cost"] for s in sorted(rs)]
        out["labelling"] = {k: _mean([c[k] for c in costs]) for k in ("queries", "input_tokens", "output_tokens", "wall_s")}
    return out


def _costs(plan: Plan, methods: dict[str, Any]) -> dict[str, Any]:
    ref = "full-prompt+cache" if "full-prompt+cache" in methods else "full-prompt"
    out: dict[str, Any] = {"reference": ref, "compute_per_hour": plan.args.cost.compute_per_hour,
                           "compute_source": plan.args.cost.compute_source, "profiles": {}}
    for profile in plan.args.cost.profiles:
        cached = methods.get("full-prompt+cache", {}).get("cached_tokens", 0.0)  # the teacher's prompt, cached
        rows = {m: method_costs(profile, {"input_tokens_mean": s["input_tokens_mean"],
                                          "output_tokens_mean": s["output_tokens_mean"],
                                          "cached_tokens": s.get("cached_tokens", 0.0)},
                                {"tokens": s["train_tokens_mean"], "wall_s": s["train_wall_s_mean"],
                                 "labelling": s.get("labelling"), "labelling_cached_tokens": cached},
                                plan.args.cost.compute_per_hour) for m, s in methods.items()}
        if ref in rows:
            for m, row in rows.items():
                if m != ref:
                    row["break_even_vs_reference"] = {
                        basis: break_even(row, rows[ref], basis) for basis in ("training_hosted", "training_compute")}
        out["profiles"][profile.name] = {"prices": asdict(profile), "methods": rows}
    return out


def _speedups(speed: dict[str, Any], lengths: Sequence[int]) -> dict[str, Any]:
    """Matched-length batch-1 speed-up of every method over full-prompt and over full-prompt+cache."""
    ms = speed.get("methods", {})
    out: dict[str, Any] = {}
    for ref in ("full-prompt", "full-prompt+cache"):
        if ref not in ms:
            continue
        for m, entry in ms.items():
            for L in map(str, lengths):
                if L in entry.get("forced", {}) and L in ms[ref].get("forced", {}):
                    ratio = ms[ref]["forced"][L]["latency_s"]["median"] / entry["forced"][L]["latency_s"]["median"]
                    out.setdefault(m, {}).setdefault(f"vs_{ref}", {})[L] = ratio
    return out


def _paired_speedups(speed: dict[str, Any], lengths: Sequence[int]) -> dict[str, Any]:
    """The speed-ups' spread: with interleaved timing, repeat r of two methods ran back to back, so
    the ratio of their r-th latencies is one paired measurement; per method, reference and length:
    the median, minimum and maximum of those ratios (methods timed apart get none)."""
    ms = speed.get("methods", {})
    out: dict[str, Any] = {}
    for ref in ("full-prompt", "full-prompt+cache"):
        base = ms.get(ref, {})
        for m, entry in ms.items():
            if not (entry.get("settings", {}).get("protocol") == base.get("settings", {}).get("protocol")
                    == SPEED_PROTOCOL):
                continue
            for L in map(str, lengths):
                a = base.get("forced", {}).get(L, {}).get("latency_s_runs")
                b = entry.get("forced", {}).get(L, {}).get("latency_s_runs")
                if a and b and len(a) == len(b):
                    ratios = [x / y for x, y in zip(a, b, strict=True)]
                    out.setdefault(m, {}).setdefault(f"vs_{ref}", {})[L] = {
                        "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                        "n": len(ratios)}
    return out
