"""How each method got where it is: per-stage stops, validation curves, cost to the best checkpoint,
and the share of answers that ran to the token limit.

All of it is read from what the runs stored: ``train/history.json`` (each stage's Trainer
``log_history`` with its ``eval_loss`` scorings, ``stopped``, ``epochs``, ``best_step``,
``reused_from``) and the predictions file (``output_tokens`` per answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import read_jsonl


def validation_curve(stage: dict[str, Any]) -> list[list[float]]:
    """(step, validation loss) of every scoring during a stage (the final re-scoring left out)."""
    points = [[int(e["step"]), float(e["eval_loss"])] for e in stage.get("log_history", []) if "eval_loss" in e]
    seen: dict[int, float] = {}
    for step, loss in points:  # the re-scoring after the stage repeats the chosen step's loss: keep the first
        seen.setdefault(step, loss)
    return [[s, seen[s]] for s in sorted(seen)]


def validation_seconds(stage: dict[str, Any]) -> float:
    """Seconds spent scoring validation in a stage (during training and the final re-scoring)."""
    during = sum(float(e.get("eval_runtime", 0.0)) for e in stage.get("log_history", []) if "eval_loss" in e)
    return during + float(stage.get("validation_wall_s", 0.0))


def stage_rows(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage: prompt point, steps and epochs run, why it stopped, its best scoring, its curve."""
    rows = []
    for s in history.get("stages", []):
        rows.append({
            "stage": s["stage"], "tau": s.get("tau"), "k": s.get("k"), "steps": int(s["steps"]),
            "epochs": s.get("epochs"), "stopped": s.get("stopped"), "max_steps": s.get("max_steps"),
            "best_step": s.get("best_step"), "best_validation_loss": s.get("best_validation_loss"),
            "validation_loss": s.get("validation_loss"), "reused_from": s.get("reused_from"),
            "train_wall_s": float(s.get("train_wall_s", 0.0)), "validation_s": validation_seconds(s),
            "curve": validation_curve(s)})
    return rows


def to_best(rows: list[dict[str, Any]], tokens_per_step: list[float]) -> dict[str, float]:
    """Training tokens and wall seconds up to the served checkpoint: every earlier stage whole, the
    last stage up to its best step (its seconds pro rata of its steps)."""
    tokens = wall = 0.0
    for i, (row, per_step) in enumerate(zip(rows, tokens_per_step, strict=True)):
        steps = row["steps"]
        upto = row["best_step"] if i == len(rows) - 1 and row["best_step"] else steps
        tokens += upto * per_step
        wall += row["train_wall_s"] * (upto / steps if steps else 1.0)
    return {"tokens": tokens, "wall_s": wall}


def runaway_share(predictions: Path, max_new_tokens: int | None) -> float | None:
    """Share of answers whose length reached ``max_new_tokens`` (an undertrained model's symptom)."""
    if not max_new_tokens or not predictions.is_file():
        return None
    rows = read_jsonl(predictions)
    return sum(int(r["output_tokens"]) >= max_new_tokens for r in rows) / len(rows) if rows else None
