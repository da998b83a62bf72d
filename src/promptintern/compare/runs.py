"""Run every (method, seed) on the library's own pipeline, resumably, and read back what it stored.

A (method, seed) is finished when its run directory holds ``metrics.json`` written by a run of
the same config (``run.json``'s fingerprint); it is then skipped without loading a model. An
unfinished one is handed to :func:`promptintern.pipeline.run` with ``resume=True``, which picks
up at its last checkpoint or prediction batch. Under ``converge`` a staged method's run
directory may first be given full-prompt FT's finished stage 0 (:mod:`.reuse`), so full-prompt
FT runs first. Everything read back here (metrics.json, the training history, the stage files)
is what the pipeline itself wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import read_json, write_json
from . import teacher_data
from .budget import measured_step_seconds, plan_lines
from .curves import runaway_share, stage_rows, to_best
from .plan import METHODS, Plan
from .reuse import REFERENCE, reusable, reuse_stages


def finished(plan: Plan, method: str, seed: int) -> bool:
    """Whether (``method``, ``seed``)'s pipeline run is complete under the current config."""
    if METHODS[method].teacher and not teacher_data.ready(plan.out, seed):
        return False  # its config names teacher answers that do not exist yet
    cfg, run_dir = plan.config(method, seed), plan.run_dir(method, seed)
    marker = run_dir / "run.json"
    return (run_dir / "metrics.json").is_file() and marker.is_file() and \
        read_json(marker).get("fingerprint") == cfg.fingerprint()


def run_all(plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    """Run (or skip) every (method, seed); the wall time of each pipeline run is kept in ``wall_s.json``
    (train + serve + score, this machine). Returns the wall times of the runs this call finished.

    Two compare processes may run different methods into one directory (one per core): a run
    directory is locked while it trains, and ``wall_s.json`` is read again before each write."""
    from ..pipeline import run

    path = plan.out / "wall_s.json"
    spent: dict[str, Any] = {}
    # Seed-major: a benchmark stopped part-way holds whole seeds (every method), which the report
    # can already compare, rather than every seed of the first methods only.
    trained = [m for m in plan.args.ordered_methods() if not METHODS[m].prefix_cache_of]
    if any(reusable(plan, m) or METHODS[m].teacher for m in trained):  # they start from / learn from it
        trained.sort(key=lambda m: m != REFERENCE)
    histories = {m: [read_json(plan.run_dir(m, s) / "train" / "history.json") for s in plan.seeds
                     if (plan.run_dir(m, s) / "train" / "history.json").is_file()] for m in trained}
    for line in plan_lines(trained, plan.seeds, plan.planned_steps, measured_step_seconds(histories),
                           plan.args.budget, [m for m in trained if reusable(plan, m)]):
        log(line)
    for seed in plan.seeds:
        for method in trained:  # a prefix-cache method has no run: its source's adapter, cached
            if finished(plan, method, seed):
                log(f"{method} seed {seed}: finished earlier, kept")
                continue
            if METHODS[method].teacher and not _teacher_answers(plan, seed, log):
                continue
            cfg = plan.config(method, seed)
            reuse_stages(plan, method, seed, log)
            log(f"{method} seed {seed}: pipeline run ({cfg.method}, steps per stage "
                f"{plan.planned_steps(method) or '-'}) in {plan.run_dir(method, seed)}")
            t0 = time.perf_counter()
            run(cfg, resume=True)
            key = f"{method}/{seed}"
            spent[key] = time.perf_counter() - t0  # the session that finished it (training wall time: history)
            # read again: another compare process may have finished other methods into the same directory
            write_json(path, {**(read_json(path) if path.is_file() else {}), key: spent[key]})
            log(f"{method} seed {seed}: done in {spent[key]:.0f} s")
    return spent


def _teacher_answers(plan: Plan, seed: int, log: Callable[[str], None]) -> bool:
    """Seed ``seed``'s teacher answers, labelled now if needed; False while full-prompt FT is unfinished."""
    if not teacher_data.ready(plan.out, seed):
        if not finished(plan, REFERENCE, seed):
            log(f"teacher seed {seed}: full-prompt FT is not finished; the '+teacher' methods of this seed wait")
            return False
        teacher_data.label_seed(plan, seed, plan.run_dir(REFERENCE, seed), log)
    return True


def tokens_per_step(plan: Plan, method: str, seed: int, history: dict[str, Any]) -> list[float]:
    """Per finished stage: records per step × the stage's mean record length."""
    from ..models import load_tokenizer
    from ..prompt import encode_chat
    from ..stages import load_stages

    cfg, run_dir = plan.config(method, seed), plan.run_dir(method, seed)
    stages = load_stages(run_dir / "stages", len(history.get("stages", [])))
    if not stages:
        return []
    tok = load_tokenizer(cfg.model)
    out = []
    for index, stage in enumerate(stages):
        args = cfg.train.for_stage(index)
        lengths = [len(encode_chat(tok, r.messages, r.answer)["input_ids"]) for r in stage.records]
        out.append(args.per_device_batch_size * args.gradient_accumulation_steps * sum(lengths) / max(1, len(lengths)))
    return out


def read_run(plan: Plan, method: str, seed: int) -> dict[str, Any] | None:
    """What (``method``, ``seed``)'s run stored: its system's metrics with per-item scores, serving
    token counts, and training steps, wall time and tokens; None while it is unfinished."""
    if not finished(plan, method, seed):
        return None
    source = METHODS[method].prefix_cache_of or method
    cfg, run_dir = plan.config(source, seed), plan.run_dir(source, seed)
    metrics = read_json(run_dir / "metrics.json")
    system = metrics["systems"][cfg.method]
    history = (metrics.get("train") or {}).get("history") or {"stages": [], "train_wall_s": 0.0}
    rows = stage_rows(history)
    per_step = tokens_per_step(plan, source, seed, history)
    return {
        "stages": rows, "to_best": to_best(rows, per_step) if rows else {"tokens": 0.0, "wall_s": 0.0},
        "runaway_share": runaway_share(predictions_path(plan, source, seed), system.get("max_new_tokens")),
        "run_dir": str(run_dir), "system": system, "metric": metrics["metric"], "task": metrics["task"],
        "n_test": metrics["n_test"],
        "steps": [int(s["steps"]) for s in history.get("stages", [])],
        "train_wall_s": float(history.get("train_wall_s", 0.0)),
        "train_tokens": sum(int(e["steps"]) * t for e, t in zip(history.get("stages", []), per_step, strict=True)),
    }


def predictions_path(plan: Plan, method: str, seed: int) -> Path:
    cfg = plan.config(method, seed)
    return plan.run_dir(method, seed) / "predictions" / f"{cfg.method}.jsonl"
