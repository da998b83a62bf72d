"""The data of the ``+teacher`` methods: new queries, answered by full-prompt FT of the same seed.

Why compare builds it: the question the ``+teacher`` rows answer is whether a teacher that sees
the prompt, answering queries nobody labelled, moves the prompt's knowledge into a query-alone
student. The teacher is the comparison's own full-prompt FT (trained once: reference, PromptIntern's
stage 0 and teacher), so the queries are collected once and each seed's teacher labels them once,
with the library's own functions (:func:`promptintern.new_queries.collect`,
:func:`promptintern.new_queries.label_queries`), and every step is kept on disk::

    OUT/teacher-data/queries.jsonl            the new queries (every seed's teacher answers the same ones)
    OUT/teacher-data/queries.json             the sources' settings and counts (found, duplicates, leaking, kept)
    OUT/teacher-data/seed-N/answers.jsonl     full-prompt FT seed N's answers that passed the check
    OUT/teacher-data/seed-N/answers.json      answered / rejected / kept, and what labelling cost

Labelling is part of the ``+teacher`` methods' training cost: its generation seconds (the sum of
the batches' latencies) and its input and output tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..io import read_json, write_json
from ..new_queries import NewQueryArgs

DIR = "teacher-data"


@dataclass
class TeacherDataArgs:
    """New queries for the ``+teacher`` methods and how their teacher's answers are checked."""

    queries: str | None = field(default=None, metadata={"help": "JSONL of your own queries (one {'query'[, 'id']} a line, no answers)."})
    from_train: int = field(default=0, metadata={"help": "Training pairs beyond the labelled run.data.train_size, answers dropped (benchmarks)."})
    generate: str | None = field(default=None, metadata={"help": "'builtin' (the task's generator, e.g. GeoQuery's value swap) or a hook 'module:function'(labelled, n, seed) -> queries."})
    generate_n: int = field(default=0, metadata={"help": "Queries the generator writes (before duplicates are removed)."})
    seed: int = field(default=0, metadata={"help": "Seed of the held-out sample and the generator (the same queries for every training seed)."})
    check: str | None = field(default=None, metadata={"help": "Answer check hook 'module:function'(query, answer) -> reason or None; null = the task's own (SQL tasks: runs read-only and returns a row)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "The teacher's answer-length cap; an answer that reaches it is dropped as a runaway. null = the teacher run's infer.max_new_tokens."})

    def validate(self) -> None:
        self.sources().validate()
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"compare.teacher_data.max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")

    def sources(self) -> NewQueryArgs:
        return NewQueryArgs(queries=self.queries, from_train=self.from_train, generate=self.generate,
                            generate_n=self.generate_n, seed=self.seed)

    @property
    def enabled(self) -> bool:
        return self.sources().enabled


def answers_path(out: Path, seed: int) -> Path:
    return out / DIR / f"seed-{seed}" / "answers.jsonl"


def ready(out: Path, seed: int) -> bool:
    """Whether seed ``seed``'s teacher answers are labelled and checked (their summary is written last)."""
    path = answers_path(out, seed)
    return path.is_file() and path.with_suffix(".json").is_file()


def collect_queries(plan: Any, log: Callable[[str], None]) -> Path:
    """The new queries of the comparison, collected once (kept while the sources' settings are the same)."""
    from ..new_queries import collect, held_out_splits, write_queries
    from ..pipeline import load_data

    args: TeacherDataArgs = plan.args.teacher_data
    path, meta = plan.out / DIR / "queries.jsonl", plan.out / DIR / "queries.json"
    settings = {**asdict(args.sources()), "labelled": plan.base.data.train_size, "data_seed": plan.base.data.seed}
    if path.is_file() and meta.is_file() and read_json(meta).get("settings") == settings:
        return path
    task, labelled, _ = load_data(plan.base)
    found = collect(args.sources(), task, task.load_split("train", plan.base.data_dir), labelled,
                    held_out_splits(task, plan.base.data_dir), plan.base.data_dir)
    if not found.queries:
        raise ConfigError("compare.teacher_data: the sources gave no new query")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_queries(found, path, force=True)
    write_json(meta, {"settings": settings, "counts": found.counts, "n": len(found.queries)})
    for source, c in found.counts.items():
        log(f"new queries, {source}: {c['found']} found, {c['duplicates']} duplicates, {c['leaking']} equal to "
            f"held-out queries (dropped), {c['kept']} kept")
    return path


def label_seed(plan: Any, seed: int, teacher_run: Path, log: Callable[[str], None]) -> Path:
    """Seed ``seed``'s teacher answers (labelled once; an interrupted labelling resumes)."""
    from ..io import iter_jsonl
    from ..new_queries import label_queries

    out = answers_path(plan.out, seed)
    if ready(plan.out, seed):
        return out
    args: TeacherDataArgs = plan.args.teacher_data
    queries = collect_queries(plan, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"teacher seed {seed}: full-prompt FT ({teacher_run}) answers {read_json(queries.with_suffix('.json'))['n']} "
        "new queries with its full prompt")
    counts = label_queries(teacher_run, queries, out, check=args.check, force=True,
                           max_new_tokens=args.max_new_tokens)
    rows = list(iter_jsonl(out.with_name(out.name + ".teacher.jsonl"), required=("id", "latency_s")))
    if not counts["kept"]:
        rejected = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("answered", "kept") and v)
        raise DataError(f"teacher seed {seed}: none of its {counts['answered']} answers passed the filter "
                        f"({rejected}); see {out.name}.teacher.jsonl beside {out}")
    write_json(out.with_suffix(".json"), {"counts": counts, "cost": labelling_cost(rows, teacher_run)})
    log(f"teacher seed {seed}: answered {counts['answered']}, kept {counts['kept']} → {out}")
    return out


def labelling_cost(rows: list[dict[str, Any]], teacher_run: Path) -> dict[str, float]:
    """Tokens and generation seconds of one labelling (rows: the teacher's raw answers).

    A batch's rows all carry the batch's latency, so the seconds are the latencies summed and
    divided by the batch size the teacher ran at (exact for full batches; the last one is
    counted by its share).
    """
    from ..config import load_config

    infer = load_config(str(teacher_run / "config.yaml")).infer
    batch = 1 if infer.prefix_cache else max(1, infer.batch_size)
    return {"queries": len(rows),
            "input_tokens": float(sum(int(r.get("input_tokens", 0)) for r in rows)),
            "output_tokens": float(sum(int(r.get("output_tokens", 0)) for r in rows)),
            "wall_s": sum(float(r["latency_s"]) for r in rows) / batch}


def summary(out: Path, seeds: list[int]) -> dict[str, Any] | None:
    """What the teacher data held per seed (counts and labelling cost), for results.json."""
    meta = out / DIR / "queries.json"
    if not meta.is_file():
        return None
    per_seed = {str(s): read_json(answers_path(out, s).with_suffix(".json")) for s in seeds if ready(out, s)}
    return {**read_json(meta), "seeds": per_seed}
