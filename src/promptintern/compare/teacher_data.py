"""The data of the ``+teacher`` methods: new queries, answered by full-prompt FT of the same seed.

Why compare builds it: the question the ``+teacher`` rows answer is whether a teacher that sees
the prompt, answering queries nobody labelled, moves the prompt's knowledge into a query-alone
student. The teacher is the comparison's own full-prompt FT (trained once: reference, PromptIntern's
stage 0 and teacher), so the queries are collected once and each seed's teacher labels them once
(:mod:`promptintern.teacher_data`)::

    OUT/teacher-data/queries.jsonl            the new queries (every seed's teacher answers the same ones)
    OUT/teacher-data/queries.json             the sources' settings and counts
    OUT/teacher-data/seed-N/answers.jsonl     full-prompt FT seed N's answers that passed the check
    OUT/teacher-data/seed-N/answers.json      answered / rejected / kept, and what labelling cost
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import read_json
from ..teacher_data import ANSWERS, QUERIES, collect_into, label_into

DIR = "teacher-data"


def answers_path(out: Path, seed: int) -> Path:
    return out / DIR / f"seed-{seed}" / ANSWERS


def ready(out: Path, seed: int) -> bool:
    """Whether seed ``seed``'s teacher answers are labelled and checked (their summary is written last)."""
    path = answers_path(out, seed)
    return path.is_file() and path.with_suffix(".json").is_file()


def label_seed(plan: Any, seed: int, teacher_run: Path, log: Callable[[str], None]) -> Path:
    """Seed ``seed``'s teacher answers (labelled once; an interrupted labelling resumes)."""
    from ..pipeline import load_data

    args = plan.args.teacher_data
    task, labelled, _ = load_data(plan.base)
    queries = collect_into(args, task, labelled, plan.base.data_dir, plan.out / DIR, log)
    return label_into(args, teacher_run, queries, answers_path(plan.out, seed), lambda m: log(f"seed {seed}: {m}"))


def summary(out: Path, seeds: list[int]) -> dict[str, Any] | None:
    """What the teacher data held per seed (counts and labelling cost), for results.json."""
    meta = out / DIR / Path(QUERIES).with_suffix(".json")
    if not meta.is_file():
        return None
    per_seed = {str(s): read_json(answers_path(out, s).with_suffix(".json")) for s in seeds if ready(out, s)}
    return {**read_json(meta), "seeds": per_seed}
