"""The run directory's training bookkeeping: what was trained, which stages are done, which
checkpoint an unfinished stage resumes from (verified before use) and what it carries over.

Layout (written by the main process only; files and directories atomically): see
:mod:`promptintern.training.loop`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..args import LoraArgs, TrainArgs
from ..checksums import directory_problem, format_problem, has_checksums
from ..errors import RunDirError
from ..identity import as_json, describe_differences, identity_view, model_identity
from ..io import read_json, write_json
from ..stages import Stage, record_row

logger = logging.getLogger("promptintern.training")  # one logger name for all training messages

DONE_FILE = "DONE.json"
_RANK_NAME = re.compile(r"rng_state_\d+\.pth")  # not in a checkpoint's checksums: checked by format
WALL_FILE = "wall_s.json"  # in checkpoints of older versions: the stage's training seconds up to it
CARRY_KEY = "promptintern_stage"  # our bookkeeping inside a checkpoint's trainer_state.json


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

    Every file a resume reads must be there; their checksums (written after the Trainer's save,
    see :mod:`promptintern.checksums`) must match, or, in a checkpoint of an older version, their
    formats must check out. trainer_state.json (written last by the Trainer, so its absence means
    a save cut short) must name the step. A checkpoint damaged by a crash, a full disk or a stray
    edit is found here instead of failing the Trainer's resume with a raw traceback, or, worse,
    of training on from wrong weights.
    """
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{r}.pth" for r in range(world_size)]
    for name in ["trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", *rng]:
        if not (path / name).is_file():
            return f"{name} missing" + (" (the save was cut short)" if name == "trainer_state.json" else "")
    problem = directory_problem(path)
    if problem is None and has_checksums(path):
        problem = next(filter(None, (format_problem(path / n) for n in rng if _RANK_NAME.fullmatch(n))), None)
    if problem is not None:
        return problem
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        step = state["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json does not hold the step"
    if not isinstance(step, int) or step != _checkpoint_step(path):
        return f"trainer_state.json names step {step!r}, not {_checkpoint_step(path)}"
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


def stage_label(index: int, n_stages: int) -> str:
    """How a stage is named to the user, in warnings and progress alike: ``stage 2/3`` for index 1."""
    return f"stage {index + 1}/{n_stages}"


def adapter_problem(adapter_dir: Path) -> str | None:
    """Why ``run_dir/adapter`` cannot be used (None: it can); see :mod:`promptintern.checksums`."""
    if not (adapter_dir / "adapter_config.json").is_file():
        return "adapter_config.json missing"
    return directory_problem(adapter_dir)


def _damaged_finals(stages: Sequence[Stage], train_dir: Path, adapter_dir: Path,
                    first_open: int) -> list[tuple[int, str]]:
    """(position, problem) of the done stages whose final/ a resume would read but cannot trust,
    newest first: the last done stage's (its adapter starts the next stage, or is copied to
    adapter/), then the one before it if that one is damaged too, and so on."""
    if first_open == len(stages) and adapter_dir.is_dir():
        problem = adapter_problem(adapter_dir)
        if problem is None:
            return []
        logger.warning("%s: %s; rebuilding it from the last stage's final/", adapter_dir, problem)
    out = []
    for pos in range(first_open - 1, -1, -1):
        problem = directory_problem(_stage_dir(train_dir, stages[pos].index) / "final")
        if problem is None:
            break
        out.append((pos, problem))
    return out


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


def _barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    import torch  # here: the run directory's bookkeeping is read without torch (the pipeline, compare)

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _stage_dir(train_dir: Path, index: int) -> Path:
    return train_dir / f"stage-{index}"


def read_history(run_dir: Path) -> dict[str, Any]:
    """``run_dir/train/history.json`` (per-stage loss curves and seconds), or an empty history."""
    path = Path(run_dir) / "train" / "history.json"
    return read_json(path) if path.is_file() else {"stages": [], "train_wall_s": 0.0}


def _write_history(train_dir: Path, stages: Sequence[Stage]) -> None:
    entries = [read_json(_stage_dir(train_dir, s.index) / "final" / DONE_FILE)
               for s in stages if stage_done(_stage_dir(train_dir, s.index))]
    write_json(train_dir / "history.json",
               {"stages": entries, "train_wall_s": sum(e["train_wall_s"] for e in entries),
                "teacher_wall_s": sum(e.get("teacher_wall_s", 0.0) for e in entries)})


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
    damaged = [] if fresh else _damaged_finals(stages, train_dir, adapter_dir, first_open)
    first_open -= len(damaged)
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
        for pos, problem in damaged:
            logger.warning("%s: final/ %s; training the stage again", stage_label(stages[pos].index, len(stages)),
                           problem)
        if damaged:  # the damaged stage's final/ and every later stage's work go: they build on it
            for s in stages[first_open:]:
                shutil.rmtree(_stage_dir(train_dir, s.index) / "final", ignore_errors=True)
            for s in stages[first_open + 1:]:
                shutil.rmtree(_stage_dir(train_dir, s.index), ignore_errors=True)
        if unusable:
            index = stages[first_open].index
            then = f"resuming from {resume_from.name}" if resume_from else "restarting the stage"
            for path, problem in unusable:
                logger.warning("%s: %s cannot be resumed from (%s); %s", stage_label(index, len(stages)), path.name,
                               problem, then)
        for path in [p for p, _ in unusable] + leftovers:
            shutil.rmtree(path, ignore_errors=True)
        write_json(train_dir / "config.json", record)
    _barrier()
    return first_open, resume_from
