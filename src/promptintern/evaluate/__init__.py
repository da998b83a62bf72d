"""Scoring predictions: BLEU/exact/structure match for NL2Bash, pass@1 for MBPP, exact match,
SQL execution accuracy (:mod:`.sql`), and users' own ``module:function`` metrics (:mod:`.metrics`).

>>> result = score("bleu", {"nl2bash-3": "ls -l"}, instances)      # doctest: +SKIP
>>> result["metrics"]["bleu"], result["ci95"]["bleu"]               # doctest: +SKIP

Every metric is in percent. Missing predictions count as wrong and are reported (``missing``).
NL2Bash predictions are read as the first fenced code block if the answer has one (see
:func:`.nl2bash.clean_prediction`); MBPP predictions likewise (:func:`.mbpp.extract_code`), and run
only inside the sandbox (:mod:`.sandbox`).
Confidence intervals are percentile bootstraps over test items (``bootstrap`` resamples; 0 = none).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ..errors import DataError
from ..io import read_jsonl, write_json
from ..tasks.base import Instance, Task
from .bootstrap import bootstrap_ci, mean_percent, paired_bootstrap
from .mbpp import check_program, extract_code, pass_at_1
from .metrics import is_custom, load_metric, score_custom
from .nl2bash import DEFAULT_TOKENIZER, bleu, bleu_from_stats, clean_prediction, exact_match, structure_match
from .sandbox import SandboxResult, run_python, sandbox_capabilities
from .sql import execution_accuracy

METRICS = ("bleu", "pass@1", "exact_match", "sql_execution")
MISSING_IDS_SHOWN = 20


def _ci(items: np.ndarray, fn, bootstrap: int, seed: int) -> list[float] | None:
    if bootstrap <= 0 or len(items) == 0:
        return None
    lo, hi = bootstrap_ci(items, fn, n=bootstrap, seed=seed)
    return [lo, hi]


def _score_bleu(preds: list[str | None], refs: list[str], tokenize: str, bootstrap: int, seed: int) -> dict[str, Any]:
    hyps = [clean_prediction(p) if p is not None else "" for p in preds]
    b = bleu(hyps, refs, tokenize=tokenize)
    em = np.array([p is not None and exact_match(h, r) for p, h, r in zip(preds, hyps, refs, strict=True)], dtype=float)
    sm = np.array([p is not None and structure_match(h, r) for p, h, r in zip(preds, hyps, refs, strict=True)],
                  dtype=float)
    metrics = {"bleu": b["bleu"], "exact_match": mean_percent(em), "structure_match": mean_percent(sm)}
    ci = {
        "bleu": _ci(b["stats"], lambda s: bleu_from_stats(s, tokenize), bootstrap, seed),
        "exact_match": _ci(em, mean_percent, bootstrap, seed),
        "structure_match": _ci(sm, mean_percent, bootstrap, seed),
    }
    per_item = [{"bleu": s, "exact_match": bool(e), "structure_match": bool(m)}
                for s, e, m in zip(b["per_item"], em, sm, strict=True)]
    details = {"bleu_tokenizer": b["bleu_tokenizer"], "bleu_signature": b["bleu_signature"]}
    return {"metrics": metrics, "ci95": ci, "per_item": per_item, **details}


def _score_exact(preds: list[str | None], refs: list[str], bootstrap: int, seed: int) -> dict[str, Any]:
    em = np.array([p is not None and exact_match(p, r) for p, r in zip(preds, refs, strict=True)], dtype=float)
    return {"metrics": {"exact_match": mean_percent(em)}, "ci95": {"exact_match": _ci(em, mean_percent, bootstrap, seed)},
            "per_item": [{"exact_match": bool(e)} for e in em]}


def score(
    task_metric: str,
    predictions: dict[str, str],
    instances: list[Instance],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    timeout_s: float = 10.0,
    tokenize: str = DEFAULT_TOKENIZER,
    sandbox: str = "bwrap",
) -> dict[str, Any]:
    """Score ``predictions`` (id -> text) against ``instances`` with the task's metric.

    ``sandbox`` (pass@1 only): ``bwrap``, the contained level, which refuses with
    :class:`~.sandbox.SandboxUnavailable` where it cannot be established; ``process`` only when the
    user explicitly opted in to running model-written code uncontained (stored in the result).

    Returns ``metric`` (the headline name), ``metrics`` (name -> percent), ``ci95`` (name ->
    [lo, hi] or None), ``per_item`` (id -> record), ``n``, ``missing`` and ``missing_ids`` (first
    few), plus metric details (BLEU tokenizer and signature, sandbox level and status counts).
    Predictions for ids outside ``instances`` are ignored; :func:`evaluate_file` rejects them.
    """
    if task_metric not in METRICS and not is_custom(task_metric):
        raise ValueError(f"unknown metric {task_metric!r}; choose one of {', '.join(METRICS)} or 'module:function'")
    ids = [inst.id for inst in instances]
    missing = [i for i in ids if i not in predictions]
    preds = [predictions.get(i) for i in ids]
    refs = [inst.answer for inst in instances]
    out: dict[str, Any] = {"metric": task_metric, "n": len(ids), "missing": len(missing),
                           "missing_ids": missing[:MISSING_IDS_SHOWN]}
    if task_metric == "bleu":
        res = _score_bleu(preds, refs, tokenize, bootstrap, seed)
    elif task_metric == "exact_match":
        res = _score_exact(preds, refs, bootstrap, seed)
    elif task_metric == "sql_execution":
        res = execution_accuracy(preds, instances, bootstrap=bootstrap, seed=seed)
    elif is_custom(task_metric):  # already imported by the task spec; found again in sys.modules
        res = score_custom(load_metric(task_metric), task_metric, preds, refs, bootstrap, seed)
    else:
        pa = pass_at_1(predictions, instances, workers=workers, timeout_s=timeout_s, sandbox_level=sandbox)
        outcomes = np.array([pa["per_item"][i]["passed"] for i in ids], dtype=float)
        res = {"metrics": {"pass@1": pa["pass@1"]}, "ci95": {"pass@1": _ci(outcomes, mean_percent, bootstrap, seed)},
               "per_item": [pa["per_item"][i] for i in ids], "sandbox_level": pa["sandbox_level"],
               "sandbox_contained": pa["sandbox_contained"], "status_counts": pa["status_counts"],
               "oracle_fallback": pa["oracle_fallback"]}
    res["per_item"] = {i: {"missing": p is None, **rec} for i, p, rec in zip(ids, preds, res["per_item"], strict=True)}
    out.update(res)
    if bootstrap > 0:
        out["bootstrap"] = {"n": bootstrap, "seed": seed, "alpha": 0.05}
    return out


def _task(task: str | Task) -> Task:
    if isinstance(task, Task):
        return task
    from ..tasks import get_task

    return get_task(task)


def evaluate_file(
    task: str | Task,
    predictions_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    **score_options: Any,
) -> dict[str, Any]:
    """Score a ``{"id", "prediction"}`` JSONL file on the task's test split; writes ``out_dir/metrics.json``.

    Every id must belong to the test split and appear once (else :class:`DataError` naming the
    ids); test items without a prediction count as wrong.
    """
    t = _task(task)
    instances = t.load_split("test", data_dir)
    path = Path(predictions_path)
    predictions: dict[str, str] = {}
    duplicates: list[str] = []
    for row in read_jsonl(path, required=("id", "prediction")):
        pid, text = str(row["id"]), row["prediction"]
        if not isinstance(text, str):
            raise DataError(f"{path}: prediction for id {pid!r} is {type(text).__name__}, expected a string")
        if pid in predictions:
            duplicates.append(pid)
        predictions[pid] = text
    if duplicates:
        raise DataError(f"{path}: duplicate id(s) {', '.join(map(repr, duplicates[:5]))}")
    known = {inst.id for inst in instances}
    unknown = [pid for pid in predictions if pid not in known]
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise DataError(
            f"{path}: id(s) {', '.join(map(repr, unknown[:5]))}{more} are not in the {t.name} test split"
        )
    metrics = score(t.metric, predictions, instances, **score_options)
    metrics = {"task": t.name, "predictions": str(path), **metrics}
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def sandbox_note(metrics: dict[str, Any]) -> str:
    """How model-written code was run, in words a reader of a results table cannot miss."""
    if metrics.get("sandbox_contained", True):
        return f"sandbox: {metrics['sandbox_level']} (contained)"
    return f"UNSAFE: sandbox {metrics['sandbox_level']} does not contain model-written code (opted in)"


def format_table(metrics: dict[str, Any]) -> Table:
    """A console table of a :func:`score` / :func:`evaluate_file` result: metric, value, 95% CI."""
    title = " · ".join(str(x) for x in (metrics.get("task"), f"{metrics.get('n', 0)} test items") if x)
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    ci = metrics.get("ci95", {})
    for name, value in metrics.get("metrics", {}).items():
        interval = ci.get(name)
        shown = f"[{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "-"
        label = f"{name} (headline)" if name == metrics.get("metric") else name
        table.add_row(label, f"{value:.2f}", shown)
    if metrics.get("missing"):
        table.add_row("missing predictions", str(metrics["missing"]), "", style="yellow")
    if "bleu_tokenizer" in metrics:
        table.caption = f"sacrebleu {metrics['bleu_signature']}"
    elif "gold_failed" in metrics:
        failed = f"{metrics['gold_failed']} gold queries do not run (scored by exact match); " if metrics["gold_failed"] else ""
        table.caption = failed + ", ".join(f"{k} {v}" for k, v in sorted(metrics.get("status_counts", {}).items()))
    elif "sandbox_level" in metrics:
        table.caption = f"{sandbox_note(metrics)}; " + ", ".join(
            f"{k} {v}" for k, v in sorted(metrics.get("status_counts", {}).items()))
        if metrics.get("oracle_fallback"):
            table.caption += f"; {metrics['oracle_fallback']} items with tests that cannot be split (scored failed)"
    return table


__all__ = [
    "METRICS",
    "SandboxResult",
    "bleu",
    "bootstrap_ci",
    "check_program",
    "evaluate_file",
    "extract_code",
    "format_table",
    "paired_bootstrap",
    "pass_at_1",
    "run_python",
    "sandbox_capabilities",
    "score",
]
