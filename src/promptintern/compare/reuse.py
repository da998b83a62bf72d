"""No stage is trained twice: a staged method starts from stages another method already trained.

PromptIntern's first stage, at the full prompt (τ0, K) on all pairs, is the same training as
full-prompt FT: same records, same seed (stage 0 is seeded with ``train.seed``), same settings,
same validation prompt. Likewise ``promptintern+teacher`` trains its stages before the last on
the labelled pairs alone, exactly as ``promptintern`` does. When such methods are compared with
the same seed, the later one's run directory is given the earlier one's finished leading stages
(each ``final/`` adapter, which under ``converge`` is the best checkpoint) and the pipeline
resumes at the first stage not given, as after an interruption. The copied ``DONE.json`` keeps
each stage's steps, seconds and tokens, so the method is still charged for them, and it names
where it came from (``reused_from``). A method's last stage is never taken from another method.

It is done only where the training is provably the same: every given stage's record
fingerprint, the model, LoRA settings and that stage's training settings (checkpoint and scoring
cadence included) must match what the other method's ``train/config.json`` recorded, stage by
stage from the first; otherwise the stages are trained.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from ..args import KL_FIELDS, KL_LOSSES
from ..identity import identity_view
from ..io import atomic_dir, locked_dir, read_json, write_json
from .plan import METHODS, Plan

REFERENCE = "full-prompt"


def _stage_settings(train: Any, index: int) -> dict[str, Any]:
    """What of the training settings decides stage ``index``'s weights (the scoring cadence included)."""
    args = train.for_stage(index)
    view = identity_view(args)
    view.pop("stage_overrides", None)
    if args.loss not in KL_LOSSES:  # gold pairs learn no teacher logits; teacher rows would change the records
        for name in (*KL_FIELDS, "teacher_rows_loss"):
            view.pop(name, None)
    return {**view, "save_steps": args.save_steps}


def _same_stages(saved: dict[str, Any], record: dict[str, Any], donor_train: Any, train: Any, n: int) -> int:
    """How many leading stages (at most ``n``) of ``record`` the donor's recorded training already did."""
    if any(saved.get(key) != record.get(key) for key in ("model", "model_fingerprint", "lora")):
        return 0
    same = 0
    for i, (theirs, ours) in enumerate(zip(saved.get("stages", []), record["stages"][:n], strict=False)):
        if theirs != ours or _stage_settings(donor_train, i) != _stage_settings(train, i):
            break
        same += 1
    return same


def reusable(plan: Plan, method: str) -> bool:
    """Whether ``method`` is a staged method that may start from stages other methods trained in this plan."""
    return (plan.args.budget == "converge" and plan.args.reuse_stage0 and REFERENCE in plan.args.methods
            and METHODS[method].pipeline != REFERENCE and not METHODS[method].prefix_cache_of
            and METHODS[method].loss is None and plan.n_stages(method) > 1)


def _donors(plan: Plan, method: str) -> list[str]:
    """Methods of the plan whose finished stages ``method`` may start from: full-prompt FT first."""
    others = [m for m in plan.args.ordered_methods() if m != method and not METHODS[m].prefix_cache_of
              and (m == REFERENCE or reusable(plan, m))]
    return sorted(others, key=lambda m: m != REFERENCE)


def _finished_stages(train_dir: Any, n: int) -> int:
    from ..training.checkpoints import DONE_FILE

    done = 0
    while done < n and (train_dir / f"stage-{done}" / "final" / DONE_FILE).is_file():
        done += 1
    return done


def reuse_stages(plan: Plan, method: str, seed: int, log: Callable[[str], None]) -> str | None:
    """Give a fresh (``method``, ``seed``) the longest run of leading stages (never its last) that
    another method of the same seed finished with the same training; returns the source of stage 0,
    or None where nothing is reused (not applicable, nothing finished, or a different training)."""
    from ..pipeline import open_run_dir, prepare
    from ..training.checkpoints import DONE_FILE, train_record
    from ..training.teacher import frozen_teacher_fingerprint

    if not reusable(plan, method):
        return None
    run_dir = plan.run_dir(method, seed)
    done = run_dir / "train" / "stage-0" / "final" / DONE_FILE
    if done.is_file():
        return read_json(done).get("reused_from")
    if (run_dir / "train").exists():
        return None
    last = plan.n_stages(method) - 1
    donors = [(d, plan.run_dir(d, seed) / "train") for d in _donors(plan, method)]
    donors = [(d, t, n) for d, t in donors if (n := _finished_stages(t, last)) and (t / "config.json").is_file()]
    if not donors:
        return None
    cfg = plan.config(method, seed)
    with locked_dir(run_dir):
        open_run_dir(cfg, resume=True, force=False)
        prep = prepare(cfg, run_dir)
        record = train_record(prep.stages, cfg.model, cfg.lora, cfg.train,
                              frozen_teacher_fingerprint(cfg.train, cfg.model))
        best, src_train, given = None, None, 0
        for donor, train_dir, n in donors:
            same = _same_stages(read_json(train_dir / "config.json"), record, plan.config(donor, seed).train,
                                cfg.train, n)
            if same > given:
                best, src_train, given = donor, train_dir, same
        if not given:
            log(f"{method} seed {seed}: stage 0 differs from every finished method's; trained")
            return None
        write_json(run_dir / "train" / "config.json", record)
        for i in range(given):
            _copy_stage(src_train / f"stage-{i}" / "final", run_dir / "train" / f"stage-{i}" / "final", plan)
    log(f"{method} seed {seed}: stages 0-{given - 1} are {best}'s ({src_train.relative_to(plan.out)}); "
        f"training starts at stage {given}")
    return str((src_train / "stage-0" / "final").relative_to(plan.out))


def _copy_stage(src_final: Any, dest_final: Any, plan: Plan) -> None:
    """``src_final``'s adapter into ``dest_final``, its DONE.json naming where it came from (last)."""
    from ..training.checkpoints import DONE_FILE

    with atomic_dir(dest_final) as tmp:
        for item in src_final.iterdir():
            if item.is_file() and item.name != DONE_FILE:
                shutil.copy2(item, tmp / item.name)
        done = read_json(src_final / DONE_FILE)  # a stage the donor itself reused names where it was trained
        write_json(tmp / DONE_FILE, {**done, "reused_from": done.get("reused_from")
                                     or str(src_final.relative_to(plan.out))})
