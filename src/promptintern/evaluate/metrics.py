"""The metrics a task may name: the built-ins, or a user's own ``module:function``.

A user metric is any callable ``fn(predictions, references)`` over two equal-length lists of
strings (a missing prediction is ``""``) that returns the per-item scores and the corpus score,
either as a pair ``(per_item, corpus)`` or as a mapping ``{"per_item": [...], "score": x}``.
Scores are reported as returned (the built-ins use percent). Its bootstrap interval resamples
test items: when the corpus score is the mean of the per-item scores that mean is resampled,
otherwise the function is called once per resample on the resampled lists (so a corpus-level
score such as BLEU gets a correct interval, at the cost of ``bootstrap`` calls).

The module is imported normally (installed, or on ``PYTHONPATH``); failing that, from a file
``<module path>.py`` next to the task spec, so a ``metrics.py`` beside ``task.yaml`` works as
``metric: metrics:score``. Such a module is registered in ``sys.modules`` under its name, which is
how scoring later finds it again by name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .bootstrap import bootstrap_ci

BUILTIN_METRICS = ("bleu", "exact_match", "pass@1", "sql_execution")
CUSTOM_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
MetricFn = Callable[[list[str], list[str]], Any]


def is_custom(name: str) -> bool:
    """Whether ``name`` names a user function (``module:function``) rather than a built-in."""
    return ":" in name


def check_metric_name(name: str, source: str) -> None:
    """A built-in name or a well-formed ``module:function``; else a one-line :class:`ConfigError`."""
    if name in BUILTIN_METRICS or CUSTOM_RE.match(name):
        return
    close = difflib.get_close_matches(name, BUILTIN_METRICS, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"{source}: unknown metric {name!r}{hint}; choose one of {', '.join(BUILTIN_METRICS)} or 'module:function'"
    )


def load_metric(ref: str, search_dir: str | Path | None = None, source: str = "task spec",
                kind: str = "metric") -> MetricFn:
    """The callable named by ``module:function``; import problems are one-line :class:`ConfigError`.

    ``kind`` names what the user's function is for in those messages (a metric, a query generator…).
    """
    module_name, _, func_name = ref.partition(":")
    module = _import(module_name, search_dir, f"{source}: {kind} {ref!r}")
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ConfigError(f"{source}: {kind} {ref!r}: module {module_name!r} has no attribute {func_name!r}")
    if not callable(fn):
        raise ConfigError(f"{source}: {kind} {ref!r}: {func_name!r} is a {type(fn).__name__}, not a function")
    return fn


def _import(name: str, search_dir: str | Path | None, where: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"{where}: importing {name!r} failed: {exc}") from exc
        missing = exc
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"{where}: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
    path = Path(search_dir or ".") / (name.replace(".", "/") + ".py")
    if not path.is_file():
        raise ConfigError(f"{where}: no module {name!r} ({missing}; no {path} either)") from missing
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{where}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def call_metric(fn: MetricFn, ref: str, predictions: list[str], references: list[str]) -> tuple[np.ndarray, float]:
    """Run a user metric and check what it returned: (per-item scores as floats, corpus score)."""
    try:
        result = fn(list(predictions), list(references))
    except Exception as exc:
        raise ConfigError(f"metric {ref!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(result, Mapping):
        if "per_item" not in result or "score" not in result:
            raise ConfigError(f"metric {ref!r} returned a mapping without 'per_item' and 'score'")
        per_item, corpus = result["per_item"], result["score"]
    elif isinstance(result, Sequence) and not isinstance(result, str) and len(result) == 2:
        per_item, corpus = result
    else:
        raise ConfigError(f"metric {ref!r} must return (per_item, score) or {{'per_item': ..., 'score': ...}}, "
                          f"got {type(result).__name__}")
    try:
        items = np.asarray([float(x) for x in per_item], dtype=float)
        total = float(corpus)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metric {ref!r}: scores must be numbers ({exc})") from exc
    if len(items) != len(predictions):
        raise ConfigError(f"metric {ref!r} returned {len(items)} per-item scores for {len(predictions)} predictions")
    if not (np.isfinite(items).all() and math.isfinite(total)):
        raise ConfigError(f"metric {ref!r} returned a score that is NaN or infinite")
    return items, total


def score_custom(fn: MetricFn, ref: str, predictions: list[str | None], references: list[str],
                 bootstrap: int, seed: int) -> dict[str, Any]:
    """``metrics``, ``ci95`` and ``per_item`` (a list of ``{ref: score}``) of a user metric."""
    preds = [p if p is not None else "" for p in predictions]
    items, total = call_metric(fn, ref, preds, references)
    ci = None
    if bootstrap > 0 and len(items):
        if math.isclose(total, float(items.mean()), rel_tol=1e-9, abs_tol=1e-9):
            lo, hi = bootstrap_ci(items, lambda x: float(np.mean(x)), n=bootstrap, seed=seed)
        else:
            def resampled(idx: np.ndarray) -> float:
                return call_metric(fn, ref, [preds[i] for i in idx], [references[i] for i in idx])[1]

            lo, hi = bootstrap_ci(np.arange(len(items)), resampled, n=bootstrap, seed=seed)
        ci = [lo, hi]
    return {"metrics": {ref: total}, "ci95": {ref: ci}, "per_item": [{ref: float(x)} for x in items],
            "corpus_is_item_mean": math.isclose(total, float(items.mean()) if len(items) else total, abs_tol=1e-9)}
