"""The teacher's answers as training records of the student (``data.teacher_answers``).

Why this exists: the labelled pairs alone have not taught the query-alone student what the prompt
carries; a teacher that sees the prompt answering many new queries (``promptintern label``) is how
every published prompt-internalization method gets there. This module turns the rows ``label``
writes (``{"id", "query", "answer", ...}``) into records of the chosen stages, each in that stage's
own prompt, while keeping them out of everything that must stay gold: the retrieval pool (the
examples in a prompt are labelled pairs) and the validation sample (scored against gold answers).

The rows are checked before a run writes anything: a malformed file, a row whose query equals a
validation or test query (after :func:`promptintern.new_queries.normalise`), and an id that is
also a labelled pair's id are one-line errors. Everything here but :func:`teacher_neighbours`
is pure and imports no torch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import DataError
from .io import iter_jsonl
from .new_queries import NewQuery, held_out_splits, refuse_leakage
from .prompt import Template
from .stages import Stage, build_stages
from .tasks.base import Instance, Task

TEACHER_STAGES = ("last", "all")
INPUT_KEY = "teacher_answers"  # its name among a run's recorded inputs (run.json)


def read_teacher_answers(path: str | os.PathLike[str]) -> list[Instance]:
    """The rows of a ``promptintern label`` output as instances (the answer is the teacher's text).

    Malformed JSON, missing fields, empty or non-string queries and answers, repeated ids and an
    empty file are one-line errors naming the file and the record.
    """
    p = Path(path)
    out: list[Instance] = []
    seen: set[str] = set()
    for n, obj in enumerate(iter_jsonl(p, required=("id", "query", "answer")), start=1):
        for name in ("query", "answer"):
            if not isinstance(obj[name], str) or not obj[name].strip():
                raise DataError(f"{p}: record {n}: {name!r} must be a non-empty string")
        qid = str(obj["id"])
        if qid in seen:
            raise DataError(f"{p}: record {n}: id {qid!r} appears twice")
        seen.add(qid)
        out.append(Instance(id=qid, query=obj["query"].strip(), answer=obj["answer"]))
    if not out:
        raise DataError(f"{p}: holds no teacher answers")
    return out


def check_teacher_rows(
    rows: Sequence[Instance], labelled: Sequence[Instance], held_out: Mapping[str, Sequence[Instance]], where: str
) -> None:
    """Refuse rows whose query is a held-out query (leakage) or whose id is a labelled pair's id."""
    refuse_leakage([NewQuery(r.id, r.query, "teacher") for r in rows], dict(held_out), where)
    labelled_ids = {i.id for i in labelled}
    clash = [r.id for r in rows if r.id in labelled_ids]
    if clash:
        raise DataError(f"{where}: {len(clash)} teacher answer id(s) are also labelled training ids "
                        f"(first: {clash[0]!r}); give the teacher's rows their own ids")


def load_teacher_rows(path: str | None, task: Task, labelled: Sequence[Instance], data_dir: str | None) -> list[Instance]:
    """The checked teacher rows of a run (``[]`` without ``data.teacher_answers``).

    Held out are the task's whole validation and test splits, not the run's samples of them: a
    query the run does not score today may be scored by the next run on the same data.
    """
    if not path:
        return []
    rows = read_teacher_answers(path)
    check_teacher_rows(rows, labelled, held_out_splits(task, data_dir), f"data.teacher_answers {path}")
    return rows


def teacher_input(path: str | None) -> dict[str, Any]:
    """The file's entry among a run's recorded inputs (see :mod:`promptintern.run_guard`): its
    content hash, so a changed file is refused on ``--resume``; ``{}`` without one."""
    if not path:
        return {}
    from .checksums import file_sha256

    return {INPUT_KEY: {"sha256": file_sha256(Path(path)), "source": f"data.teacher_answers {path}"}}


def mix(rows: Sequence[Instance], n_labelled: int, per_pair: float | None, seed: int) -> list[Instance]:
    """At most ``per_pair`` teacher rows per labelled pair: a seeded sample, in the file's order."""
    if per_pair is None or len(rows) <= per_pair * n_labelled:
        return list(rows)
    keep = set(random.Random(seed).sample(range(len(rows)), int(per_pair * n_labelled)))
    return [r for i, r in enumerate(rows) if i in keep]


def chosen_stages(n_stages: int, which: str) -> list[int]:
    """Indices of the stages that train on the teacher's rows: the last one (query alone) or all."""
    return list(range(n_stages)) if which == "all" else [n_stages - 1]


def teacher_neighbours(retriever: Any, rows: Sequence[Instance], k: int) -> dict[str, list[Instance]]:
    """Ranked labelled examples for each teacher row, from the labelled pool (never from the rows)."""
    if retriever is None or k <= 0 or not rows:
        return {}
    from .retrieve import retrieve_all

    return retrieve_all(retriever, rows, k, same_pool=False)


def add_teacher_records(
    stages: Sequence[Stage],
    task: Task,
    rows: Sequence[Instance],
    which: str,
    template_at: Callable[[float], Template],
    neighbours: Mapping[str, Sequence[Instance]],
    teacher_point: Any = None,
) -> list[Stage]:
    """``stages`` with the teacher's rows appended to the chosen ones, each in that stage's prompt.

    The answer is the teacher's text as it wrote it (already in the task's answer format, so it is
    not rendered again); with ``teacher_point`` a row also carries the distillation teacher's
    prompt, so the KL losses compare the student with the teacher on the teacher's own answer.
    """
    if not rows:
        return list(stages)
    picked = [stages[i] for i in chosen_stages(len(stages), which)]
    built = build_stages(task, rows, picked, template_at, neighbours, "revisit", teacher_point=teacher_point)
    by_id = {s.index: s for s in built}
    answers = {r.id: r.answer for r in rows}
    out = []
    for s in stages:
        extra = by_id.get(s.index)
        if extra is None:
            out.append(s)
            continue
        records = [replace(rec, answer=answers[rec.id], from_teacher=True) for rec in extra.records]
        out.append(replace(s, records=[*s.records, *records]))
    return out
