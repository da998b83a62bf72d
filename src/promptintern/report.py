"""Reports a person can read: a Markdown summary, PNG plots and a before/after console table."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import UserError
from .io import atomic_path, write_json, write_text

METRICS_SUFFIX = ".metrics.json"


def _metric(system: dict[str, Any], name: str) -> float | None:
    return system.get("metrics", {}).get(name)


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per served system: tokens, latency, throughput and the task metric with its CI."""
    key = metrics["metric"]
    rows = []
    for name, s in metrics["systems"].items():
        ci = s.get("ci95", {}).get(key)
        rows.append({
            "system": name, "tau": s["tau"], "k": s["k"], "trained": s["trained"],
            "input_tokens": s.get("input_tokens_mean", 0.0), "output_tokens": s.get("output_tokens_mean", 0.0),
            "latency_s": s.get("latency_s_mean", 0.0), "qps": s.get("throughput_qps", 0.0),
            "batch_size": s.get("batch_size"),
            "metric": _metric(s, key), "ci": ci,
        })
    return rows


def batch_note(metrics: dict[str, Any]) -> str:
    """``batch N`` when every served system ran at batch size N (latency and throughput depend on
    it); empty when they differ (each row then says its own, see :func:`latency_cell`) or it is unknown."""
    sizes = {s.get("batch_size") for s in metrics["systems"].values()}
    return f"batch {sizes.pop()}" if len(sizes) == 1 and None not in sizes else ""


def _with_batch(header: str, metrics: dict[str, Any]) -> str:
    note = batch_note(metrics)
    return f"{header} ({note})" if note else header


def latency_cell(row: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Seconds per query, with the row's batch size when the header cannot state one for all."""
    own = "" if batch_note(metrics) or not row.get("batch_size") else f" (batch {row['batch_size']})"
    return f"{row['latency_s']:.3f}{own}"


def markdown_table(metrics: dict[str, Any]) -> str:
    key = metrics["metric"]
    lines = [f"| system | τ | k | trained | input tokens/query | {_with_batch('latency s/query', metrics)} | "
             f"queries/s | {key} (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary_rows(metrics):
        ci = f" [{r['ci'][0]:.1f}, {r['ci'][1]:.1f}]" if r["ci"] else ""
        val = "n/a" if r["metric"] is None else f"{r['metric']:.1f}{ci}"
        lines.append(f"| {r['system']} | {r['tau']:.2f} | {r['k']} | {'yes' if r['trained'] else 'no'} | "
                     f"{r['input_tokens']:.0f} | {latency_cell(r, metrics)} | {r['qps']:.2f} | {val} |")
    return "\n".join(lines)


def _stage_history(metrics: dict[str, Any]) -> dict[int, dict[str, Any]]:
    history = metrics.get("train", {}).get("history") or {}
    return {h["stage"]: h for h in history.get("stages", [])}


def stages_table(metrics: dict[str, Any]) -> str:
    """The schedule, with each stage's validation loss (its own prompt, after the stage) when it was
    scored, and the step the last stage ended with when ``select_best`` chose its best checkpoint."""
    history = _stage_history(metrics)
    scored = any("validation_loss" in h for h in history.values())
    head = "| stage | τ | k | instances |" + (" train loss | validation loss (n) |" if scored else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in metrics["schedule"]:
        row = f"| {s['stage']} | {s['tau']:.2f} | {s['k']} | {s['n']} |"
        if scored:
            h = history.get(s["stage"], {})
            train = f"{h['train_loss']:.4f}" if "train_loss" in h else "–"
            val = f"{h['validation_loss']:.4f} ({h['n_validation']})" if "validation_loss" in h else "–"
            if h.get("best_step") is not None:
                val += f", best checkpoint: step {h['best_step']} of {h['steps']}"
            row += f" {train} | {val} |"
        lines.append(row)
    return "\n".join(lines)


def write_report(metrics: dict[str, Any], run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report path."""
    plots = write_plots(metrics, run_dir / "plots")
    parts = [
        f"# promptintern run: {metrics['task']} · {metrics['method']} · {metrics['model']}",
        f"{metrics['n_train']} training instances, {metrics['n_test']} test queries.",
        "## Results", markdown_table(metrics), _unsafe_sandbox_note(metrics),
        "## Stages", stages_table(metrics),
        "## Plots", *[f"![{p.stem}](plots/{p.name})" for p in plots],
    ]
    path = run_dir / "report.md"
    write_text(path, "\n\n".join(parts) + "\n")
    return path


def write_plots(metrics: dict[str, Any], out: Path) -> list[Path]:
    """Accuracy vs input tokens, latency per query, and per-stage training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows, key, written = summary_rows(metrics), metrics["metric"], []

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["metric"] is not None:
            err = [[r["metric"] - r["ci"][0]], [r["ci"][1] - r["metric"]]] if r["ci"] else None
            ax.errorbar(r["input_tokens"], r["metric"], yerr=err, fmt="o", capsize=4)
            ax.annotate(r["system"], (r["input_tokens"], r["metric"]), textcoords="offset points", xytext=(6, 3))
    tokens = [r["input_tokens"] for r in rows if r["input_tokens"] > 0]
    if tokens and max(tokens) > 5 * min(tokens):
        ax.set_xscale("log")
    ax.set(xlabel="input tokens per query", ylabel=f"{key} (95% CI)", title=f"{metrics['task']}: {key} vs prompt length")
    written.append(_save(fig, out / "accuracy_vs_tokens.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([r["system"] for r in rows], [r["latency_s"] for r in rows])
    ax.set(xlabel="seconds per query (batch wall time / queries)", title="latency per query")
    written.append(_save(fig, out / "latency.png"))

    history = metrics.get("train", {}).get("history")
    if history:
        fig, ax = plt.subplots(figsize=(6, 4))
        offset = 0
        for stage in history.get("stages", []):
            steps = [offset + p["step"] for p in stage["log_history"] if "loss" in p]
            (line,) = ax.plot(steps, [p["loss"] for p in stage["log_history"] if "loss" in p],
                              label=f"stage {stage['stage']}")
            scored = [(offset + p["step"], p["eval_loss"]) for p in stage["log_history"] if "eval_loss" in p]
            if scored:  # validation loss, on the stage's own prompt
                ax.plot(*zip(*scored, strict=True), "o", color=line.get_color())
            offset = steps[-1] if steps else offset
        ax.set(xlabel="optimizer step", ylabel="training loss (dots: validation loss)", title="loss per stage")
        ax.legend()
        written.append(_save(fig, out / "train_loss.png"))
    plt.close("all")
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def print_summary(metrics: dict[str, Any], console: Console) -> None:
    """The before/after table: every served system side by side."""
    key = metrics["metric"]
    table = Table("system", "prompt", "input tokens", _with_batch("latency s/query", metrics), f"{key} (95% CI)",
                  title=f"{metrics['task']} · {metrics['n_test']} test queries · {metrics['model']}")
    for r in summary_rows(metrics):
        prompt = "query alone" if r["tau"] == 0 and r["k"] == 0 else f"τ={r['tau']:.2f}, k={r['k']}"
        ci = f" [{r['ci'][0]:.1f}, {r['ci'][1]:.1f}]" if r["ci"] else ""
        val = "n/a" if r["metric"] is None else f"{r['metric']:.1f}{ci}"
        table.add_row(r["system"], prompt, f"{r['input_tokens']:.0f}", latency_cell(r, metrics), val)
    unsafe = _unsafe_sandbox_note(metrics)
    if unsafe:
        table.caption = unsafe
    console.print(table)


def _unsafe_sandbox_note(metrics: dict[str, Any]) -> str:
    """The opt-in to uncontained code execution, if any system was scored that way (else empty)."""
    from .evaluate import sandbox_note

    for system in metrics.get("systems", {}).values():
        if "sandbox_level" in system and not system.get("sandbox_contained", True):
            return sandbox_note(system)
    return ""


def metrics_path(predictions: Path, out: str | None = None) -> Path:
    """Where ``eval`` writes the scores of ``predictions``: ``<stem>.metrics.json`` beside them,
    the same name inside ``out`` when ``out`` is a directory, or ``out`` itself when it ends in
    ``.json``. Named after the input, so scoring several prediction files in one folder keeps all."""
    name = predictions.name.removesuffix(".jsonl").removesuffix(".json") + METRICS_SUFFIX
    if out is None:
        return predictions.with_name(name)
    target = Path(out)
    return target if target.suffix == ".json" else target / name


def publish_new(metrics: dict[str, Any], target: Path, replace: bool) -> None:
    """Write ``metrics`` as JSON to ``target``; an existing ``target`` is replaced only when
    ``replace`` is set, else a one-line error (a hard link never overwrites, so no race either)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        write_json(target, metrics)
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_json(tmp, metrics)
        Path(target).hardlink_to(tmp)
    except FileExistsError:
        raise UserError(f"{target} exists; pass --out for another file or --force to replace it") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
