"""Percentile bootstrap confidence intervals over per-item records.

Generic over what an item is: a 0/1 outcome (pass@1, exact match) or a row of sufficient
statistics (corpus BLEU, recomputed exactly from each resample's summed n-gram counts). The
statistic receives the resampled items as one NumPy array, so sums and means stay vectorised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Statistic = Callable[[np.ndarray], float]


def mean_percent(items: np.ndarray) -> float:
    """The mean of 0/1 outcomes, in percent (the statistic of pass@1 and exact match)."""
    return 100.0 * float(np.mean(items)) if len(items) else 0.0


def _resample_indices(n_items: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_items, size=(n, n_items))


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _check(n: int, alpha: float) -> None:
    if n < 1:
        raise ValueError(f"bootstrap needs n >= 1 resamples, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")


def bootstrap_ci(
    item_stats: Sequence[Any] | np.ndarray, statistic_fn: Statistic, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """The (1 - ``alpha``) percentile interval of ``statistic_fn`` over ``n`` resamples of the items.

    Deterministic in ``seed``. With no items the interval is the statistic of the empty set, twice.
    """
    _check(n, alpha)
    items = np.asarray(item_stats)
    if len(items) == 0:
        value = statistic_fn(items)
        return value, value
    idx = _resample_indices(len(items), n, seed)
    return _interval(np.array([statistic_fn(items[row]) for row in idx]), alpha)


def paired_bootstrap(
    a_items: Sequence[Any] | np.ndarray,
    b_items: Sequence[Any] | np.ndarray,
    statistic_fn: Statistic,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """The interval of ``statistic(a) - statistic(b)``, both systems resampled with the same indices.

    ``a_items[i]`` and ``b_items[i]`` must describe the same test item (paired design), which is
    what makes the interval narrower than comparing two separate intervals.
    """
    _check(n, alpha)
    a, b = np.asarray(a_items), np.asarray(b_items)
    if len(a) != len(b):
        raise ValueError(f"paired bootstrap needs the same items for both systems ({len(a)} != {len(b)})")
    if len(a) == 0:
        value = statistic_fn(a) - statistic_fn(b)
        return value, value
    idx = _resample_indices(len(a), n, seed)
    return _interval(np.array([statistic_fn(a[row]) - statistic_fn(b[row]) for row in idx]), alpha)
