"""The run configuration: one YAML file, every field documented and validated.

Each component owns its own dataclass (``Schedule``, ``CompressConfig``, ``RetrieveConfig``,
``LoraArgs``, ``TrainArgs``, ``InferArgs``); :class:`RunConfig` only composes them. Load with
:func:`load_config`, which applies ``--set key=value`` overrides before validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .args import SELF_TEACHER, EvalArgs, InferArgs, LoraArgs, TrainArgs
from .compress import CompressConfig
from .configtools import apply_overrides, from_dict, load_yaml, to_dict
from .errors import ConfigError
from .identity import as_json, fingerprint, identity_view
from .methods import METHOD_NAMES, plan
from .retrieve import RetrieveConfig
from .schedule import Schedule
from .stages import STAGE_MODES
from .teacher_answers import TEACHER_STAGES
from .teacher_data import TeacherDataArgs

BASELINES = ("base-full", "base-query")


@dataclass
class DataArgs:
    """Which instances a run uses."""

    train_size: int | None = field(default=None, metadata={"help": "Use at most this many training instances (seeded sample); null = all."})
    test_size: int | None = field(default=None, metadata={"help": "Evaluate on the first N test instances; null = the whole test split."})
    stage_mode: str = field(default="revisit", metadata={"help": "'revisit': every stage sees all training instances (the paper); 'slice': disjoint slices per stage (same total work as one pass).", "choices": STAGE_MODES})
    seed: int = field(default=0, metadata={"help": "Seed of the training sample and of the stage slices."})
    teacher_answers: str | None = field(default=None, metadata={"help": "JSONL written by 'promptintern label' ({'id', 'query', 'answer', ...} a line): new queries answered by a teacher that saw the full prompt, trained on as extra records of the stages teacher_stages names (each in the stage's own prompt, the answer as the teacher wrote it). Never retrieved as examples, never validated on; a query equal to a validation or test query is refused. Its content is part of the run: a changed file is refused on --resume. null = none."})
    teacher_rows_per_pair: float | None = field(default=None, metadata={"help": "The mix: at most this many teacher_answers rows per labelled pair (a sample seeded by data.seed; 2.0 with 120 pairs keeps 240 rows); null = all of them."})
    teacher_stages: str = field(default="last", metadata={"help": "Stages that train on teacher_answers: 'last' = the final stage only (query alone for promptintern), 'all' = every stage.", "choices": TEACHER_STAGES})

    def validate(self) -> None:
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"data.{name} must be >= 1 or null, got {v}")
        if self.teacher_stages not in TEACHER_STAGES:
            raise ConfigError(f"data.teacher_stages: {self.teacher_stages!r} is not one of {', '.join(TEACHER_STAGES)}")
        if self.teacher_answers is not None and not str(self.teacher_answers).strip():
            raise ConfigError("data.teacher_answers must be a file path or null, got an empty string")
        if self.teacher_rows_per_pair is not None and not self.teacher_rows_per_pair > 0:
            raise ConfigError(f"data.teacher_rows_per_pair must be > 0 or null, got {self.teacher_rows_per_pair}")

    def identity_skip(self) -> tuple[str, ...]:
        """The teacher fields when no teacher answers are used (so runs made before they existed resume)."""
        unset = () if self.teacher_rows_per_pair is not None else ("teacher_rows_per_pair",)
        return unset if self.teacher_answers else ("teacher_answers", "teacher_stages", "teacher_rows_per_pair")


@dataclass
class RunConfig:
    """A complete promptintern run: prepare → train → infer → evaluate → report."""

    task: str = field(default="nl2bash", metadata={"help": "Task name (nl2bash, mbpp, geoquery) or path to a YAML task spec."})
    task_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Options of the task (e.g. NL2Bash train_size/test_size/seed of the split, GeoQuery split: question | query)."})
    data_dir: str | None = field(default=None, metadata={"help": "Data directory; default $PROMPTINTERN_DATA_DIR."})
    model: str = field(default="smollm2-135m", metadata={"help": "Base model: alias (smollm2-135m, tiny-random), local HF directory or hub id."})
    method: str = field(default="promptintern", metadata={"help": "Method to train and serve (see promptintern.methods).", "choices": METHOD_NAMES})
    compressed_tau: float = field(default=0.3, metadata={"help": "Template rate the 'compressed' baseline trains and serves with."})
    baselines: list[str] = field(default_factory=lambda: ["base-full"], metadata={"help": "Untrained references served on the same test set: base-full (base model, full prompt), base-query (base model, query alone)."})
    output_dir: str = field(default="runs/default", metadata={"help": "Run directory (config, stages, checkpoints, predictions, report).", "volatile": True})
    data: DataArgs = field(default_factory=DataArgs, metadata={"help": "Instance selection."})
    schedule: Schedule = field(default_factory=Schedule, metadata={"help": "Stage schedule of τ and k."})
    compress: CompressConfig = field(default_factory=CompressConfig, metadata={"help": "Template compressor."})
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig, metadata={"help": "Example retriever."})
    lora: LoraArgs = field(default_factory=LoraArgs, metadata={"help": "LoRA adapter."})
    train: TrainArgs = field(default_factory=TrainArgs, metadata={"help": "Optimisation per stage."})
    infer: InferArgs = field(default_factory=InferArgs, metadata={"help": "Generation."})
    eval: EvalArgs = field(default_factory=EvalArgs, metadata={"help": "Scoring."})
    teacher_data: TeacherDataArgs = field(default_factory=TeacherDataArgs, metadata={"help": "New queries a teacher run answers with its own prompt, learned as data.teacher_answers (labelled once into run_dir/teacher-data/; replaces data.teacher_answers)."})

    def validate(self) -> None:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"baselines: unknown {bad[0]!r}; choose from {', '.join(BASELINES)}")
        if not 0.0 <= self.compressed_tau <= 1.0:
            raise ConfigError(f"compressed_tau must be in [0, 1], got {self.compressed_tau}")
        plan(self.method, self.schedule, self.compressed_tau)  # the schedule must end where the method is served
        self._validate_teacher_rows()

    def identity_skip(self) -> tuple[str, ...]:
        """``teacher_data`` when it has no sources (so runs made before it existed still resume)."""
        return () if self.teacher_data.enabled else ("teacher_data",)

    def _validate_teacher_rows(self) -> None:
        """``train.teacher_rows_loss`` goes with teacher rows; its default 'kl' needs a frozen teacher, by
        default the ``teacher_data`` run's adapter."""
        if self.teacher_data.enabled:
            if self.teacher_data.teacher is None:
                raise ConfigError("teacher_data: name the run that answers the new queries (teacher_data.teacher)")
            if self.train.teacher == SELF_TEACHER and self.train.teacher_rows_loss != "ce":
                adapter = Path(self.teacher_data.teacher).expanduser() / "adapter"
                if adapter.is_dir():
                    self.train.teacher = str(adapter)
        if not (self.data.teacher_answers or self.teacher_data.enabled):
            if self.train.teacher_rows_loss is not None:
                raise ConfigError("train.teacher_rows_loss is set but data.teacher_answers is not: there are no "
                                  "teacher rows to learn")
            return
        if self.train.teacher_rows_loss is None:
            self.train.teacher_rows_loss = "kl"
            self.train.validate()
        if self.train.teacher_rows_loss == "kl" and self.train.teacher == SELF_TEACHER:
            raise ConfigError("data.teacher_answers are learned by KL to the teacher that wrote them: set "
                              "train.teacher to its adapter (e.g. TEACHER_RUN/adapter), or train.teacher_rows_loss: ce")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """Hash of everything that changes results: every field not marked ``volatile``."""
        return fingerprint(self)

    def identity(self) -> dict[str, Any]:
        """The fields :meth:`fingerprint` hashes, as JSON reads them back (to name what differs)."""
        return as_json(identity_view(self))


def load_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (or the defaults when ``path`` is None) with overrides applied."""
    file_raw = load_yaml(path) if path else {}
    raw = apply_overrides(file_raw, overrides or [])
    try:
        return from_dict(RunConfig, raw, where="config")
    except ConfigError as exc:
        culprit = _culprit(path, file_raw, overrides or [], str(exc))
        raise ConfigError(f"{culprit}: {exc}" if culprit else str(exc)) from exc


def _culprit(path: str | None, file_raw: dict[str, Any], overrides: list[str], message: str) -> str | None:
    """Who to blame for an invalid config: the file when it fails alone with the same error, else
    the ``--set`` item the message names (or all of them)."""
    if not overrides:
        return path
    try:
        from_dict(RunConfig, file_raw, where="config")
    except ConfigError as alone:
        if str(alone) == message:
            return path
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        named = re.search(rf"(^|\s|config\.){re.escape(key)}\b", message)
        if named or f"unknown key {key.rsplit('.', 1)[-1]!r}" in message:
            return f"--set {item}"
    return "--set " + " ".join(overrides)
