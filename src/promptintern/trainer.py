"""Progressive LoRA training: one adapter, trained stage after stage.

PromptIntern fine-tunes a single LoRA adapter on a sequence of stage datasets whose prompts
shrink (template compressed, fewer examples) until only the query is left. Each stage is one
Hugging Face ``Trainer`` run that starts from the adapter weights the previous stage ended
with, so logging (``report_to``), gradient accumulation, checkpoints and multi-process launch
come from the library: ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu``
(data parallel; gloo on a machine without CUDA).

Run directory (written by the main process only; files and directories atomically)::

    run_dir/train/config.json              what is trained: model, LoRA, TrainArgs, stage fingerprints
    run_dir/train/history.json             per stage: loss curve (Trainer log_history), steps, wall seconds
    run_dir/train/stage-{i}/checkpoint-N/  Trainer checkpoints inside stage i, every ``save_steps``
                                           (deleted once the stage is done unless ``keep_checkpoints``)
    run_dir/train/stage-{i}/final/         the adapter after stage i; its DONE.json marks the stage done
                                           (+ optimizer.pt when the next stage keeps the optimizer state)
    run_dir/train/teacher-cache/           a frozen KL teacher's top-k targets per instance (``teacher_cache``)
    run_dir/adapter/                       the final adapter: a copy of the last stage's final/

Resume (``resume=True``) skips the stages whose ``final/DONE.json`` exists, loads the adapter
of the last of them, and continues the first unfinished stage from its latest complete
checkpoint: adapter weights, optimizer and LR-scheduler state, Python/NumPy/torch RNG states
and the position in the data order (the sampler is seeded per stage and epoch). On the same
hardware and thread count the result is bitwise identical to an uninterrupted run.

Choices (ours; the paper does not say):

- Loss ``ce`` (default, the paper): cross-entropy on the answer tokens only. LM-head logits are computed at those
  positions only (a pre-hook on the LM head keeps those rows; any transformers 5.x): with a
  49k vocabulary the head over every prompt position is a large, useless share of a step (about a fifth of SmolLM2-135M's step
  time on CPU, more as prompts grow). The sum is divided by the number of
  answer tokens in the whole accumulated (and, with several processes, global) batch, like
  transformers' own loss.
- Losses ``kl`` and ``ce+kl`` (beyond the paper, see ``promptintern.distill``): distil a
  teacher that sees the stage-0 prompt into the student that sees the stage's prompt, on the
  same gold answer: ``kl`` = T²·KL_k(teacher ‖ student), ``ce+kl`` = (1 − λ)·CE + λ·T²·KL_k
  (a convex mix, so the gradient scale and the tuned learning rate stay those of CE). The
  teacher is the student itself (``self``: current adapter, eval mode, no gradient) or a
  frozen adapter / model directory, whose targets may be cached on disk
  (``train/teacher-cache/``). Time spent on teacher targets is ``teacher_wall_s`` per stage
  in history.json (part of ``train_wall_s``; the main process's, like ``train_wall_s``).
  Under a KL loss a record is dropped when its teacher prompt exceeds ``max_length`` too.
- Records longer than ``max_length`` are dropped with a warning, not truncated: cutting the
  prompt's left edge would remove the system turn and the chat header, cutting the right edge
  would cut the answer.
- Stage ``i`` is seeded with ``seed + i`` (LoRA dropout masks and data order differ between
  stages); the LR schedule (warm-up, decay) restarts in every stage.
- ``optimizer_state``: ``reset`` (default) starts every stage with a fresh AdamW; ``keep``
  carries the AdamW moments and step counts over from the previous stage, so the new stage
  skips Adam's bias-correction warm-up and continues the previous stage's update directions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .args import (  # noqa: F401  (re-exported: the argument classes lived here before args.py)
    KL_FIELDS,
    KL_LOSSES,
    LOSSES,
    OPTIMIZER_STATES,
    PER_STAGE_FIELDS,
    SELF_TEACHER,
    LoraArgs,
    TrainArgs,
    volatile_fields,
)
from .distill import (
    CACHE_DIR,
    Teacher,
    TeacherCache,
    answer_logits,
    distill_loss,
    load_frozen_teacher,
    teacher_fingerprint,
)
from .errors import ConfigError, DataError, ModelError, RunDirError
from .identity import as_json, describe_differences, identity_view, model_identity
from .io import atomic_dir, read_json, write_json
from .progress import progress_bar
from .prompt import IGNORE_INDEX, encode_chat
from .shared_prefix import BatchTokens, token_summary
from .stages import Stage, StageRecord, record_row

logger = logging.getLogger(__name__)

# TrainArgs fields that may change between a run and its resume: they do not change the weights.
VOLATILE_FIELDS = volatile_fields(TrainArgs)
DONE_FILE = "DONE.json"
WALL_FILE = "wall_s.json"  # in checkpoints of older versions: the stage's training seconds up to it
CARRY_KEY = "promptintern_stage"  # our bookkeeping inside a checkpoint's trainer_state.json


# ---------------------------------------------------------------- data


def tokenize_records(
    records: Sequence[StageRecord], tokenizer: Any, max_length: int, with_teacher: bool = False
) -> tuple[list[dict[str, list[int]]], list[str]]:
    """Encode records as ``{"input_ids", "labels"}`` (labels -100 on the prompt).

    With ``with_teacher`` each example also holds ``teacher_input_ids`` / ``teacher_labels``,
    the record's ``teacher_messages`` with the same answer; a record is kept only when both
    fit. Returns the encoded examples and the ids of the records dropped for exceeding
    ``max_length`` tokens (see the module docstring for why they are not truncated).
    """
    kept, dropped = [], []
    for rec in records:
        enc = encode_chat(tokenizer, rec.messages, rec.answer)
        longest = len(enc["input_ids"])
        if with_teacher:
            if rec.teacher_messages is None:
                raise ConfigError(f"record {rec.id!r} has no teacher prompt (teacher_messages), which a KL loss needs")
            t = encode_chat(tokenizer, rec.teacher_messages, rec.answer)
            if _answer_ids(t["labels"]) != _answer_ids(enc["labels"]):
                raise DataError(f"record {rec.id!r}: teacher and student answers tokenize differently")
            enc = {**enc, "teacher_input_ids": t["input_ids"], "teacher_labels": t["labels"]}
            longest = max(longest, len(t["input_ids"]))
        if longest > max_length:
            dropped.append(rec.id)
        else:
            kept.append(enc)
    return kept, dropped


def _answer_ids(labels: Sequence[int]) -> list[int]:
    return [t for t in labels if t != IGNORE_INDEX]


@dataclass
class PadCollator:
    """Pads a batch on the right: ``pad_token_id`` in input_ids, 0 in the mask, -100 in labels.

    The teacher's sequences (``teacher_input_ids`` / ``teacher_labels``), when present, are
    padded the same way into ``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels``.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self._pad(features, "")
        if "teacher_input_ids" in features[0]:
            batch.update(self._pad(features, "teacher_"))
        return batch

    def _pad(self, features: Sequence[dict[str, list[int]]], prefix: str) -> dict[str, torch.Tensor]:
        width = max(len(f[f"{prefix}input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f[f"{prefix}input_ids"])
            ids[row, :n] = torch.tensor(f[f"{prefix}input_ids"])
            labels[row, :n] = torch.tensor(f[f"{prefix}labels"])
            mask[row, :n] = 1
        return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}


# ---------------------------------------------------------------- loss


def answer_loss(model: Any, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None,
                shared_prefix: str = "off", tokens: list[BatchTokens] | None = None) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens, with LM-head logits at those positions only.

    Position ``t`` predicts token ``t + 1``, so the kept positions are those whose next label
    is not -100. The summed loss is divided by ``num_items_in_batch`` (the answer-token count
    of the whole accumulated batch, from the Trainer) or else by this batch's count.
    """
    logits, targets = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                    shared_prefix=shared_prefix, tokens=tokens)
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return total / count


def _make_trainer_class() -> type:
    """The Trainer subclass (built lazily so importing this module does not import transformers)."""
    from transformers import Trainer

    class StageTrainer(Trainer):
        """A ``Trainer`` with the answer-only loss and an optional carried-over optimizer state."""

        # compute_loss normalises by the accumulated batch's token count: no further GA scaling.
        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, loss: str = "ce", optimizer_state: dict | None = None,
                     teacher: Teacher | None = None, kl_weight: float = 0.5, carry: dict | None = None,
                     shared_prefix: str = "off", **kwargs: Any):
            super().__init__(*args, **kwargs)
            # What a resumed stage takes over from its checkpoint (see _save_checkpoint).
            self.carry = carry or {}
            self.t0 = time.perf_counter()
            self.add_callback(_seed_callback_class()(self))
            if loss not in LOSSES:
                raise ConfigError(f"train.loss: {loss!r} is not one of {', '.join(LOSSES)}")
            if loss in KL_LOSSES and teacher is None:
                raise ConfigError(f"train.loss: {loss!r} needs a teacher")
            self.loss_name = loss
            self.teacher, self.kl_weight = teacher, kl_weight
            self.shared_prefix = shared_prefix
            self.batch_tokens: list[BatchTokens] = []  # this stage's token accounting, this process
            if teacher is not None:
                teacher.shared_prefix = shared_prefix
            self.loss_parts: list[Any] = []  # summed (ce, kl, tokens) since the last log, this process
            self.carried_optimizer_state = optimizer_state
            # Have the Trainer count the answer tokens of each accumulated batch for compute_loss.
            self.model_accepts_loss_kwargs = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if self.loss_name == "ce":
                loss = answer_loss(model, inputs, num_items_in_batch, self.shared_prefix, self.batch_tokens)
            else:
                loss, parts = distill_loss(model, self.teacher, inputs, loss=self.loss_name, kl_weight=self.kl_weight,
                                           student=self.accelerator.unwrap_model(model),
                                           num_items_in_batch=num_items_in_batch,
                                           shared_prefix=self.shared_prefix, tokens=self.batch_tokens)
                self.loss_parts.append(parts)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch is then the global count, while DDP averages gradients over processes.
                loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if self.loss_parts and "loss" in logs:  # per-token means of this process's terms
                n = max(1, sum(p.n_tokens for p in self.loss_parts))
                if self.loss_name == "ce+kl":
                    logs["ce"] = float(sum(p.ce for p in self.loss_parts)) / n
                logs["kl"] = float(sum(p.kl for p in self.loss_parts)) / n
                self.loss_parts = []
            super().log(logs, start_time)

        def _save_checkpoint(self, model, trial):  # noqa: ANN001
            # Before the Trainer writes trainer_state.json (last), so every complete checkpoint holds
            # the summed loss of the steps before it and the stage's seconds so far.
            self.state.stateful_callbacks[CARRY_KEY] = {
                "step": self.state.global_step,
                "loss_sum": self._total_loss_scalar + float(self._tr_loss.item()),
                "train_wall_s": self.carry.get("train_wall_s", 0.0) + time.perf_counter() - self.t0,
            }
            super()._save_checkpoint(model, trial)

        def create_optimizer(self, model=None):  # noqa: ANN001
            optimizer = super().create_optimizer(model)
            if self.carried_optimizer_state is not None:
                fresh = optimizer.state_dict()
                optimizer.load_state_dict({"state": self.carried_optimizer_state,
                                           "param_groups": fresh["param_groups"]})
            return optimizer

    return StageTrainer


# ---------------------------------------------------------------- progress


def _seed_callback_class() -> type:
    from transformers import TrainerCallback

    class SeedResumedLoss(TrainerCallback):
        """On a resumed stage, starts the Trainer's loss sum at the checkpoint's, so the stage's
        ``train_loss`` is the mean over all its steps, as in an uninterrupted run (same additions
        in the same order when checkpoints fall on logging steps)."""

        def __init__(self, trainer: Any) -> None:
            self.trainer = trainer

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            carry = self.trainer.carry
            if carry.get("step") == state.global_step and state.global_step > 0:
                # The Trainer divides its loss sum by the steps since _initial_global_step (its
                # train_loss in the result and in log_history): count from the stage's start.
                self.trainer._total_loss_scalar = float(carry["loss_sum"])
                self.trainer._initial_global_step = 0

    return SeedResumedLoss


def checkpoint_carry(checkpoint: Path | None) -> dict[str, Any]:
    """The bookkeeping a checkpoint holds for its stage: step, loss sum, seconds (``{}`` for none).

    Checkpoints written before it was kept in trainer_state.json hold only their seconds, in
    ``wall_s.json``.
    """
    if checkpoint is None:
        return {}
    state = read_json(checkpoint / "trainer_state.json")
    carry = dict(state.get("stateful_callbacks", {}).get(CARRY_KEY) or {})
    if not carry and (checkpoint / WALL_FILE).is_file():
        carry = {"train_wall_s": float(read_json(checkpoint / WALL_FILE).get("train_wall_s", 0.0))}
    return carry


def _progress_callback_class() -> type:
    from transformers import TrainerCallback

    class StageProgress(TrainerCallback):
        """Feeds a rich progress bar (stage i/N, step, loss, ETA) from the main process."""

        def __init__(self, progress: Any, label: str) -> None:
            self.progress, self.label, self.task = progress, label, None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                self.task = self.progress.add_task(self.label, total=state.max_steps,
                                                   completed=state.global_step, loss=float("nan"))

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.task is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.task is not None and logs and "loss" in logs:
                self.progress.update(self.task, loss=logs["loss"])

    return StageProgress


def _make_progress(enabled: bool) -> Any:
    return progress_bar("{task.description}", "loss {task.fields[loss]:.4f}", enabled)


# ---------------------------------------------------------------- run directory


def train_record(stages: Sequence[Stage], model_name: str, lora: LoraArgs, args: TrainArgs,
                 teacher_fingerprint: str | None = None) -> dict[str, Any]:
    """What determines the trained weights (``train/config.json``; resume refuses a different one).

    ``teacher_fingerprint`` names a frozen KL teacher's weights (a changed teacher is a different run).
    """
    stage_info = []
    for s in stages:
        h = hashlib.sha256()
        for r in s.records:
            h.update(json.dumps(record_row(r), sort_keys=True, ensure_ascii=False).encode())
        stage_info.append({"index": s.index, "tau": s.tau, "k": s.k, "n_records": len(s.records),
                           "fingerprint": h.hexdigest()[:16]})
    record = {"model": model_name, "model_fingerprint": model_identity(model_name), "lora": identity_view(lora),
              "train": identity_view(args), "stages": stage_info}
    if teacher_fingerprint is not None:
        record["teacher_fingerprint"] = teacher_fingerprint
    return as_json(record)


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def checkpoint_problem(path: Path, world_size: int = 1) -> str | None:
    """Why a stage cannot resume from ``path`` (None: it can).

    Every file a resume reads is checked the way it will be read, short of unpickling:
    trainer_state.json (written last, so its absence means a save cut short) is parsed, the
    zip archives ``torch.save`` writes are checked member by member (CRC), the adapter's
    safetensors header is checked against the file. A checkpoint damaged by a crash or a full
    disk is found here instead of failing the Trainer's resume with a raw traceback.
    """
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "trainer_state.json missing or unreadable (the save was cut short)"
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    for name in ["adapter_model.safetensors", "optimizer.pt", "scheduler.pt", *rng]:
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(f), "np") as fh:  # checks the header covers the file exactly
                    fh.keys()
            else:
                with zipfile.ZipFile(f) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{name}: member {bad} is corrupt"
        except Exception as exc:  # any failure to read it means it cannot be resumed from
            return f"{name} unreadable ({type(exc).__name__})"
    return None


def _resume_point(stage_dir: Path, world_size: int) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest usable ``checkpoint-N`` of a stage and the unusable newer ones, with why."""
    found = sorted((p for p in stage_dir.glob("checkpoint-*") if _checkpoint_step(p) >= 0 and p.is_dir()),
                   key=_checkpoint_step, reverse=True)
    unusable = []
    for ckpt in found:
        problem = checkpoint_problem(ckpt, world_size)
        if problem is None:
            return ckpt, unusable
        unusable.append((ckpt, problem))
    return None, unusable


def latest_checkpoint(stage_dir: Path, world_size: int = 1) -> tuple[Path | None, list[Path]]:
    """The newest usable ``checkpoint-N`` of a stage and the unusable ones newer than it."""
    ckpt, unusable = _resume_point(stage_dir, world_size)
    return ckpt, [path for path, _ in unusable]


def stage_done(stage_dir: Path) -> bool:
    return (stage_dir / "final" / DONE_FILE).is_file()


def _check_run_dir(train_dir: Path, adapter_dir: Path, record: dict, resume: bool, force: bool) -> None:
    """Refuse to overwrite or to mix runs (read-only, so every process can run it)."""
    if force:
        return
    occupied = (train_dir.is_dir() and any(train_dir.iterdir())) or adapter_dir.exists()
    if not occupied:
        return
    if not resume:
        where = train_dir if train_dir.is_dir() else adapter_dir
        raise RunDirError(f"{where} already holds a training run; use --resume to continue it or --force to start over")
    saved_path = train_dir / "config.json"
    if not saved_path.is_file():
        raise RunDirError(f"{train_dir} has no config.json, so it cannot be resumed; use --force to start over")
    saved = read_json(saved_path)
    if saved != record:
        raise RunDirError(f"{train_dir} was trained with a different {describe_differences(saved, record)}; "
                          "set them back to resume it (--force discards it)")


# ---------------------------------------------------------------- training


def _training_arguments(args: TrainArgs, stage_dir: Path, seed: int, use_cpu: bool, bf16: bool,
                        world_size: int) -> Any:
    from transformers import TrainingArguments

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
        eval_strategy="no",
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
    # ``train.extra`` last: what the user passes through wins over our defaults (its keys never
    # name a field set above from TrainArgs: TrainArgs.validate refuses those).
    try:
        return TrainingArguments(**{**ours, **args.extra})
    except (TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"train.extra: {text}") from exc


def resolve_dtype(args: TrainArgs, use_cpu: bool) -> torch.dtype:
    """``train.dtype``: ``auto`` = bf16 on a GPU that supports it, else fp32."""
    from .models import pick_dtype

    return pick_dtype("cpu" if use_cpu else "cuda") if args.dtype == "auto" else getattr(torch, args.dtype)


def check_passthrough(args: TrainArgs, lora: LoraArgs) -> None:
    """Have transformers and peft check ``train.extra`` / ``lora.extra`` before anything is written."""
    import tempfile

    use_cpu = args.use_cpu or not torch.cuda.is_available()
    bf16 = resolve_dtype(args, use_cpu) == torch.bfloat16
    with tempfile.TemporaryDirectory() as tmp:
        _training_arguments(args, Path(tmp), args.seed, use_cpu, bf16, 1)
    lora.to_peft()


def _barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _stage_dir(train_dir: Path, index: int) -> Path:
    return train_dir / f"stage-{index}"


def _load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir), device="cpu"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RunDirError(f"{adapter_dir}: adapter does not match the model ({unexpected[0]} unexpected)")


def _write_history(train_dir: Path, stages: Sequence[Stage]) -> None:
    entries = [read_json(_stage_dir(train_dir, s.index) / "final" / DONE_FILE)
               for s in stages if stage_done(_stage_dir(train_dir, s.index))]
    write_json(train_dir / "history.json",
               {"stages": entries, "train_wall_s": sum(e["train_wall_s"] for e in entries),
                "teacher_wall_s": sum(e.get("teacher_wall_s", 0.0) for e in entries)})


@dataclass
class _Session:
    """What every stage of one ``train_stages`` call shares."""

    model: Any
    tokenizer: Any
    train_dir: Path
    seed: int
    use_cpu: bool
    bf16: bool
    world: int
    is_main: bool
    progress: Any
    callbacks: Sequence[Any]
    teacher: Teacher | None = None


def _prepare_run_dir(
    stages: Sequence[Stage], train_dir: Path, adapter_dir: Path, record: dict, resume: bool, force: bool,
    is_main: bool, world: int,
) -> tuple[int, Path | None]:
    """Position of the first unfinished stage and the checkpoint to resume it from.

    Every process reads the directory before the main process changes it (wipes it with
    ``force``, deletes incomplete checkpoints and leftover temp dirs, writes config.json).
    """
    fresh = force or not resume
    done = [not fresh and stage_done(_stage_dir(train_dir, s.index)) for s in stages]
    first_open = next((i for i, d in enumerate(done) if not d), len(stages))
    resume_from, unusable, leftovers = None, [], []
    if first_open < len(stages) and not fresh:
        open_dir = _stage_dir(train_dir, stages[first_open].index)
        resume_from, unusable = _resume_point(open_dir, world)
        leftovers = list(open_dir.glob(".final.*"))  # an interrupted atomic write of final/
    _barrier()
    if is_main:
        if force:
            shutil.rmtree(train_dir, ignore_errors=True)
            shutil.rmtree(adapter_dir, ignore_errors=True)
        if unusable:
            index = stages[first_open].index
            then = f"resuming from {resume_from.name}" if resume_from else "restarting the stage"
            for path, problem in unusable:
                logger.warning("stage %d: %s cannot be resumed from (%s); %s", index, path.name, problem, then)
        for path in [p for p, _ in unusable] + leftovers:
            shutil.rmtree(path, ignore_errors=True)
        write_json(train_dir / "config.json", record)
    _barrier()
    return first_open, resume_from


def _train_stage(
    sess: _Session, stage: Stage, args: TrainArgs, label: str, checkpoint: Path | None,
    optimizer_state: dict | None, keep_optimizer: bool,
) -> dict | None:
    """Run one stage's Trainer and write its final/ adapter; returns the optimizer state to carry."""
    from transformers import PrinterCallback

    sdir = _stage_dir(sess.train_dir, stage.index)
    data, dropped = tokenize_records(stage.records, sess.tokenizer, args.max_length, with_teacher=args.uses_teacher())
    if dropped:
        logger.warning("stage %d: dropped %d of %d records longer than max_length=%d tokens (first: %s)",
                       stage.index, len(dropped), len(stage.records), args.max_length, dropped[0])
    if not data:
        raise DataError(f"stage {stage.index}: no record fits max_length={args.max_length} tokens")
    tok = sess.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    carry = checkpoint_carry(checkpoint)
    before_s = float(carry.get("train_wall_s", 0.0))
    trainer = _make_trainer_class()(
        model=sess.model,
        args=_training_arguments(args, sdir, sess.seed + stage.index, sess.use_cpu, sess.bf16, sess.world),
        train_dataset=data,
        data_collator=PadCollator(pad_id),
        callbacks=[_progress_callback_class()(sess.progress, label),
                   *sess.callbacks],
        loss=args.loss,
        optimizer_state=optimizer_state if args.optimizer_state == "keep" else None,
        teacher=sess.teacher,
        kl_weight=args.kl_weight,
        carry=carry,
        shared_prefix=args.shared_prefix,
    )
    trainer.remove_callback(PrinterCallback)
    teacher_before = sess.teacher.stats() if sess.teacher is not None else None
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - t0
    teacher_stats = {"teacher_wall_s": 0.0}
    if sess.teacher is not None:  # this stage's share of the teacher's work (this process)
        teacher_stats = {k: v - teacher_before[k] for k, v in sess.teacher.stats().items()}
    steps_run = result.global_step - (_checkpoint_step(checkpoint) if checkpoint else 0)
    carried = trainer.optimizer.state_dict()["state"] if keep_optimizer else None
    summary = {
        "stage": stage.index, "tau": stage.tau, "k": stage.k, "n_records": len(stage.records),
        "n_dropped": len(dropped), "steps": result.global_step, "train_loss": result.training_loss,
        "train_wall_s": before_s + wall, "wall_s_before_resume": before_s, "s_per_step": wall / max(1, steps_run),
        **token_summary(trainer.batch_tokens),
        **teacher_stats,
        "resumed_from": checkpoint.name if checkpoint else None, "log_history": trainer.state.log_history,
    }
    if sess.is_main:
        with atomic_dir(sdir / "final") as tmp:
            sess.model.save_pretrained(str(tmp))
            if carried is not None:
                torch.save(carried, tmp / "optimizer.pt")
            write_json(tmp / DONE_FILE, summary)  # last: a final/ with DONE.json is complete
        if not args.keep_checkpoints:
            for old in sdir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.free_memory()
    _barrier()
    return carried


def _check_teacher_prompts(stages: Sequence[Stage], loss: str) -> None:
    for s in stages:
        missing = next((r for r in s.records if r.teacher_messages is None), None)
        if missing is not None:
            raise ConfigError(f"train.loss {loss!r} needs teacher prompts, but stage {s.index} record {missing.id!r} "
                              "has none (build the stages with a teacher_point)")


def _check_same_vocabulary(teacher: Any, student: Any, where: str) -> None:
    t, s = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    if t != s:
        raise ModelError(f"train.teacher {where}: vocabulary of {t} tokens, the student has {s}")


def train_stages(
    stages: Sequence[Stage],
    *,
    model_name: str,
    lora: LoraArgs,
    args: TrainArgs,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train one LoRA adapter on ``stages`` in order; returns ``run_dir/adapter``.

    Each stage continues from the adapter weights the previous stage ended with. ``resume``
    continues an interrupted run (see the module docstring); ``force`` deletes an existing
    one. ``callbacks`` are extra ``TrainerCallback`` objects added to every stage's Trainer.
    """
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    from .models import load_model, set_cpu_threads

    if not stages:
        raise ConfigError("no stages to train")
    lora.validate()
    args.validate()
    unknown = sorted(set(args.stage_overrides) - {s.index for s in stages})
    if unknown:
        raise ConfigError(f"train.stage_overrides: no stage {unknown[0]} "
                          f"(stages: {', '.join(str(s.index) for s in stages)})")
    stage_args = [args.for_stage(s.index) for s in stages]
    if args.uses_teacher():
        _check_teacher_prompts(stages, args.loss)
    run_dir = Path(run_dir)
    train_dir, adapter_dir = run_dir / "train", run_dir / "adapter"
    if args.num_threads:
        set_cpu_threads(args.num_threads)

    frozen = args.uses_teacher() and args.teacher != SELF_TEACHER
    teacher_fp = teacher_fingerprint(args.teacher, model_name) if frozen else None
    record = train_record(stages, model_name, lora, args, teacher_fp)
    _check_run_dir(train_dir, adapter_dir, record, resume, force)
    # accelerate treats a CUDA-less machine as multi-CPU only when asked for the CPU explicitly.
    use_cpu = args.use_cpu or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)  # under torchrun / accelerate launch: joins the process group
    is_main, world = state.is_main_process, state.num_processes
    first_open, resume_from = _prepare_run_dir(stages, train_dir, adapter_dir, record, resume, force, is_main, world)
    if first_open == len(stages) and adapter_dir.is_dir():
        return adapter_dir

    dtype = resolve_dtype(args, use_cpu)
    base, tokenizer = load_model(model_name, dtype=dtype, device="cpu")  # the Trainer places it
    set_seed(args.seed)
    model = get_peft_model(base, lora.to_peft())
    carried: dict | None = None
    if first_open > 0:
        previous = _stage_dir(train_dir, stages[first_open - 1].index) / "final"
        _load_adapter_weights(model, previous)
        if first_open < len(stages) and stage_args[first_open].optimizer_state == "keep":
            carried = torch.load(previous / "optimizer.pt", map_location="cpu", weights_only=True)

    teacher = None
    if args.uses_teacher():
        cache = None
        if frozen and args.teacher_cache:
            cache = TeacherCache(train_dir / CACHE_DIR, teacher_fp, args.kl_topk, args.kl_temperature)
        teacher = Teacher(load_frozen_teacher(args.teacher, model_name, dtype) if frozen else None,
                          args.kl_topk, args.kl_temperature, cache)
        if frozen:
            _check_same_vocabulary(teacher.model, model, args.teacher)

    with _make_progress(is_main) as progress:
        sess = _Session(model, tokenizer, train_dir, args.seed, use_cpu, dtype == torch.bfloat16, world, is_main,
                        progress, callbacks, teacher)
        for pos in range(first_open, len(stages)):
            keep_next = pos + 1 < len(stages) and stage_args[pos + 1].optimizer_state == "keep"
            carried = _train_stage(sess, stages[pos], stage_args[pos], f"stage {pos + 1}/{len(stages)}",
                                   resume_from if pos == first_open else None, carried, keep_next)
            if is_main:
                _write_history(train_dir, stages)

    if is_main:
        last_final = _stage_dir(train_dir, stages[-1].index) / "final"
        with atomic_dir(adapter_dir) as tmp:
            for item in last_final.iterdir():
                if item.is_file() and item.name not in (DONE_FILE, "optimizer.pt"):
                    shutil.copy2(item, tmp / item.name)
    _barrier()
    return adapter_dir


__all__ = [
    "LoraArgs", "TrainArgs", "PadCollator", "answer_loss", "latest_checkpoint", "stage_done",
    "tokenize_records", "train_record", "train_stages",
]
