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
LM_GENERATOR = "lm"  # promptintern.query_writer
HOOK_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_TRAILING = " \t?.!"


@dataclass
class NewQueryArgs:
    """New queries for a teacher to answer (no gold answers needed)."""

    queries: str | None = field(default=None, metadata={"help": "JSONL of the user's own queries, one {'query'[, 'id']} a line, no answers."})
    from_train: int = field(default=0, metadata={"help": "For benchmarks: this many training pairs beyond the labelled data.train_size, answers dropped (never validation or test)."})
    generate: str | None = field(default=None, metadata={"help": "'builtin' (the task's own generator, e.g. GeoQuery's value swap), 'lm' (generate_model, shown the template and 5 labelled queries, writes each new one) or a hook 'module:function'(labelled, n, seed) -> queries."})
    generate_model: str = field(default="smollm2-135m", metadata={"help": "The local causal LM of generate: 'lm' (alias, directory or hub id)."})
    generate_n: int = field(default=0, metadata={"help": "How many queries the generator writes (before duplicates are removed)."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out sample and of the generator."})

    def validate(self) -> None:
        for name in ("from_train", "generate_n"):
            if getattr(self, name) < 0:
                raise ConfigError(f"new_queries.{name} must be >= 0, got {getattr(self, name)}")
        if self.generate not in (None, BUILTIN_GENERATOR, LM_GENERATOR) and not HOOK_RE.match(self.generate):
            raise ConfigError(f"new_queries.generate must be 'builtin', 'lm' or 'module:function', got {self.generate!r}")
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


def held_out_splits(task: Task, data_dir: str | None) -> dict[str, list[Instance]]:
    """The task's whole test and validation splits: what no new query may equal (not only the
    run's samples of them: the next run on the same data may score any of them)."""
    held = {"test": task.load_split("test", data_dir)}
    if task.has_split("validation"):
        held["validation"] = task.load_split("validation", data_dir)
    return held


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
        qid = str(obj.get("id", n - 1))  # as `promptintern infer` names a query without an id
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


def load_hook(ref: str, source: str = "new_queries.generate", kind: str = "generator") -> Callable[..., Any]:
    """The user's function named by ``module:function`` (import problems are one line)."""
    from .evaluate.metrics import load_metric

    return load_metric(ref, source=source, kind=kind)


def generated(
    task: Task, spec: str, labelled: Sequence[Instance], n: int, seed: int, data_dir: str | None,
    model: str = "smollm2-135m",
) -> list[NewQuery]:
    """``n`` queries written from the labelled ones by the task's generator, a local LM or a user hook."""
    if spec == BUILTIN_GENERATOR:
        texts = task.generate_queries(list(labelled), n, seed, data_dir)
    elif spec == LM_GENERATOR:
        from .query_writer import lm_queries

        texts = lm_queries(task.template, labelled, n, seed, model)
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
        user = args.generate not in (BUILTIN_GENERATOR, LM_GENERATOR)  # a hook's are checked like logs
        sources.append(("generate", generated(task, args.generate, labelled, args.generate_n, args.seed, data_dir,
                                              args.generate_model), user))
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



# ---------------------------------------------------------------- the teacher's answers and their check


AnswerCheck = Callable[[str, str], "str | None"]  # (query, answer) -> why it is rejected, or None


def sql_check(database: str | os.PathLike[str]) -> AnswerCheck:
    """Keep an SQL answer only when it runs read-only on ``database`` and returns at least one row."""
    from .evaluate.sql import QueryError, open_readonly, prediction_sql, run_query

    con = open_readonly(database)

    def check(_query: str, answer: str) -> str | None:
        try:
            rows = run_query(con, prediction_sql(answer))
        except QueryError:
            return "sql_error"
        return None if rows else "sql_no_rows"

    return check


def hook_check(ref: str) -> AnswerCheck:
    """A user's ``module:function(query, answer) -> bool`` as a check; its exceptions are one line."""
    fn = load_hook(ref, source="--check", kind="answer check")

    def check(query: str, answer: str) -> str | None:
        try:
            return None if fn(query, answer) else "hook"
        except Exception as exc:  # the user's check failed: one line, nothing written
            raise DataError(f"answer check {ref!r} raised {type(exc).__name__}: {exc}") from exc

    return check


def task_check(task: Task, data_dir: str | None, hook: str | None) -> AnswerCheck | None:
    """The check for ``task``'s answers: the hook when given, else SQL execution for SQL tasks, else none."""
    if hook:
        return hook_check(hook)
    if task.metric != "sql_execution":
        return None
    from .evaluate.sql import databases_of

    databases = sorted(set(databases_of(task.load_split("train", data_dir))))
    if len(databases) != 1:
        raise DataError(f"task {task.name}: the SQL check needs one database, found {len(databases)}; "
                        "give an answer check hook 'module:function' instead")
    return sql_check(databases[0])


def filter_answers(
    rows: Sequence[dict[str, Any]], queries: dict[str, str], max_new_tokens: int, check: AnswerCheck | None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The teacher's answers worth learning from, and how many each test rejected.

    An answer that ran to ``max_new_tokens`` did not end by itself (a runaway, not an answer); an
    empty one says nothing; then the task's check. Counts: ``answered``, one per rejection, ``kept``.
    """
    counts = {"answered": len(rows), "empty": 0, "hit_cap": 0, "kept": 0}
    kept = []
    for row in rows:
        answer = str(row.get("prediction") or "").strip()
        reason = ("empty" if not answer else "hit_cap" if int(row["output_tokens"]) >= max_new_tokens
                  else check(queries[str(row["id"])], answer) if check else None)
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
            continue
        kept.append({"id": str(row["id"]), "query": queries[str(row["id"])], "answer": answer})
    counts["kept"] = len(kept)
    return kept, counts


def distinct_answers(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows with each query's repeated answers (same text after stripping) kept once, and how many went."""
    seen: set[tuple[str, str]] = set()
    out = []
    for row in rows:
        key = (row["query"], row["answer"].strip())
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)


def label_queries(
    teacher_run: Path, queries_path: Path, out: Path, *, check: str | None = None, force: bool = False,
    batch_size: int | None = None, max_new_tokens: int | None = None, samples: int = 1, temperature: float = 0.0,
) -> dict[str, int]:
    """The teacher run answers each query with its own (full) prompt; the checked answers go to ``out``.

    The teacher's raw answers are cached beside ``out`` (``<out>.teacher.jsonl``, keyed in
    ``<out>.teacher.json`` by the teacher's identity, the queries file's content, the length cap and
    the sampling): an interrupted labelling resumes, and a rerun with another check answers nothing
    again. Greedy by default; with ``samples`` > 1 at ``temperature`` > 0 each query is answered that
    many times (ids ``<id>~<k>``), and a query's repeated answers are kept once. Each kept row is
    ``{"id", "query", "answer", "source": "teacher", "teacher": <identity>}``, the format of a task's
    training file, so a task spec can train a student on it.
    """
    from .config import load_config
    from .identity import adapter_identity, file_digest
    from .io import read_json, write_json, write_jsonl
    from .pipeline import infer_file, load_data

    teacher_run, out = Path(teacher_run), Path(out)
    if samples < 1 or temperature < 0 or (samples > 1 and temperature == 0):
        raise ConfigError(f"--samples {samples} at --temperature {temperature:g}: several answers per query need a "
                          "temperature > 0 (greedy answers would repeat)")
    if out.exists() and not force:
        raise DataError(f"{out} exists; choose another --out or pass --force to replace it")
    if not (teacher_run / "config.yaml").is_file():
        raise DataError(f"{teacher_run} is not a promptintern run directory (no config.yaml)")
    queries = {q.id: q.query for q in read_query_log(queries_path)}
    cfg = load_config(str(teacher_run / "config.yaml"))
    task, _, _ = load_data(cfg)
    answer_check = task_check(task, cfg.data_dir, check)  # fails before any model work
    adapter = teacher_run / "adapter"
    teacher = adapter_identity(adapter) if adapter.is_dir() else cfg.model
    raw, meta = out.with_name(out.name + ".teacher.jsonl"), out.with_name(out.name + ".teacher.json")
    key = {"teacher": teacher, "queries": file_digest(Path(queries_path)), "max_new_tokens": max_new_tokens}
    if samples > 1 or temperature > 0:
        key.update(samples=samples, temperature=temperature)
    asked = Path(queries_path)
    if samples > 1:  # each query that many times: the rows the teacher answers
        queries = {f"{i}~{k}": q for i, q in queries.items() for k in range(samples)}
        asked = out.with_name(out.name + ".asked.jsonl")
        write_jsonl(asked, ({"id": i, "query": q} for i, q in queries.items()))
    cached = read_json(meta) if meta.is_file() and raw.is_file() else None
    if cached is None or cached.get("key") != key:
        meta.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
        # Every query shares the teacher's template: its KV cache is built once and each batch served
        # from copies of it (labelling is offline work; the cache changes no greedy answer).
        stats = infer_file(teacher_run, asked, raw, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           temperature=temperature, prefix_cache=True)
        cached = {"key": key, "max_new_tokens": int(stats["max_new_tokens"]), "batch_size": int(stats["batch_size"]),
                  "prefix_tokens": int(stats["prefix_tokens"])}
        write_json(meta, cached)
    rows = list(iter_jsonl(raw, required=("id", "prediction", "output_tokens")))
    kept, counts = filter_answers(rows, queries, cached["max_new_tokens"], answer_check)
    if samples > 1:
        kept, counts["repeated"] = distinct_answers(kept)
        counts["kept"] = len(kept)
    write_jsonl(out, ({**r, "source": "teacher", "teacher": teacher} for r in kept))
    return counts
