"""Where new, unlabelled queries come from: a user's logs, held-out training pairs, generators.

Why this exists: every published method that moves a prompt's knowledge into weights (context
distillation, fixed-input parameterization, prompt baking, self-study) trains the student on many
*new* queries answered by a teacher that sees the prompt, not only on the labelled pairs. The users
who need internalization hold exactly such queries: their logs, without gold answers.

This module is the pure preparation of that query set, without a model: read the sources, drop
duplicates (after :func:`normalise`), and keep validation and test queries out. Leakage from a
source the user controls (a log file, a generator hook) is an error naming how many and where;
our own sources (held-out training pairs, the task's built-in generator) drop the colliding
queries and count them. It imports no torch.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .io import iter_jsonl
from .tasks.base import Instance, Task

BUILTIN_GENERATOR = "builtin"
HOOK_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TRAILING = " \t?.!"


@dataclass
class NewQueryArgs:
    """New queries for a teacher to answer (no gold answers needed)."""

    queries: str | None = field(default=None, metadata={"help": "JSONL of the user's own queries, one {'query'[, 'id']} a line, no answers."})
    from_train: int = field(default=0, metadata={"help": "For benchmarks: this many training pairs beyond the labelled data.train_size, answers dropped (never validation or test)."})
    generate: str | None = field(default=None, metadata={"help": "'builtin' (the task's own generator, e.g. GeoQuery's value swap) or a hook 'module:function'(labelled, n, seed) -> queries."})
    generate_n: int = field(default=0, metadata={"help": "How many queries the generator writes (before duplicates are removed)."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out sample and of the generator."})

    def validate(self) -> None:
        for name in ("from_train", "generate_n"):
            if getattr(self, name) < 0:
                raise ConfigError(f"new_queries.{name} must be >= 0, got {getattr(self, name)}")
        if self.generate is not None and self.generate != BUILTIN_GENERATOR and not HOOK_RE.match(self.generate):
            raise ConfigError(f"new_queries.generate must be 'builtin' or 'module:function', got {self.generate!r}")
        if (self.generate is None) != (self.generate_n == 0):
            raise ConfigError("new_queries.generate and new_queries.generate_n go together: set both or neither")

    @property
    def enabled(self) -> bool:
        return bool(self.queries or self.from_train or self.generate)


@dataclass(frozen=True)
class NewQuery:
    """One query without an answer, and the source it came from (``logs``, ``from_train``, ``generate``)."""

    id: str
    query: str
    source: str


@dataclass
class NewQuerySet:
    """The kept queries and, per source, how many were found, duplicated, or dropped as leaking."""

    queries: list[NewQuery]
    counts: dict[str, dict[str, int]]


def normalise(text: str) -> str:
    """Case-folded, whitespace-collapsed text without trailing punctuation: what "the same query" means."""
    return " ".join(text.casefold().split()).rstrip(_TRAILING)


def read_query_log(path: str | os.PathLike[str]) -> list[NewQuery]:
    """The queries of a user's log file; malformed lines, empty queries and repeated ids are one-line errors."""
    out: list[NewQuery] = []
    seen: set[str] = set()
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a directory; expected a JSONL file of queries")
    for n, obj in enumerate(iter_jsonl(p, required=("query",)), start=1):
        query = obj["query"]
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{p}: record {n}: 'query' must be a non-empty string")
        qid = str(obj.get("id", f"log-{n}"))
        if qid in seen:
            raise DataError(f"{p}: record {n}: id {qid!r} appears twice")
        seen.add(qid)
        out.append(NewQuery(qid, query.strip(), "logs"))
    if not out:
        raise DataError(f"{p}: holds no queries")
    return out


def held_out_train(train: Sequence[Instance], labelled: Sequence[Instance], n: int, seed: int) -> list[NewQuery]:
    """``n`` training pairs that are not labelled ones (seeded sample), answers dropped."""
    used = {i.id for i in labelled}
    pool = [i for i in train if i.id not in used]
    if n > len(pool):
        raise ConfigError(f"new_queries.from_train={n}, but only {len(pool)} training pairs lie beyond the labelled ones")
    return [NewQuery(i.id, i.query, "from_train") for i in random.Random(seed).sample(pool, n)]


def load_hook(ref: str) -> Callable[..., Any]:
    """The generator named by ``module:function`` (import problems are one line)."""
    from .evaluate.metrics import load_metric

    try:
        return load_metric(ref, source="new_queries.generate")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("metric", "generator")) from exc


def generated(
    task: Task, spec: str, labelled: Sequence[Instance], n: int, seed: int, data_dir: str | None
) -> list[NewQuery]:
    """``n`` queries written from the labelled ones by the task's generator or a user hook."""
    if spec == BUILTIN_GENERATOR:
        texts = task.generate_queries(list(labelled), n, seed, data_dir)
    else:
        fn = load_hook(spec)
        try:
            texts = list(fn(list(labelled), n, seed))
        except Exception as exc:  # the user's hook failed: one line, nothing written
            raise DataError(f"new_queries.generate {spec!r} raised {type(exc).__name__}: {exc}") from exc
    out = []
    for k, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"new_queries.generate {spec!r}: item {k} is not a non-empty string")
        out.append(NewQuery(f"gen-{k}", text.strip(), "generate"))
    return out


def leaking(queries: Iterable[NewQuery], held_out: dict[str, Sequence[Instance]]) -> dict[str, list[NewQuery]]:
    """Per held-out split, the queries equal (after :func:`normalise`) to one of its queries."""
    index = {split: {normalise(i.query) for i in items} for split, items in held_out.items()}
    hits: dict[str, list[NewQuery]] = {}
    for q in queries:
        for split, texts in index.items():
            if normalise(q.query) in texts:
                hits.setdefault(split, []).append(q)
    return hits


def refuse_leakage(queries: Sequence[NewQuery], held_out: dict[str, Sequence[Instance]], where: str) -> None:
    """A one-line error when any query of a user-controlled source equals a validation or test query."""
    hits = leaking(queries, held_out)
    if hits:
        total = len({q.id for qs in hits.values() for q in qs})
        parts = ", ".join(f"{len(qs)} in {split} (first: {qs[0].id} {qs[0].query!r})" for split, qs in hits.items())
        raise DataError(f"{where}: {total} of {len(queries)} queries equal held-out queries after normalisation: "
                        f"{parts}; remove them")


def unique(queries: Iterable[NewQuery], seen: set[str]) -> tuple[list[NewQuery], int]:
    """The queries whose normalised text is not in ``seen`` (updated in place), and how many were dropped."""
    kept, dropped = [], 0
    for q in queries:
        key = normalise(q.query)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(q)
    return kept, dropped


def collect(
    args: NewQueryArgs,
    task: Task,
    train: Sequence[Instance],
    labelled: Sequence[Instance],
    held_out: dict[str, Sequence[Instance]],
    data_dir: str | None = None,
) -> NewQuerySet:
    """Every configured source, de-duplicated against each other and the labelled queries, leakage-free.

    Nothing is written here: a refusal leaves no file behind.
    """
    sources: list[tuple[str, list[NewQuery], bool]] = []  # (name, queries, user-controlled)
    if args.queries:
        sources.append(("logs", read_query_log(args.queries), True))
    if args.from_train:
        sources.append(("from_train", held_out_train(train, labelled, args.from_train, args.seed), False))
    if args.generate:
        user = args.generate != BUILTIN_GENERATOR
        sources.append(("generate", generated(task, args.generate, labelled, args.generate_n, args.seed, data_dir), user))
    seen = {normalise(i.query) for i in labelled}
    kept: list[NewQuery] = []
    ids: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, queries, user in sources:
        if user:
            refuse_leakage(queries, held_out, args.queries if name == "logs" else f"new_queries.generate {args.generate!r}")
            leaked: set[str] = set()
        else:
            leaked = {q.id for qs in leaking(queries, held_out).values() for q in qs}
        clean = [q for q in queries if q.id not in leaked]
        fresh, duplicates = unique(clean, seen)
        counts[name] = {"found": len(queries), "duplicates": duplicates, "leaking": len(leaked), "kept": len(fresh)}
        for q in fresh:
            if q.id in ids:
                raise DataError(f"new queries: id {q.id!r} is given by both {ids[q.id]} and {name}")
            ids[q.id] = name
        kept += fresh
    return NewQuerySet(kept, counts)


def write_queries(found: NewQuerySet, out: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the kept queries as JSONL ``{"id", "query", "source"}``, atomically; never over a file unless ``force``."""
    from .io import write_jsonl

    target = Path(out)
    if target.is_dir():
        raise DataError(f"{target}: is a directory; give a file path for the queries")
    if target.exists() and not force:
        raise DataError(f"{target} exists; choose another --out or pass --force to replace it")
    write_jsonl(target, ({"id": q.id, "query": q.query, "source": q.source} for q in found.queries))
    return target

