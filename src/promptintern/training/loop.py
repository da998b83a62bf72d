"""The stage loop of progressive LoRA training: one adapter, trained stage after stage.

PromptIntern fine-tunes a single LoRA adapter on a sequence of stage datasets whose prompts
shrink (template compressed, fewer examples) until only the query is left. Each stage is one
Hugging Face ``Trainer`` run that starts from the adapter weights the previous stage ended
with, so logging (``report_to``), gradient accumulation, checkpoints and multi-process launch
come from the library: ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu``
(data parallel; gloo on a machine without CUDA).

This module is the stage loop; its parts are the other modules of :mod:`promptintern.training`
(records to tokens, the losses, the teacher, the Hugging Face glue, the checkpoint bookkeeping).

Run directory (written by the main process only; files and directories atomically)::

    run_dir/train/config.json              what is trained: model, LoRA, TrainArgs, stage fingerprints
    run_dir/train/history.json             per stage: loss curve (Trainer log_history), steps, wall seconds,
                                           validation loss (``validation_size``), best step (``select_best``)
    run_dir/train/stage-{i}/checkpoint-N/  Trainer checkpoints inside stage i, every ``save_steps``
                                           (deleted once the stage is done unless ``keep_checkpoints``)
    run_dir/train/stage-{i}/final/         the adapter after stage i; its DONE.json marks the stage done
                                           (+ optimizer.pt when the next stage keeps the optimizer state)
    run_dir/train/teacher-cache/           a frozen KL teacher's top-k targets per instance (``teacher_cache``)
    run_dir/adapter/                       the final adapter: a copy of the last stage's final/

Each checkpoint, final/ and adapter/ holds ``checksums.json`` (:mod:`promptintern.checksums`),
verified before a resume builds on it: a damaged checkpoint is passed over for an older one, a
damaged final/ trains its stage again, a damaged adapter/ is copied again from the last final/.
SIGTERM / SIGINT save a checkpoint at the current step and stop (:mod:`.stop`).

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
- Losses ``kl`` and ``ce+kl`` (beyond the paper, see :mod:`.loss` and :mod:`.teacher`): distil a
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
  stages); the LR schedule (warm-up, decay) restarts in every stage, the Trainer's own behaviour,
  unless ``lr_span: run``: one schedule over all stages' steps, each stage entering it where the
  previous one stopped (so a 3-stage run and a 1-stage run of the same steps see the same LRs).
- ``optimizer_state``: ``reset`` (default) starts every stage with a fresh AdamW; ``keep``
  carries the AdamW moments and step counts over from the previous stage, so the new stage
  skips Adam's bias-correction warm-up and continues the previous stage's update directions.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..args import KL_LOSSES, LoraArgs, TrainArgs
from ..checksums import write_checksums
from ..errors import ConfigError, DataError, ModelError, RunDirError, Stopped, disk_full_is_one_line
from ..io import atomic_dir, write_json
from ..stages import Stage, StageRecord
from .checkpoints import (
    DONE_FILE,
    _barrier,
    _check_run_dir,
    _checkpoint_step,
    _prepare_run_dir,
    _stage_dir,
    _write_history,
    adapter_problem,
    checkpoint_carry,
    stage_label,
    train_record,
)
from .data import PadCollator, needs_teacher, tokenize_records
from .hf import StageProgress, StageTrainer, _make_progress, _training_arguments, resolve_dtype
from .shared_prefix import token_summary
from .stop import StopRequest, stop_callback, stop_requests
from .teacher import CACHE_DIR, Teacher, TeacherCache, frozen_teacher_fingerprint, load_frozen_teacher
from .validation import early_stopping, stage_validation, stop_record

logger = logging.getLogger("promptintern.training")  # one logger name for all training messages


def _load_adapter_weights(model: Any, adapter_dir: Path) -> None:
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    result = set_peft_model_state_dict(model, load_peft_weights(str(adapter_dir), device="cpu"))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RunDirError(f"{adapter_dir}: adapter does not match the model ({unexpected[0]} unexpected)")


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
    validation: Callable[[Stage], Sequence[StageRecord]] | None = None
    stop: StopRequest = field(default_factory=StopRequest)


def _validation_data(sess: _Session, stage: Stage, args: TrainArgs, label: str) -> list[dict[str, list[int]]]:
    """The stage's validation records as token ids (none when validation is off or the task has none)."""
    if sess.validation is None or not args.validates():
        return []
    records = sess.validation(stage)
    data, dropped = tokenize_records(records, sess.tokenizer, args.max_length)
    if dropped:
        logger.warning("%s: %d of %d validation records longer than max_length=%d tokens left out",
                       label, len(dropped), len(records), args.max_length)
    return data


def _train_stage(
    sess: _Session, stage: Stage, args: TrainArgs, label: str, checkpoint: Path | None,
    optimizer_state: dict | None, keep_optimizer: bool, last: bool = False,
    lr_span: tuple[int, int] | None = None,
) -> dict | None:
    """Run one stage's Trainer, score it on validation records and write its final/ adapter;
    returns the optimizer state to carry."""
    from transformers import PrinterCallback

    sdir = _stage_dir(sess.train_dir, stage.index)
    data, dropped = tokenize_records(stage.records, sess.tokenizer, args.max_length,
                                     with_teacher=args.loss in KL_LOSSES, teacher_rows_kl=_teacher_rows_kl(args))
    if dropped:
        logger.warning("%s: dropped %d of %d records longer than max_length=%d tokens (first: %s)",
                       label, len(dropped), len(stage.records), args.max_length, dropped[0])
    if not data:
        raise DataError(f"{label}: no record fits max_length={args.max_length} tokens")
    val_data = _validation_data(sess, stage, args, label)
    early_stop = args.early_stopping_patience is not None
    select_best = (last and args.select_best) or early_stop
    if select_best and not val_data:
        what = "early_stopping_patience" if early_stop else "select_best"
        raise DataError(f"train.{what}: {label} has no validation record within max_length")
    tok = sess.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    carry = checkpoint_carry(checkpoint)
    before_s = float(carry.get("train_wall_s", 0.0))
    trainer = StageTrainer(
        model=sess.model,
        args=_training_arguments(args, sdir, sess.seed + stage.index, sess.use_cpu, sess.bf16, sess.world,
                                 select_best=select_best),
        train_dataset=data,
        eval_dataset=val_data if select_best else None,
        data_collator=PadCollator(pad_id),
        callbacks=[StageProgress(sess.progress, label), stop_callback(sess.stop),
                   *early_stopping(args.early_stopping_patience), *sess.callbacks],
        loss=args.loss,
        optimizer_state=optimizer_state if args.optimizer_state == "keep" else None,
        teacher=sess.teacher,
        kl_weight=args.kl_weight,
        carry=carry,
        shared_prefix=args.shared_prefix,
        lr_span=lr_span,
        rows_loss=args.teacher_rows_loss,
    )
    trainer.remove_callback(PrinterCallback)
    teacher_before = sess.teacher.stats() if sess.teacher is not None else None
    t0 = time.perf_counter()
    with disk_full_is_one_line(f"a checkpoint of {label} in {sdir}"):
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - t0
    if (sdir / f"checkpoint-{result.global_step}").is_dir():  # else the stop came after the last step: finish it
        _raise_if_stopped(sess.stop, f"in {label} at step {result.global_step}; checkpoint-{result.global_step} saved")
    teacher_stats = {"teacher_wall_s": 0.0}
    if sess.teacher is not None:  # this stage's share of the teacher's work (this process)
        teacher_stats = {k: v - teacher_before[k] for k, v in sess.teacher.stats().items()}
    steps_run = result.global_step - (_checkpoint_step(checkpoint) if checkpoint else 0)
    carried = trainer.optimizer.state_dict()["state"] if keep_optimizer else None
    validation = stage_validation(trainer, val_data, select_best)  # after the stage (the best checkpoint's weights)
    validation.update(stop_record(trainer.state, args.early_stopping_patience))
    summary = {
        "stage": stage.index, "tau": stage.tau, "k": stage.k, "n_records": len(stage.records),
        "n_dropped": len(dropped), "steps": result.global_step, "train_loss": result.training_loss,
        "train_wall_s": before_s + wall, "wall_s_before_resume": before_s, "s_per_step": wall / max(1, steps_run),
        **token_summary(trainer.batch_tokens),
        **teacher_stats, **validation,
        "resumed_from": checkpoint.name if checkpoint else None, "log_history": trainer.state.log_history,
    }
    if sess.is_main:
        with disk_full_is_one_line(f"the adapter of {label} in {sdir / 'final'}"), atomic_dir(sdir / "final") as tmp:
            sess.model.save_pretrained(str(tmp))
            if carried is not None:
                torch.save(carried, tmp / "optimizer.pt")
            write_checksums(tmp)  # what a resume verifies before it builds on this stage
            write_json(tmp / DONE_FILE, summary)  # last: a final/ with DONE.json is complete
        if not args.keep_checkpoints:
            for old in sdir.glob("checkpoint-*"):
                shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.free_memory()
    _barrier()
    return carried


def _raise_if_stopped(stop: StopRequest, where: str) -> None:
    if stop.signum is not None:
        raise Stopped(f"stopped by {stop.name} {where}; rerun with --resume to continue", stop.signum)


def _publish_adapter(train_dir: Path, stages: Sequence[Stage], adapter_dir: Path) -> None:
    """``adapter/``: the last stage's final/ adapter files, with their checksums."""
    last_final = _stage_dir(train_dir, stages[-1].index) / "final"
    with disk_full_is_one_line(str(adapter_dir)), atomic_dir(adapter_dir) as tmp:
        for item in last_final.iterdir():
            if item.is_file() and item.name not in (DONE_FILE, "optimizer.pt", "checksums.json"):
                shutil.copy2(item, tmp / item.name)
        write_checksums(tmp)


def _lr_spans(stage_args: Sequence[TrainArgs]) -> list[tuple[int, int]]:
    """Per stage under ``lr_span: run``: (steps of the stages before it, steps of all stages)."""
    steps = [int(a.max_steps_per_stage) for a in stage_args]  # validated: set for every stage
    return [(sum(steps[:i]), sum(steps)) for i in range(len(steps))]


def _teacher_rows_kl(args: TrainArgs) -> bool | None:
    """How the rows of data.teacher_answers learn: by KL (True), by CE (False), like the gold pairs (None)."""
    return None if args.teacher_rows_loss is None else args.teacher_rows_loss == "kl"


def _check_teacher_prompts(stages: Sequence[Stage], args: TrainArgs) -> None:
    for s in stages:
        missing = next((r for r in s.records if r.teacher_messages is None
                        and needs_teacher(r, args.loss in KL_LOSSES, _teacher_rows_kl(args))), None)
        if missing is not None:
            what = "train.teacher_rows_loss 'kl'" if missing.from_teacher else f"train.loss {args.loss!r}"
            raise ConfigError(f"{what} needs teacher prompts, but stage {s.index} record {missing.id!r} "
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
    validation: Callable[[Stage], Sequence[StageRecord]] | None = None,
) -> Path:
    """Train one LoRA adapter on ``stages`` in order; returns ``run_dir/adapter``.

    Each stage continues from the adapter weights the previous stage ended with. ``resume``
    continues an interrupted run (see the module docstring); ``force`` deletes an existing
    one. ``callbacks`` are extra ``TrainerCallback`` objects added to every stage's Trainer.
    ``validation(stage)`` gives a stage's validation records, built with its own prompt (called
    only for the stages trained in this call); see :mod:`promptintern.training.validation`.
    """
    from accelerate import PartialState
    from peft import get_peft_model
    from transformers import set_seed

    from ..models import load_model, set_cpu_threads

    if not stages:
        raise ConfigError("no stages to train")
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run, --force deletes it")
    lora.validate()
    args.validate()
    unknown = sorted(set(args.stage_overrides) - {s.index for s in stages})
    if unknown:
        raise ConfigError(f"train.stage_overrides: no stage {unknown[0]} "
                          f"(stages: {', '.join(str(s.index) for s in stages)})")
    stage_args = [args.for_stage(s.index) for s in stages]
    spans = _lr_spans(stage_args) if args.lr_span == "run" else [None] * len(stages)
    if args.uses_teacher():
        _check_teacher_prompts(stages, args)
    run_dir = Path(run_dir)
    train_dir, adapter_dir = run_dir / "train", run_dir / "adapter"
    if args.num_threads:
        set_cpu_threads(args.num_threads)

    frozen = args.frozen_teacher() is not None
    teacher_fp = frozen_teacher_fingerprint(args, model_name)
    record = train_record(stages, model_name, lora, args, teacher_fp)
    _check_run_dir(train_dir, adapter_dir, record, resume, force)
    # accelerate treats a CUDA-less machine as multi-CPU only when asked for the CPU explicitly.
    use_cpu = args.use_cpu or not torch.cuda.is_available()
    state = PartialState(cpu=use_cpu)  # under torchrun / accelerate launch: joins the process group
    is_main, world = state.is_main_process, state.num_processes
    first_open, resume_from = _prepare_run_dir(stages, train_dir, adapter_dir, record, resume, force, is_main, world)
    if first_open == len(stages):
        if is_main and adapter_problem(adapter_dir) is not None:  # missing, or damaged (warned): rebuilt
            _publish_adapter(train_dir, stages, adapter_dir)
        _barrier()
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

    with _make_progress(is_main) as progress, stop_requests(world == 1) as stop:
        sess = _Session(model, tokenizer, train_dir, args.seed, use_cpu, dtype == torch.bfloat16, world, is_main,
                        progress, callbacks, teacher, validation, stop)
        for pos in range(first_open, len(stages)):
            label = stage_label(stages[pos].index, len(stages))
            _raise_if_stopped(stop, f"before {label}")
            keep_next = pos + 1 < len(stages) and stage_args[pos + 1].optimizer_state == "keep"
            carried = _train_stage(sess, stages[pos], stage_args[pos], label,
                                   resume_from if pos == first_open else None, carried, keep_next,
                                   last=pos == len(stages) - 1, lr_span=spans[pos])
            if is_main:
                _write_history(train_dir, stages)

        if is_main:
            _publish_adapter(train_dir, stages, adapter_dir)
        _barrier()
        _raise_if_stopped(stop, "after training")
    return adapter_dir

