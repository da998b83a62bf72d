"""Per-stage training sets: the prompt shrinks stage by stage until only the query is left.

Everything here is pure: the compressed templates (``template_at``) and the retrieved
neighbours (``neighbours``) are computed beforehand, so a stage dataset is a deterministic
function of its inputs and can be tested without a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .io import read_jsonl, write_jsonl
from .prompt import EMPTY_TEMPLATE, Example, Prompt, PromptFormat, Template, to_messages
from .tasks.base import Instance, Task

logger = logging.getLogger(__name__)

STAGE_MODES = ("revisit", "slice")


@dataclass(frozen=True)
class StageRecord:
    """One chat-formatted training instance: the prompt turns and the assistant answer.

    ``teacher_messages``: the prompt a distillation teacher sees for the same answer (the
    stage-0 prompt); None when the stage loss has no teacher. ``from_teacher``: the answer is a
    teacher's (``data.teacher_answers``), not gold, so the row is learned by
    ``train.teacher_rows_loss`` instead of ``train.loss``.
    """

    id: str
    messages: list[dict[str, str]]
    answer: str
    teacher_messages: list[dict[str, str]] | None = None
    from_teacher: bool = False


def record_row(rec: StageRecord) -> dict[str, Any]:
    """``rec`` as a JSON row; ``teacher_messages`` and ``from_teacher`` only when set (older rows and
    hashes unchanged)."""
    row = asdict(rec)
    if row["teacher_messages"] is None:
        del row["teacher_messages"]
    if not row["from_teacher"]:
        del row["from_teacher"]
    return row


@dataclass
class Stage:
    """The training set of one stage, built at template rate ``tau`` with ``k`` examples."""

    index: int
    tau: float
    k: int
    records: list[StageRecord]


def build_prompt(
    task: Task, query: str, template: Template, examples: Sequence[Instance], k: int
) -> Prompt:
    """A prompt with ``template`` and the first ``k`` of the (ranked) ``examples``."""
    shots = tuple(Example(e.query, e.answer) for e in examples[:k])
    return Prompt(template=template, query=query, examples=shots)


def build_record(
    task: Task, inst: Instance, template: Template, examples: Sequence[Instance], k: int
) -> StageRecord:
    """The training record of ``inst`` at one stage."""
    prompt = build_prompt(task, inst.query, template, examples, k)
    fmt: PromptFormat = task.format
    return StageRecord(id=inst.id, messages=to_messages(prompt, fmt), answer=fmt.render_answer(inst.answer))


def stage_instances(
    instances: Sequence[Instance], n_stages: int, index: int, mode: str, seed: int = 0
) -> list[Instance]:
    """The instances stage ``index`` trains on.

    ``revisit`` (the paper): every stage sees all instances. ``slice``: a seeded shuffle is
    cut into ``n_stages`` disjoint, near-equal slices, so total work stays that of one pass.
    """
    if mode == "revisit":
        return list(instances)
    if mode != "slice":
        raise ConfigError(f"unknown stage mode {mode!r}; choose one of {', '.join(STAGE_MODES)}")
    order = list(instances)
    random.Random(seed).shuffle(order)
    return order[index::n_stages]


def build_stages(
    task: Task,
    instances: Sequence[Instance],
    points: Sequence[Any],
    template_at: Callable[[float], Template],
    neighbours: Mapping[str, Sequence[Instance]],
    mode: str = "revisit",
    seed: int = 0,
    teacher_point: Any = None,
) -> list[Stage]:
    """One :class:`Stage` per schedule point (objects with ``index``, ``tau``, ``k``).

    ``template_at(tau)`` gives the template compressed to rate ``tau`` (``EMPTY_TEMPLATE`` at
    0); ``neighbours[id]`` are the ranked retrieved examples of each instance. With
    ``teacher_point`` (usually the schedule's stage 0), every record also carries the
    messages of its instance at that point, for a distillation teacher.
    """
    if not instances:
        raise ConfigError("no training instances: the training split is empty")
    teacher_template = None
    if teacher_point is not None:
        teacher_template = template_at(teacher_point.tau) if teacher_point.tau > 0 else EMPTY_TEMPLATE
    stages = []
    for p in points:
        template = template_at(p.tau) if p.tau > 0 else EMPTY_TEMPLATE
        chosen = stage_instances(instances, len(points), p.index, mode, seed)
        records = []
        for inst in chosen:
            shots = neighbours.get(inst.id, ())
            rec = build_record(task, inst, template, shots, p.k)
            if teacher_point is not None:
                teacher = build_record(task, inst, teacher_template, shots, teacher_point.k)
                rec = replace(rec, teacher_messages=teacher.messages)
            records.append(rec)
        stages.append(Stage(index=p.index, tau=p.tau, k=p.k, records=records))
    return stages


def validation_records(
    task: Task, instances: Sequence[Instance], stage: Stage, template: Template,
    neighbours: Mapping[str, Sequence[Instance]],
) -> list[StageRecord]:
    """The validation instances as records of ``stage``: the prompt it trains on (``template``, the
    one of its rate τ, and its k examples, retrieved from the training pool), the gold answer."""
    return [build_record(task, inst, template, neighbours.get(inst.id, ()), stage.k) for inst in instances]


def validation_builder(
    task: Task, instances: Sequence[Instance], stages: Sequence[Stage], retriever: Any,
    template_at: Callable[[float], Template],
) -> Callable[[Stage], list[StageRecord]] | None:
    """A stage's validation records on demand (:func:`validation_records`, the examples retrieved
    once, on first use), so a resumed run compresses only the rates of the stages it still trains."""
    if not instances:
        return None
    neighbours: dict[str, list[Instance]] = {}
    k_max = max(s.k for s in stages)

    def records(stage: Stage) -> list[StageRecord]:
        if k_max > 0 and retriever is not None and not neighbours:
            from .retrieve import retrieve_all

            neighbours.update(retrieve_all(retriever, instances, k_max, same_pool=False))
        return validation_records(task, instances, stage, template_at(stage.tau), neighbours)

    return records


def save_stages(stages: Sequence[Stage], directory: Path) -> dict[str, str]:
    """Write each stage as ``stage-{i}.jsonl`` (atomically); return their fingerprints."""
    prints = {}
    for s in stages:
        rows = [{"stage": s.index, "tau": s.tau, "k": s.k, **record_row(r)} for r in s.records]
        write_jsonl(directory / f"stage-{s.index}.jsonl", rows)
        prints[f"stage-{s.index}"] = fingerprint_rows(rows)
    return prints


def load_stages(directory: Path, n_stages: int, fingerprints: Mapping[str, str] | None = None) -> list[Stage] | None:
    """Stages saved by :func:`save_stages`, or None when any file is missing or, given the
    ``fingerprints`` :func:`save_stages` returned, any file's content no longer matches its own
    (an edited or damaged file is rebuilt, never trained on)."""
    stages = []
    for i in range(n_stages):
        path = directory / f"stage-{i}.jsonl"
        if not path.is_file():
            return None
        rows = read_jsonl(path)
        if fingerprints is not None and fingerprints.get(f"stage-{i}") != fingerprint_rows(rows):
            logger.warning("%s does not match its fingerprint in fingerprints.json (edited or damaged); "
                           "rebuilding the stage files from the config", path)
            return None
        records = [StageRecord(r["id"], r["messages"], r["answer"], r.get("teacher_messages"),
                               bool(r.get("from_teacher", False))) for r in rows]
        tau, k = (rows[0]["tau"], rows[0]["k"]) if rows else (0.0, 0)
        stages.append(Stage(index=i, tau=tau, k=k, records=records))
    return stages


def fingerprint_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A short content hash of JSON rows (stable across runs)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def stage_token_stats(stage: Stage, tokenizer: Any, full_mean: float | None = None) -> dict[str, float]:
    """Mean and 95th-percentile prompt tokens of a stage (and its share of the full prompt)."""
    from .prompt import chat_prompt_text

    lengths = sorted(
        len(tokenizer(chat_prompt_text(tokenizer, r.messages), add_special_tokens=False)["input_ids"])
        for r in stage.records
    )
    if not lengths:
        return {"mean": 0.0, "p95": 0.0, "share": 0.0}
    mean = sum(lengths) / len(lengths)
    p95 = float(lengths[min(len(lengths) - 1, int(round(0.95 * (len(lengths) - 1))))])
    return {"mean": mean, "p95": p95, "share": mean / full_mean if full_mean else 1.0}
