"""The generic query generator: a local causal LM, shown the task's template and a few labelled
queries, writes new queries of the same kind (``generate: lm``).

Why: a task without a structured generator (GeoQuery has its value swap) and without logs still has
a template and a handful of labelled queries; prompting any local model with them is how context
distillation and GenPI obtain new inputs. Each new query comes from its own prompt with a different
seeded sample of ``k`` labelled queries, answered greedily through the library's batched inference
(:func:`promptintern.inference.run_inference`), so the same seed writes the same queries; the first
non-empty line of each answer, stripped of list markers and quotes, is the query. Duplicates and
validation/test queries are removed afterwards like every other source's
(:func:`promptintern.new_queries.collect`).
"""

from __future__ import annotations

import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .prompt import Template
from .tasks.base import Instance

SHOWN = 5  # labelled queries shown in each prompt
_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)]|q(?:uestion)?\s*\d*\s*:)\s*", re.IGNORECASE)


def writer_messages(template: Template, shown: Sequence[str]) -> list[dict[str, str]]:
    """The prompt asking for one new query like ``shown``, with the task's template as its context."""
    context = "\n\n".join(part for part in (template.instruction, template.documentation) if part.strip())
    listed = "\n".join(f"- {q}" for q in shown)
    return [
        {"role": "system", "content": "You write new requests that users of the task below could send.\n\n" + context},
        {"role": "user", "content": f"Requests users sent:\n{listed}\n\nWrite one new request of the same kind, "
                                    "different from these. Reply with the request only, on one line."},
    ]


def first_query(text: str) -> str:
    """The query in a model's answer: its first non-empty line without list markers or quotes."""
    for line in text.splitlines():
        line = _MARKER.sub("", line).strip().strip("\"'`").strip()
        if line:
            return line
    return ""


def lm_queries(template: Template, labelled: Sequence[Instance], n: int, seed: int, model_name: str) -> list[str]:
    """``n`` queries written by ``model_name``, each from a seeded sample of the labelled queries
    (empty answers are dropped, so fewer may come back)."""
    from .args import InferArgs
    from .inference import run_inference
    from .io import iter_jsonl
    from .models import load_model

    rng = random.Random(seed)
    queries = [i.query for i in labelled]
    items = [(f"gen-{j}", writer_messages(template, rng.sample(queries, min(SHOWN, len(queries)))))
             for j in range(n)]
    model, tok = load_model(model_name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "written.jsonl"
        run_inference(model, tok, items, out, InferArgs(max_new_tokens=48, batch_size=8, progress=False),
                      resume=False)
        texts = [first_query(str(r["prediction"])) for r in iter_jsonl(out, required=("prediction",))]
    return [t for t in texts if t]
