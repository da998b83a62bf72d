"""The Hugging Face glue: the ``Trainer`` subclass, its callbacks and its ``TrainingArguments``.

This module imports transformers (and torch) when it is imported: the torch-free layer (config,
args, the CLI's parsing and its one-line errors) never imports it, and :mod:`promptintern.training`
imports it only when one of its names is first used.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler

from ..args import KL_LOSSES, LOSSES, LoraArgs, TrainArgs
from ..checksums import write_checkpoint_checksums
from ..errors import ConfigError
from ..progress import progress_bar
from .checkpoints import CARRY_KEY
from .loss import answer_loss, distill_loss
from .shared_prefix import BatchTokens
from .teacher import Teacher
from .validation import rng_kept


class StageTrainer(Trainer):
    """A ``Trainer`` with the answer-only loss and an optional carried-over optimizer state."""

    # compute_loss normalises by the accumulated batch's token count: no further GA scaling.
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, loss: str = "ce", optimizer_state: dict | None = None,
                 teacher: Teacher | None = None, kl_weight: float = 0.5, carry: dict | None = None,
                 shared_prefix: str = "off", lr_span: tuple[int, int] | None = None,
                 rows_loss: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lr_span = lr_span  # (steps of the stages before, steps of all stages) under lr_span 'run'
        # What a resumed stage takes over from its checkpoint (see _save_checkpoint).
        self.carry = carry or {}
        self.t0 = time.perf_counter()
        self.add_callback(SeedResumedLoss(self))
        if loss not in LOSSES:
            raise ConfigError(f"train.loss: {loss!r} is not one of {', '.join(LOSSES)}")
        if loss in KL_LOSSES and teacher is None:
            raise ConfigError(f"train.loss: {loss!r} needs a teacher")
        self.loss_name = loss
        self.rows_loss = rows_loss  # how the rows of data.teacher_answers learn (None: like the gold pairs)
        self.teacher, self.kl_weight = teacher, kl_weight
        self.shared_prefix = shared_prefix
        self.batch_tokens: list[BatchTokens] = []  # this stage's token accounting, this process
        if teacher is not None:
            teacher.shared_prefix = shared_prefix
        self.loss_parts: list[Any] = []  # summed (ce, kl, tokens) since the last log, this process
        self.carried_optimizer_state = optimizer_state
        self.validating = False  # inside evaluate(): the loss is the validation loss
        # Have the Trainer count the answer tokens of each accumulated batch for compute_loss.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if self.validating:  # answer-only CE whatever the training loss; this batch's mean, no token accounting
            loss = answer_loss(model, inputs, None, self.shared_prefix)
            return (loss, {"loss": loss}) if return_outputs else loss
        if self.teacher is None or (self.loss_name == "ce" and "kl_rows" not in inputs):
            loss = answer_loss(model, inputs, num_items_in_batch, self.shared_prefix, self.batch_tokens)
        else:
            loss, parts = distill_loss(model, self.teacher, inputs, loss=self.loss_name, kl_weight=self.kl_weight,
                                       student=self.accelerator.unwrap_model(model),
                                       num_items_in_batch=num_items_in_batch,
                                       shared_prefix=self.shared_prefix, tokens=self.batch_tokens,
                                       rows_loss=self.rows_loss)
            self.loss_parts.append(parts)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch is then the global count, while DDP averages gradients over processes.
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The validation loss (see :mod:`.validation`); the RNG streams training draws from are left as they were."""
        self.validating = True
        try:
            with rng_kept():
                return super().evaluate(*args, **kwargs)
        finally:
            self.validating = False

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.loss_parts and "loss" in logs:  # per-token means of this process's terms, over the tokens each covers
            n_ce, n_kl = sum(p.ce_tokens for p in self.loss_parts), sum(p.kl_tokens for p in self.loss_parts)
            if n_ce:
                logs["ce"] = float(sum(p.ce for p in self.loss_parts)) / n_ce
            if n_kl:
                logs["kl"] = float(sum(p.kl for p in self.loss_parts)) / n_kl
            self.loss_parts = []
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):  # noqa: ANN001
        # Before the Trainer writes trainer_state.json (last), so every complete checkpoint holds
        # the summed loss of the steps before it and the stage's seconds so far.
        self.state.stateful_callbacks[CARRY_KEY] = {
            "step": self.state.global_step,
            "loss_sum": self._total_loss_scalar + float(self._tr_loss.item()),
            "train_wall_s": self.carry.get("train_wall_s", 0.0) + time.perf_counter() - self.t0,
            "batch_tokens": [[b.rows, b.width, b.real, b.prefix] for b in self.batch_tokens],
        }
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # after every file the main process wrote; a resume verifies them
            write_checkpoint_checksums(Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}")

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_span is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        offset, total = self.lr_span
        self.lr_scheduler = run_schedule(optimizer or self.optimizer, self.args.lr_scheduler_type,
                                         self.args.get_warmup_steps(total), offset, total,
                                         self.args.lr_scheduler_kwargs)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer(self, model=None):  # noqa: ANN001
        optimizer = super().create_optimizer(model)
        if self.carried_optimizer_state is not None:
            fresh = optimizer.state_dict()
            optimizer.load_state_dict({"state": self.carried_optimizer_state,
                                       "param_groups": fresh["param_groups"]})
        return optimizer


def _shifted(fn: Any, offset: int, step: int) -> float:
    return fn(step + offset)


def run_schedule(optimizer: Any, name: str, warmup_steps: int, offset: int, total: int,
                 kwargs: dict[str, Any] | None = None) -> Any:
    """One LR schedule over all stages' ``total`` steps, entered at step ``offset`` (the steps of
    the stages before this one).

    Each stage is its own Trainer run, whose scheduler would start the schedule over; this one is
    the transformers schedule of the whole run with its step counter moved on by ``offset``, so the
    stages together follow the LR curve a single-stage run of ``total`` steps follows.
    """
    whole = get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total,
                          scheduler_specific_kwargs=kwargs or {})
    if not isinstance(whole, LambdaLR):
        raise ConfigError(f"train.lr_span 'run': schedule {name!r} does not depend on the step alone")
    # The optimizer's initial_lr was set by the first construction; this one keeps it.
    return LambdaLR(optimizer, [functools.partial(_shifted, fn, offset) for fn in whole.lr_lambdas])


class SeedResumedLoss(TrainerCallback):
    """On a resumed stage, starts the Trainer's loss sum (and the token accounting) at the
    checkpoint's, so the stage's ``train_loss`` is the mean over all its steps, as in an
    uninterrupted run (same additions in the same order when checkpoints fall on logging steps)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        carry = self.trainer.carry
        if carry.get("step") == state.global_step and state.global_step > 0:
            # The Trainer divides its loss sum by the steps since _initial_global_step (its
            # train_loss in the result and in log_history): count from the stage's start.
            self.trainer._total_loss_scalar = float(carry["loss_sum"])
            self.trainer._initial_global_step = 0
            # the token accounting of the batches before the checkpoint, so history.json counts the whole stage
            self.trainer.batch_tokens[:0] = [BatchTokens(*t) for t in carry.get("batch_tokens", [])]


class StageProgress(TrainerCallback):
    """Feeds a rich progress bar (stage i/N, step, loss, ETA) from the main process."""

    def __init__(self, progress: Any, label: str) -> None:
        self.progress, self.label, self.task = progress, label, None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            self.task = self.progress.add_task(self.label, total=state.max_steps,
                                               completed=state.global_step, loss="–")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        # A logging step's line waits for on_log (called next), so it shows that step's loss.
        if self.task is not None and not control.should_log:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if self.task is not None and logs and "loss" in logs:
            self.progress.update(self.task, completed=state.global_step, loss=f"{logs['loss']:.4f}")


def _make_progress(enabled: bool) -> Any:
    return progress_bar("{task.description}", "loss {task.fields[loss]}", enabled)


def _training_arguments(args: TrainArgs, stage_dir: Path, seed: int, use_cpu: bool, bf16: bool,
                        world_size: int, select_best: bool = False) -> Any:
    """The stage's TrainingArguments; ``select_best``: evaluate at every checkpoint, end with the best."""
    ours = dict(
        output_dir=str(stage_dir),
        run_name=stage_dir.name,
        num_train_epochs=args.epochs_per_stage,
        max_steps=args.max_steps_per_stage or -1,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a ratio of the stage's steps
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        optim=args.optim,
        per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=seed,
        data_seed=seed,
        full_determinism=args.full_determinism,
        use_cpu=use_cpu,
        bf16=bf16,
        eval_strategy="steps" if select_best else "no",
        per_device_eval_batch_size=args.per_device_batch_size,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        logging_strategy="steps",
        logging_steps=args.logging_steps,
        report_to=args.report_targets(),
        disable_tqdm=True,
        dataloader_num_workers=args.dataloader_num_workers,
        dataloader_pin_memory=not use_cpu,
        remove_unused_columns=False,
        label_names=["labels"],
        ddp_find_unused_parameters=False if world_size > 1 else None,
    )
    if select_best:
        ours.update(eval_steps=args.save_steps, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                    greater_is_better=False)
    # ``train.extra`` last: what the user passes through wins over our defaults (its keys never
    # name a field set above from TrainArgs: TrainArgs.validate refuses those).
    try:
        return TrainingArguments(**{**ours, **args.extra})
    except (TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"train.extra: {text}") from exc


def resolve_dtype(args: TrainArgs, use_cpu: bool) -> torch.dtype:
    """``train.dtype``: ``auto`` = bf16 on a GPU that supports it, else fp32."""
    from ..models import pick_dtype

    return pick_dtype("cpu" if use_cpu else "cuda") if args.dtype == "auto" else getattr(torch, args.dtype)


def check_passthrough(args: TrainArgs, lora: LoraArgs) -> None:
    """Have transformers and peft check ``train.extra`` / ``lora.extra`` before anything is written."""
    import tempfile

    use_cpu = args.use_cpu or not torch.cuda.is_available()
    bf16 = resolve_dtype(args, use_cpu) == torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        _training_arguments(args, Path(tmp), args.seed, use_cpu, bf16, 1)
    lora.to_peft()
