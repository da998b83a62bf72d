"""The argument dataclasses of training, LoRA, generation and scoring — importable without torch.

A run's configuration is read, validated and fingerprinted before any model is loaded, so a
typo in a YAML file is answered in a fraction of a second. These classes therefore import
nothing heavy: anything that needs transformers or peft (``LoraArgs.to_peft``) imports it
inside the method that uses it.

Field metadata used elsewhere:

- ``help``: shown by ``promptintern config``;
- ``choices``: checked by :func:`promptintern.configtools.from_dict`;
- ``volatile``: the field may change between a run and its ``--resume`` (it does not change
  the trained weights or the predictions: logging, checkpoint cadence, threads, progress).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .configtools import from_dict
from .errors import ConfigError

OPTIMIZER_STATES = ("reset", "keep")
LR_SPANS = ("stage", "run")
SHARED_PREFIX_MODES = ("auto", "on", "off")
KL_LOSSES = ("kl", "ce+kl")
LOSSES = ("ce", *KL_LOSSES)
TEACHER_ROW_LOSSES = ("kl", "ce")
SELF_TEACHER = "self"
# TrainArgs fields that only matter to the KL losses (left out of fingerprints of ``ce`` runs,
# so runs made before they existed still resume).
KL_FIELDS = ("kl_weight", "kl_temperature", "kl_topk", "teacher", "teacher_cache")
# transformers' SchedulerType values (a test keeps this list equal to the installed transformers'):
# listed here so that checking a config does not import transformers and torch.
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay", "greedy",
)
# Schedules that are a function of the step alone (a LambdaLR in transformers), so that one schedule
# can be entered part-way at a later stage (``lr_span: run``); reduce_lr_on_plateau and greedy
# follow the loss instead.
STEP_SCHEDULERS = tuple(s for s in LR_SCHEDULERS if s not in ("reduce_lr_on_plateau", "greedy"))
DTYPES = ("auto", "float32", "bfloat16")
# Passthrough (``train.extra`` / ``lora.extra``): fields promptintern already exposes under its
# own name (one way to say each thing), and fields it sets itself for its stage bookkeeping.
TRAINING_ARGUMENTS_OURS = {
    "num_train_epochs": "train.epochs_per_stage", "max_steps": "train.max_steps_per_stage",
    "learning_rate": "train.learning_rate", "lr_scheduler_type": "train.lr_scheduler",
    "warmup_steps": "train.warmup_ratio", "warmup_ratio": "train.warmup_ratio",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm", "optim": "train.optim",
    "per_device_train_batch_size": "train.per_device_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "seed": "train.seed",
    "data_seed": "train.seed", "full_determinism": "train.full_determinism", "use_cpu": "train.use_cpu",
    "bf16": "train.dtype", "fp16": "train.dtype", "save_steps": "train.save_steps",
    "save_total_limit": "train.save_total_limit", "logging_steps": "train.logging_steps",
    "report_to": "train.report_to", "dataloader_num_workers": "train.dataloader_num_workers",
    "load_best_model_at_end": "train.select_best", "early_stopping_patience": "train.early_stopping_patience",
}
TRAINING_ARGUMENTS_RESERVED = ("output_dir", "run_name", "eval_strategy", "save_strategy", "logging_strategy",
                               "remove_unused_columns", "label_names", "disable_tqdm", "resume_from_checkpoint",
                               "eval_steps", "metric_for_best_model", "greater_is_better")
LORA_CONFIG_OURS = {"r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                    "target_modules": "lora.target_modules"}
LORA_CONFIG_RESERVED = ("task_type", "peft_type", "base_model_name_or_path")

# TrainArgs fields that ``stage_overrides`` may set for a single stage.
PER_STAGE_FIELDS = frozenset(
    {"epochs_per_stage", "max_steps_per_stage", "learning_rate", "lr_scheduler", "warmup_ratio",
     "weight_decay", "max_grad_norm", "per_device_batch_size", "gradient_accumulation_steps",
     "max_length", "optimizer_state", "save_steps"}
)


def volatile_fields(cls: type) -> frozenset[str]:
    """Names of ``cls``'s fields marked ``volatile`` (free to change on resume)."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("volatile"))


def check_extra(where: str, extra: dict[str, Any], ours: dict[str, str], reserved: Sequence[str]) -> None:
    """Refuse passthrough keys that promptintern exposes or sets itself (values are checked by
    the library the keys belong to, when the run is checked: see ``promptintern.training.hf``)."""
    for key in extra:
        if key in ours:
            raise ConfigError(f"{where}.{key}: set it as {ours[key]} instead")
        if key in reserved:
            raise ConfigError(f"{where}.{key}: promptintern sets it itself for every stage")


def teacher_kind(teacher: str) -> str:
    """``self``, ``adapter`` (a PEFT adapter directory) or ``model`` (a merged HF model directory)."""
    if teacher == SELF_TEACHER:
        return "self"
    path = Path(teacher).expanduser()
    if (path / "adapter_config.json").is_file():
        return "adapter"
    if (path / "config.json").is_file():
        return "model"
    raise ConfigError(f"train.teacher: {teacher!r} is not 'self', a PEFT adapter directory or a model directory")


@dataclass
class LoraArgs:
    """The LoRA adapter (one adapter for all stages)."""

    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input during training."})
    target_modules: str = field(
        default="all-linear",
        metadata={"help": "'all-linear' (every linear layer except the LM head, peft's shortcut) or "
                          "comma-separated module names, e.g. 'q_proj,v_proj'."},
    )

    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Any other peft LoraConfig field, passed through and checked by peft, e.g. "
                          "{use_rslora: true, use_dora: true, bias: lora_only, modules_to_save: [lm_head]}."},
    )

    def identity_skip(self) -> tuple[str, ...]:
        """``extra`` left out of the run's identity while empty (runs made before it existed still resume)."""
        return () if self.extra else ("extra",)

    def validate(self) -> None:
        check_extra("lora.extra", self.extra, LORA_CONFIG_OURS, LORA_CONFIG_RESERVED)
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules.strip():
            raise ConfigError("lora.target_modules is empty; use 'all-linear' or module names")

    def to_peft(self) -> Any:
        from peft import LoraConfig

        targets = self.target_modules.strip()
        modules: str | list[str] = (
            targets if targets == "all-linear" else [m.strip() for m in targets.split(",") if m.strip()]
        )
        kwargs = {"bias": "none", **self.extra}
        try:
            return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                              target_modules=modules, task_type="CAUSAL_LM", **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"lora.extra: {_first_line(exc)}") from exc


@dataclass
class TrainArgs:
    """Optimisation of every stage (``stage_overrides`` changes single stages)."""

    epochs_per_stage: float = field(default=1.0, metadata={"help": "Passes over the stage's records per stage (fractions allowed)."})
    max_steps_per_stage: int | None = field(default=None, metadata={"help": "Optimizer steps per stage; overrides epochs_per_stage when set."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers LR schedule (linear, cosine, constant, constant_with_warmup, ...); restarts each stage unless lr_span is 'run'."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the schedule's steps spent warming the LR up from 0, in [0, 1): of each stage's steps, or of all stages' steps with lr_span 'run'."})
    lr_span: str = field(default="stage", metadata={"help": "What one LR schedule (warm-up and decay) spans: 'stage' = it restarts in every stage (the Trainer's own behaviour: a 3-stage run goes through three cycles); 'run' = one schedule over the steps of all stages, each stage entering it where the previous one stopped, as a single-stage run of the same steps would (needs max_steps_per_stage, a step-based lr_scheduler, and no per-stage lr_scheduler or warmup_ratio).", "choices": LR_SPANS})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 = off)."})
    optim: str = field(default="adamw_torch", metadata={"help": "transformers optimizer name."})
    per_device_batch_size: int = field(default=8, metadata={"help": "Records per forward pass and process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Forward passes per optimizer step."})
    max_length: int = field(default=2048, metadata={"help": "Longest prompt + answer in tokens; longer records are dropped (with a warning), never truncated."})
    seed: int = field(default=0, metadata={"help": "Seed of LoRA init, dropout and data order (stage i uses seed + i)."})
    optimizer_state: str = field(default="reset", metadata={"help": "'reset': fresh AdamW each stage; 'keep': carry AdamW moments and step counts into the next stage.", "choices": OPTIMIZER_STATES})
    shared_prefix: str = field(default="auto", metadata={"help": "Run the tokens every record of a batch shares (system message + template) once per batch instead of once per record: 'auto' where the model supports it (falls back to the plain pass otherwise), 'on' (error where unsupported), 'off'. Same losses and gradients within float tolerance; a LoRA dropout mask on the prefix is then shared by the batch's rows. May change on resume.", "choices": SHARED_PREFIX_MODES, "volatile": True})
    loss: str = field(default="ce", metadata={"help": "Stage loss: 'ce' = cross-entropy on the gold answer tokens (the paper); 'kl' = T²·KL(teacher ‖ student) on the answer tokens, the teacher seeing the stage-0 prompt; 'ce+kl' = (1 − kl_weight)·ce + kl_weight·kl.", "choices": LOSSES})
    kl_weight: float = field(default=0.5, metadata={"help": "λ in (0, 1): weight of the KL term in 'ce+kl', total = (1 − λ)·ce + λ·T²·kl."})
    kl_temperature: float = field(default=1.0, metadata={"help": "T > 0: both distributions are softened by T; the KL is scaled by T² to keep gradient sizes."})
    kl_topk: int = field(default=64, metadata={"help": "Teacher logits kept per answer token; the KL runs over these tokens plus one bucket for the rest of the vocabulary (a lower bound of the full KL, exact when k >= vocabulary)."})
    teacher: str = field(default=SELF_TEACHER, metadata={"help": "KL teacher: 'self' = the model being trained (current adapter, no dropout, no gradient) with the stage-0 prompt; or a frozen PEFT adapter directory on the same base model (e.g. a full-prompt run's run_dir/adapter) or a merged model directory. With 'self', stage 0 (same prompt, same weights) gets no KL gradient: 'kl' learns nothing there, 'ce+kl' is (1 − λ)·ce there."})
    teacher_cache: bool = field(default=False, metadata={"help": "Cache a frozen teacher's top-k targets per instance in run_dir/train/teacher-cache/, so later stages skip its forward pass (not with teacher 'self': its weights change)."})
    teacher_rows_loss: str | None = field(default=None, metadata={"help": "How the rows of data.teacher_answers (a teacher's answers to new queries) are learned, whatever train.loss does with the gold pairs: 'kl' = T²·KL to the frozen train.teacher's top-k on the teacher's own answer (the teacher seeing the stage-0 prompt), 'ce' = cross-entropy on the teacher's text. null = 'kl' when data.teacher_answers is set.", "choices": (None, *TEACHER_ROW_LOSSES)})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint period inside a stage, in optimizer steps (resume point after a crash).", "volatile": True})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept per stage (older ones are deleted).", "volatile": True})
    validation_size: int | None = field(default=32, metadata={"help": "Validation records each stage is scored on after it ends (a seeded sample of the task's validation split, each built with the stage's own prompt): the mean answer-token cross-entropy, 'validation_loss' in train/history.json and the report. 0 = off, null = the whole split. Skipped when the task has no validation split. Does not change the weights (may change on resume) unless select_best is on."})
    select_best: bool = field(default=False, metadata={"help": "Last stage only: score the validation loss at every checkpoint (save_steps) and end the run with the checkpoint whose loss is lowest instead of the last one (the Trainer's load_best_model_at_end); the chosen step is 'best_step' in history.json. Needs a validation split and validation_size > 0."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Every stage: score the validation loss at every checkpoint (save_steps), stop the stage once it has not improved for this many scorings (the Trainer's EarlyStoppingCallback), and end the stage with its best checkpoint; epochs_per_stage / max_steps_per_stage are then the cap. The stage's 'stopped' in history.json says which ended it. null = off. Needs validation records."})
    keep_checkpoints: bool = field(default=False, metadata={"help": "Keep a stage's checkpoints after it is done (they are only needed to resume inside it).", "volatile": True})
    logging_steps: int = field(default=10, metadata={"help": "Log loss / LR / grad-norm every N optimizer steps.", "volatile": True})
    report_to: str = field(default="none", metadata={"help": "Experiment trackers, comma-separated (none, tensorboard, wandb, trackio, ...).", "volatile": True})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0 = load in the main process).", "volatile": True})
    num_threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (null = torch's default).", "volatile": True})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is available."})
    full_determinism: bool = field(default=False, metadata={"help": "Deterministic algorithms everywhere (slower on GPU); CPU training is deterministic without it."})
    dtype: str = field(default="auto", metadata={"help": "Weights and compute dtype while training: 'auto' = bfloat16 on a GPU that supports it, else float32; or 'float32', 'bfloat16'.", "choices": DTYPES})
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Any other transformers TrainingArguments field, passed through and checked by "
                          "transformers, e.g. {gradient_checkpointing: true, optim_args: 'betas=(0.9,0.95)', "
                          "fsdp: true, fsdp_config: {...}, deepspeed: ds.json, torch_compile: true}."},
    )
    stage_overrides: dict[int, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "Per-stage changes: {stage index: {field: value}}, e.g. {0: {learning_rate: 1e-4}}. "
                          f"Allowed fields: {', '.join(sorted(PER_STAGE_FIELDS))}."},
    )

    def validate(self) -> None:
        positive = ("per_device_batch_size", "gradient_accumulation_steps", "max_length", "save_steps",
                    "save_total_limit", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps_per_stage is not None and self.max_steps_per_stage < 1:
            raise ConfigError(f"train.max_steps_per_stage must be >= 1 or null, got {self.max_steps_per_stage}")
        if self.epochs_per_stage <= 0:
            raise ConfigError(f"train.epochs_per_stage must be > 0, got {self.epochs_per_stage}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ConfigError(f"train.optimizer_state: {self.optimizer_state!r} is not one of {', '.join(OPTIMIZER_STATES)}")
        if self.lr_span not in LR_SPANS:
            raise ConfigError(f"train.lr_span: {self.lr_span!r} is not one of {', '.join(LR_SPANS)}")
        if self.loss not in LOSSES:
            raise ConfigError(f"train.loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.teacher_rows_loss not in (None, *TEACHER_ROW_LOSSES):
            raise ConfigError(f"train.teacher_rows_loss: {self.teacher_rows_loss!r} is not one of "
                              f"{', '.join(TEACHER_ROW_LOSSES)} or null")
        if self.uses_teacher():
            self._validate_kl()
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")
        if self.validation_size is not None and self.validation_size < 0:
            raise ConfigError(f"train.validation_size must be >= 0 or null, got {self.validation_size}")
        if self.select_best and not self.validates():
            raise ConfigError("train.select_best needs validation records; set train.validation_size > 0 (or null)")
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ConfigError(f"train.early_stopping_patience must be >= 1 or null, got {self.early_stopping_patience}")
            if not self.validates():
                raise ConfigError("train.early_stopping_patience needs validation records; set train.validation_size > 0")
        check_extra("train.extra", self.extra, TRAINING_ARGUMENTS_OURS, TRAINING_ARGUMENTS_RESERVED)
        if self.dataloader_num_workers < 0:
            raise ConfigError(f"train.dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"train.lr_scheduler: unknown schedule {self.lr_scheduler!r}")
        for index, changes in self.stage_overrides.items():
            bad = sorted(set(changes) - PER_STAGE_FIELDS)
            if bad:
                raise ConfigError(f"train.stage_overrides.{index}: {bad[0]!r} cannot change per stage; "
                                  f"allowed: {', '.join(sorted(PER_STAGE_FIELDS))}")
            self.for_stage(index)  # type-checks and validates the overridden values
        if self.lr_span == "run":
            self._validate_run_span()

    def _validate_run_span(self) -> None:
        """One schedule over all stages needs every stage's step count before training starts."""
        if self.lr_scheduler not in STEP_SCHEDULERS:
            raise ConfigError(f"train.lr_span 'run' needs a step-based lr_scheduler, not {self.lr_scheduler!r}")
        for index, changes in self.stage_overrides.items():
            bad = sorted({"lr_scheduler", "warmup_ratio"} & set(changes))
            if bad:
                raise ConfigError(f"train.stage_overrides.{index}: {bad[0]!r} cannot change per stage under "
                                  "lr_span 'run' (one schedule spans the stages)")
        if self.max_steps_per_stage is None or any(
                self.for_stage(i).max_steps_per_stage is None for i in self.stage_overrides):
            raise ConfigError("train.lr_span 'run' needs train.max_steps_per_stage (every stage's step count "
                              "known before training)")

    def _validate_kl(self) -> None:
        if self.loss == "ce+kl" and not 0.0 < self.kl_weight < 1.0:
            raise ConfigError(f"train.kl_weight must be in (0, 1) for loss 'ce+kl', got {self.kl_weight}")
        if not self.kl_temperature > 0:
            raise ConfigError(f"train.kl_temperature must be > 0, got {self.kl_temperature}")
        if self.kl_topk < 1:
            raise ConfigError(f"train.kl_topk must be >= 1, got {self.kl_topk}")
        if self.teacher == SELF_TEACHER:
            if self.teacher_cache:
                raise ConfigError("train.teacher_cache needs a frozen teacher; teacher 'self' changes as it trains")
        elif not Path(self.teacher).expanduser().is_dir():
            raise ConfigError(f"train.teacher: {self.teacher!r} is neither 'self' nor an existing directory")
        else:
            teacher_kind(self.teacher)  # an adapter or a model directory

    def validates(self) -> bool:
        """Whether stages are scored on validation records (``validation_size`` not 0)."""
        return self.validation_size is None or self.validation_size > 0

    def uses_teacher(self) -> bool:
        """Whether any row is learned from a teacher's logits (gold rows by ``loss``, teacher rows by
        ``teacher_rows_loss``)."""
        return self.loss in KL_LOSSES or self.teacher_rows_loss == "kl"

    def frozen_teacher(self) -> str | None:
        """The frozen KL teacher's directory, None when no teacher is used or it is the student itself."""
        return self.teacher if self.uses_teacher() and self.teacher != SELF_TEACHER else None

    def identity_skip(self) -> tuple[str, ...]:
        """Fields left out of this run's identity: the KL fields when no teacher is used, ``dtype``
        ``extra`` and ``lr_span`` at their defaults (so runs made before they existed still resume)."""
        skip = () if self.uses_teacher() else KL_FIELDS
        skip += () if self.extra else ("extra",)
        skip += () if self.teacher_rows_loss else ("teacher_rows_loss",)
        # The validation set changes the weights only through select_best (then it is part of the run).
        scored = self.select_best or self.early_stopping_patience is not None
        skip += () if scored else ("validation_size", "select_best")
        skip += () if self.early_stopping_patience is not None else ("early_stopping_patience",)
        skip += ("lr_span",) if self.lr_span == "stage" else ()
        return skip + (("dtype",) if self.dtype == "auto" else ())

    def for_stage(self, index: int) -> TrainArgs:
        """These arguments with stage ``index``'s overrides applied (type-checked and validated)."""
        changes = self.stage_overrides.get(index)
        if not changes:
            return self
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return from_dict(TrainArgs, {**base, "stage_overrides": {}, **changes}, where=f"train.stage_overrides.{index}")

    def report_targets(self) -> list[str]:
        return [t.strip() for t in self.report_to.split(",") if t.strip()] or ["none"]


@dataclass
class InferArgs:
    """How test queries are answered."""

    max_new_tokens: int | str = field(default="auto", metadata={"help": "Most tokens generated per query (the end-of-turn token stops earlier): 'auto' = from the training answers' token lengths (p99 x 1.25, capped at the longest, + 8), or a number. Either way a run warns, with counts, when gold answers are longer."})
    batch_size: int = field(default=8, metadata={"help": "Queries per generate call (left-padded); latency per query is the batch's wall time."})
    prefix_cache: bool = field(default=False, metadata={"help": "Run the prompts' common token prefix once and serve each batch of batch_size queries from copies of its KV cache (batch_size 1: the per-query latency baseline)."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (the default); > 0 samples at this temperature (no top-k / top-p), seeded from each batch's query ids (a teacher's several answers per query: promptintern label --samples)."})
    num_threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (null = torch's default).", "volatile": True})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with queries/s.", "volatile": True})

    def identity_skip(self) -> tuple[str, ...]:
        """``temperature`` while greedy (so runs made before it existed still resume)."""
        return ("temperature",) if self.temperature == 0 else ()

    def validate(self) -> None:
        from .answer_length import check_setting

        check_setting(self.max_new_tokens)
        if self.batch_size < 1:
            raise ConfigError(f"infer.batch_size must be >= 1, got {self.batch_size}")
        if not self.temperature >= 0:
            raise ConfigError(f"infer.temperature must be >= 0, got {self.temperature}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"infer.num_threads must be >= 1 or null, got {self.num_threads}")


@dataclass
class EvalArgs:
    """How predictions are scored."""

    workers: int | None = field(default=None, metadata={"help": "Parallel sandboxes for MBPP (default: CPU count).", "volatile": True})
    timeout_s: float = field(default=10.0, metadata={"help": "Wall-clock limit per MBPP program, seconds."})
    bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for 95% confidence intervals."})
    sandbox: str = field(default="bwrap", metadata={"help": "Where model-written code runs (MBPP): 'bwrap', contained, refuses to run where it cannot be established; 'process', uncontained, only as an explicit opt-in (shown in every table and stored in metrics.json).", "choices": ("bwrap", "process"), "volatile": True})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
