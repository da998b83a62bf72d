"""New queries answered by a teacher run, as one step of a run or a comparison (``teacher_data:``).

Why a step of its own: ``promptintern queries`` and ``promptintern label`` are the two halves a user
can run by hand; a run config with a ``teacher_data`` section (and compare's ``+teacher`` methods)
does both, once, keeping every intermediate on disk so an interrupted step resumes and a rerun
repeats nothing::

    DIR/queries.jsonl                 the new queries (:func:`promptintern.new_queries.collect`)
    DIR/queries.json                  the sources' settings and counts (found, duplicates, leaking, kept)
    DIR/answers.jsonl                 the teacher's answers that passed the check (:func:`label_queries`)
    DIR/answers.jsonl.teacher.jsonl   the teacher's raw answers (the labelling cache)
    DIR/answers.json                  answered / rejected / kept, and what labelling cost

Labelling is training cost of the student: its generation seconds (the batches' latencies summed)
and its input and output tokens are kept in ``answers.json``. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .io import iter_jsonl, read_json, write_json
from .new_queries import NewQueryArgs, collect, held_out_splits, label_queries, write_queries
from .tasks.base import Instance, Task

QUERIES, ANSWERS = "queries.jsonl", "answers.jsonl"


@dataclass
class TeacherDataArgs(NewQueryArgs):
    """New queries (the sources of :class:`NewQueryArgs`), the teacher run that answers them, and how
    its answers are checked."""

    teacher: str | None = field(default=None, metadata={"help": "The promptintern run directory whose model answers the new queries with its own prompt (e.g. a full-prompt FT run); its adapter is also the KL teacher unless train.teacher names another. In compare leave it null: the teacher is the comparison's full-prompt FT of the same seed."})
    check: str | None = field(default=None, metadata={"help": "Answer check hook 'module:function'(query, answer) -> bool; null = the task's own (SQL tasks: runs read-only and returns a row)."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "The teacher's answer-length cap; an answer that reaches it is dropped as a runaway. null = the teacher run's infer.max_new_tokens."})
    samples: int = field(default=1, metadata={"help": "Answers per query (> 1 needs temperature > 0); a query's repeated answers are kept once."})
    temperature: float = field(default=0.0, metadata={"help": "0 = the teacher answers greedily; > 0 samples at this temperature."})

    def validate(self) -> None:
        super().validate()
        if self.samples < 1 or self.temperature < 0 or (self.samples > 1 and self.temperature == 0):
            raise ConfigError(f"teacher_data.samples={self.samples} at temperature {self.temperature:g}: several "
                              "answers per query need a temperature > 0")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"teacher_data.max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")
        if self.teacher is not None and not (Path(self.teacher).expanduser() / "config.yaml").is_file():
            raise ConfigError(f"teacher_data.teacher: {self.teacher!r} is not a promptintern run directory "
                              "(no config.yaml); train the teacher first")

    def sources(self) -> NewQueryArgs:
        """The query sources alone (what decides which queries are collected)."""
        return NewQueryArgs(**{f.name: getattr(self, f.name) for f in fields(NewQueryArgs)})


def collect_into(args: TeacherDataArgs, task: Task, labelled: Sequence[Instance], data_dir: str | None, where: Path,
                 log: Callable[[str], None]) -> Path:
    """``where/queries.jsonl``: new queries of ``task`` beyond the ``labelled`` pairs (kept while the
    sources' settings and the labelled pairs are the same)."""
    path, meta = where / QUERIES, where / "queries.json"
    settings = {**asdict(args.sources()), "labelled": sorted(i.id for i in labelled)}
    if path.is_file() and meta.is_file() and read_json(meta).get("settings") == settings:
        return path
    found = collect(args.sources(), task, task.load_split("train", data_dir), labelled,
                    held_out_splits(task, data_dir), data_dir)
    if not found.queries:
        raise DataError("teacher_data: the sources gave no new query")
    where.mkdir(parents=True, exist_ok=True)
    write_queries(found, path, force=True)
    write_json(meta, {"settings": settings, "counts": found.counts, "n": len(found.queries)})
    for source, c in found.counts.items():
        log(f"new queries, {source}: {c['found']} found, {c['duplicates']} duplicates, {c['leaking']} equal to "
            f"held-out queries (dropped), {c['kept']} kept")
    return path


def label_into(args: TeacherDataArgs, teacher_run: Path, queries: Path, out: Path, log: Callable[[str], None]
               ) -> Path:
    """``out``: ``teacher_run``'s checked answers to ``queries``, with ``answers.json`` beside it (counts,
    cost) written last; kept when that summary exists. No kept answer is a one-line error."""
    summary = out.with_suffix(".json")
    if out.is_file() and summary.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"teacher {teacher_run} answers the new queries of {queries} with its own prompt")
    counts = label_queries(teacher_run, queries, out, check=args.check, force=True, max_new_tokens=args.max_new_tokens,
                           samples=args.samples, temperature=args.temperature)
    rejected = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("answered", "kept") and v)
    if not counts["kept"]:
        raise DataError(f"teacher {teacher_run}: none of its {counts['answered']} answers passed the filter "
                        f"({rejected}); its raw answers are in {out}.teacher.jsonl")
    rows = list(iter_jsonl(out.with_name(out.name + ".teacher.jsonl"), required=("id", "latency_s")))
    batch = int(read_json(out.with_name(out.name + ".teacher.json")).get("batch_size", 1))
    write_json(summary, {"counts": counts, "cost": labelling_cost(rows, batch)})
    log(f"teacher answered {counts['answered']}, kept {counts['kept']}" + (f" (rejected: {rejected})" if rejected
                                                                          else "") + f" → {out}")
    return out


def labelling_cost(rows: list[dict[str, Any]], batch_size: int) -> dict[str, float]:
    """Tokens and generation seconds of one labelling (``rows``: the teacher's raw answers).

    A batch's rows all carry the batch's latency, so the seconds are the latencies summed and
    divided by the batch size the teacher ran at (exact for full batches; the last one is counted
    by its share).
    """
    return {"queries": len(rows),
            "input_tokens": float(sum(int(r.get("input_tokens", 0)) for r in rows)),
            "output_tokens": float(sum(int(r.get("output_tokens", 0)) for r in rows)),
            "wall_s": sum(float(r["latency_s"]) for r in rows) / max(1, batch_size)}


def for_run(cfg: Any, run_dir: Path, task: Task, labelled: Sequence[Instance], log: Callable[[str], None]) -> Any:
    """``cfg`` (a run config) with its ``teacher_data`` run's checked answers to the new queries
    (labelled now into ``run_dir/teacher-data`` if needed) as ``data.teacher_answers``; ``cfg`` itself
    when it has no sources."""
    from dataclasses import replace

    args: TeacherDataArgs = cfg.teacher_data
    if not args.enabled:
        return cfg
    where = run_dir / "teacher-data"
    queries = collect_into(args, task, labelled, cfg.data_dir, where, log)
    answers = label_into(args, Path(args.teacher), queries, where / ANSWERS, log)
    return replace(cfg, data=replace(cfg.data, teacher_answers=str(answers)))
