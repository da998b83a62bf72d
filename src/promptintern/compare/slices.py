"""Accuracy on the test items internalization should lift: the schema-unseen slice of SQL tasks.

Why: a model fine-tuned on the labelled pairs alone has never written a table or column that no
labelled SQL uses; only the prompt (the schema) or a teacher that saw it can teach those names. So
the items whose gold SQL names one are where a query-alone student must have internalized the
prompt, and where full-prompt FT should keep an edge over query-only FT. The slice is computed
from the gold SQL of the labelled training pairs and of the test items
(:func:`promptintern.evaluate.sql.schema_unseen`); accuracies and differences on it use the same
bootstrap over items and seeds as the whole test set. Tasks scored otherwise get no slice.
"""

from __future__ import annotations

from typing import Any

from .plan import REFERENCES, Plan
from .stats import accuracy


def schema_unseen_ids(plan: Plan) -> list[str] | None:
    """Ids of the test items whose gold SQL names a table or column no labelled pair's SQL names."""
    from ..evaluate.sql import databases_of, schema_names, schema_unseen
    from ..pipeline import load_data

    task, labelled, test = load_data(plan.base)
    if task.metric != "sql_execution":
        return None
    databases = sorted(set(databases_of(test)))
    if len(databases) != 1:
        return None  # one schema per task only; several databases would need a slice per database
    flags = schema_unseen([i.answer for i in test], [i.answer for i in labelled], schema_names(databases[0]))
    return [i.id for i, unseen in zip(test, flags, strict=True) if unseen]


def slices(plan: Plan, runs: dict[str, Any], scores: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """``{"schema_unseen": {"ids", "accuracy"}}`` for SQL tasks with finished runs; ``{}`` otherwise."""
    if not any(runs.values()):
        return {}
    ids = schema_unseen_ids(plan)
    if not ids:
        return {}
    keep = set(ids)
    sub = {m: {s: {i: v for i, v in per.items() if i in keep} for s, per in rs.items()} for m, rs in scores.items()}
    refs = [r for r in REFERENCES if r in plan.args.methods]
    return {"schema_unseen": {"ids": ids, "n_items": len(ids),
                              "accuracy": accuracy(sub, refs, plan.args.resamples, plan.args.bootstrap_seed)}}
