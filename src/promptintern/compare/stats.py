"""Accuracy across seeds and test items, from the per-item scores each run stored in metrics.json.

The statistic is the mean of the per-item score over test items (pass, execution and exact
match: 100 or 0; NL2Bash's ``bleu``: the item's sentence BLEU, so the mean is *mean sentence
BLEU*, not the corpus BLEU of the run's own table, which has no per-item form).

A difference between two methods is bootstrapped over both sources of chance at once: each
resample draws S seeds with replacement and N test items with replacement, and averages the
per-item differences (method − reference, same seed index, same item) over the drawn seeds and
items. Drawing the same seed index for both methods pairs runs that saw the same data order; the
seed-to-seed spread of either method still enters through the spread of the differences. An
interval that excludes 0 is "significant"; one that does not is not, whatever the point estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ITEM_KEYS = {"bleu": "bleu", "pass@1": "passed", "exact_match": "exact_match", "sql_execution": "sql_execution"}
CHUNK = 1000  # resamples per vectorised block (bounds memory at CHUNK × seeds × items floats)


def item_key(metric: str) -> str:
    """The per-item record field that carries ``metric`` (a user metric's field is its own name)."""
    return ITEM_KEYS.get(metric, metric)


def statistic_name(metric: str) -> str:
    return "mean sentence BLEU" if metric == "bleu" else f"{metric} (mean over items)"


def item_scores(system: dict[str, Any], metric: str) -> dict[str, float]:
    """id → per-item score of one served system in metrics.json (booleans as 100 / 0)."""
    key = item_key(metric)
    out = {}
    for item_id, rec in system["per_item"].items():
        v = rec[key]
        out[str(item_id)] = 100.0 * float(v) if isinstance(v, bool) else float(v)
    return out


def score_matrix(per_seed: Sequence[dict[str, float]], ids: Sequence[str]) -> np.ndarray:
    """Seeds × items array of scores, items in the order of ``ids``."""
    return np.array([[scores[i] for i in ids] for scores in per_seed], dtype=float)


def summary(matrix: np.ndarray) -> dict[str, Any]:
    """Mean over items per seed, and their mean, standard deviation (ddof 1), min and max."""
    per_seed = matrix.mean(axis=1)
    return {"mean": float(per_seed.mean()), "sd_over_seeds": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
            "min": float(per_seed.min()), "max": float(per_seed.max()), "per_seed": [float(x) for x in per_seed],
            "n_seeds": int(matrix.shape[0]), "n_items": int(matrix.shape[1])}


def bootstrap_difference(a: np.ndarray, b: np.ndarray, resamples: int, seed: int = 0, alpha: float = 0.05
                         ) -> dict[str, Any]:
    """Mean of ``a − b`` (seeds × items, paired by row and column) with a seed-and-item bootstrap
    percentile interval (``resamples`` draws, vectorised in blocks)."""
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs the same seeds and items ({a.shape} != {b.shape})")
    d = a - b
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        r = min(CHUNK, resamples - start)
        items = rng.integers(0, n_items, size=(r, n_items))
        seeds = rng.integers(0, n_seeds, size=(r, n_seeds))
        per_seed = d[:, items].mean(axis=2)  # (seeds, r): each seed's mean over the drawn items
        means[start:start + r] = np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": float(d.mean()), "ci95": [float(lo), float(hi)], "significant": bool(lo > 0 or hi < 0),
            "resamples": resamples, "n_seeds": n_seeds, "n_items": n_items, "bootstrap_seed": seed}


def more_data_needed(diff: dict[str, Any], tolerance: float) -> dict[str, Any] | None:
    """How much more data (items × seeds) would make ``diff``'s interval clear −tolerance, if the
    point estimate and the spread stay as they are; None when it already does or never could."""
    lo, hi = diff["ci95"]
    half = (hi - lo) / 2
    margin = diff["diff"] + tolerance  # how far the point estimate sits above −tolerance
    if lo >= -tolerance or margin <= 0 or half <= 0:
        return None
    factor = (half / margin) ** 2  # an interval's half-width shrinks as 1/sqrt(data)
    return {"factor": float(factor), "items": int(np.ceil(diff["n_items"] * factor)),
            "seeds": int(np.ceil(diff["n_seeds"] * factor))}


def accuracy(scores: dict[str, dict[int, dict[str, float]]], references: Sequence[str], resamples: int, seed: int
             ) -> dict[str, Any]:
    """Per-method summaries and every method's bootstrap difference to each reference present.

    ``scores``: method → seed → (item id → score). Differences use the seeds both methods have
    and the items every run scored.
    """
    all_ids = [set(s) for runs in scores.values() for s in runs.values()]
    ids = sorted(set.intersection(*all_ids)) if all_ids else []
    out: dict[str, Any] = {"n_items": len(ids), "methods": {}, "differences": {}}
    for method, runs in scores.items():
        if runs:
            matrix = score_matrix([runs[s] for s in sorted(runs)], ids)
            ci = bootstrap_difference(matrix, np.zeros_like(matrix), resamples, seed)["ci95"] if ids else None
            out["methods"][method] = {**summary(matrix), "seeds": sorted(runs), "ci95": ci}
    for ref in references:
        for method, runs in scores.items():
            common = sorted(set(runs) & set(scores.get(ref, {})))
            if method == ref or not common:
                continue
            a = score_matrix([runs[s] for s in common], ids)
            b = score_matrix([scores[ref][s] for s in common], ids)
            out["differences"].setdefault(method, {})[ref] = {**bootstrap_difference(a, b, resamples, seed),
                                                              "seeds": common}
    return out


def above_floor(scores: dict[str, dict[int, dict[str, float]]], resamples: int, seed: int,
                base: str = "base-full") -> dict[str, Any]:
    """Per method: how far it sits above what needs no learning, with a seed-and-item interval.

    The floor is the base model's score on the same items (paired, when ``base`` was compared) or
    else the metric's floor, 0. ``above`` is True only when the whole interval is above it: a
    method the data cannot tell from the floor has not learned the task at this budget, and a
    degenerate interval (every item the same score, e.g. all zero) resolves nothing.
    """
    all_ids = [set(s) for runs in scores.values() for s in runs.values()]
    ids = sorted(set.intersection(*all_ids)) if all_ids else []
    out: dict[str, Any] = {}
    for method, runs in scores.items():
        if not runs or method == base or not ids:
            continue
        common = sorted(set(runs) & set(scores.get(base, {})))
        a = score_matrix([runs[s] for s in (common or sorted(runs))], ids)
        b = score_matrix([scores[base][s] for s in common], ids) if common else np.zeros_like(a)
        d = bootstrap_difference(a, b, resamples, seed)
        out[method] = {**d, "vs": base if common else "floor 0",
                       "degenerate": d["ci95"][0] == d["ci95"][1], "above": d["ci95"][0] > 0}
    return out
