"""Stage 0 is not trained twice: a staged method starts from full-prompt FT's best adapter.

PromptIntern's first stage, at the full prompt (τ0, K) on all pairs, is the same training as
full-prompt FT: same records, same seed (stage 0 is seeded with ``train.seed``), same settings,
same validation prompt. When both are compared with the same seed, the staged method's run
directory is given full-prompt FT's finished stage 0 (its ``final/`` adapter, which under
``converge`` is the best checkpoint) and the pipeline resumes at stage 1, as after an
interruption. The copied ``DONE.json`` keeps the stage's steps, seconds and tokens, so the staged
method is still charged for stage 0, and it names where it came from (``reused_from``).

It is done only where the training is provably the same: the stage's record fingerprint, the
model, LoRA settings, stage-0 training settings (checkpoint and scoring cadence included) must
all match what full-prompt FT's ``train/config.json`` recorded; otherwise stage 0 is trained.
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


def _stage0_settings(train: Any) -> dict[str, Any]:
    """What of the training settings decides stage 0's weights (the scoring cadence included)."""
    args = train.for_stage(0)
    view = identity_view(args)
    view.pop("stage_overrides", None)
    if args.loss not in KL_LOSSES:  # gold pairs learn no teacher logits; teacher rows would change stage 0's records
        for name in (*KL_FIELDS, "teacher_rows_loss"):
            view.pop(name, None)
    return {**view, "save_steps": args.save_steps}


def _same_stage0(saved: dict[str, Any], record: dict[str, Any], ref_cfg: Any, cfg: Any) -> str | None:
    """Why stage 0 of ``cfg`` differs from the reference's recorded training (None: it does not)."""
    for key in ("model", "model_fingerprint", "lora"):
        if saved.get(key) != record.get(key):
            return key
    if not saved.get("stages") or saved["stages"][0] != record["stages"][0]:
        return "stage 0 records or prompt"
    if _stage0_settings(ref_cfg.train) != _stage0_settings(cfg.train):
        return "stage 0 training settings"
    return None


def reusable(plan: Plan, method: str) -> bool:
    """Whether ``method`` is a staged method that may take full-prompt FT's stage 0 in this plan."""
    return (plan.args.budget == "converge" and plan.args.reuse_stage0 and REFERENCE in plan.args.methods
            and METHODS[method].pipeline != REFERENCE and not METHODS[method].prefix_cache_of
            and METHODS[method].loss is None and plan.n_stages(method) > 1)


def reuse_stage0(plan: Plan, method: str, seed: int, log: Callable[[str], None]) -> str | None:
    """Give (``method``, ``seed``) full-prompt FT's finished stage 0; returns the source directory,
    or None where it is not reused (not applicable, not finished, or a different training)."""
    from ..pipeline import open_run_dir, prepare
    from ..training.checkpoints import DONE_FILE, train_record
    from ..training.teacher import frozen_teacher_fingerprint

    if not reusable(plan, method):
        return None
    src_train = plan.run_dir(REFERENCE, seed) / "train"
    src_final = src_train / "stage-0" / "final"
    run_dir = plan.run_dir(method, seed)
    done = run_dir / "train" / "stage-0" / "final" / DONE_FILE
    if done.is_file():
        return read_json(done).get("reused_from")
    if not (src_final / DONE_FILE).is_file() or (run_dir / "train").exists():
        return None
    cfg, ref_cfg = plan.config(method, seed), plan.config(REFERENCE, seed)
    with locked_dir(run_dir):
        open_run_dir(cfg, resume=True, force=False)
        prep = prepare(cfg, run_dir)
        record = train_record(prep.stages, cfg.model, cfg.lora, cfg.train,
                              frozen_teacher_fingerprint(cfg.train, cfg.model))
        why = _same_stage0(read_json(src_train / "config.json"), record, ref_cfg, cfg)
        if why is not None:
            log(f"{method} seed {seed}: stage 0 differs from full-prompt FT's ({why}); trained")
            return None
        write_json(run_dir / "train" / "config.json", record)
        with atomic_dir(run_dir / "train" / "stage-0" / "final") as tmp:
            for item in src_final.iterdir():
                if item.is_file() and item.name != DONE_FILE:
                    shutil.copy2(item, tmp / item.name)
            source = str(src_final.relative_to(plan.out))
            write_json(tmp / DONE_FILE, {**read_json(src_final / DONE_FILE), "reused_from": source})
    log(f"{method} seed {seed}: stage 0 is full-prompt FT's ({source}); training starts at stage 1")
    return source
