"""Seconds per training step and per validation scoring of one compare config's method, measured
on a few steps (for the time estimates in bench/compare/README.md; not a benchmark result).

    python bench/compare/measure_step.py bench/compare/geoquery-query-converge.yaml full-prompt 2 OUT_DIR

Trains ``method`` (seed 0) for STEPS optimizer steps with the config's batch, shared prefix and
validation sample, scoring the validation sample once at the end; prints s/step and the scoring's
seconds from the run's train/history.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from promptintern.compare.plan import Plan, load_compare_config
from promptintern.pipeline import train


def main(config: str, method: str, steps: int, out: str) -> None:
    run_raw, args = load_compare_config(config, [])
    plan = Plan(run_raw, args, Path(out))
    cfg = plan.config(method, 0)
    cfg = replace(cfg, output_dir=str(Path(out) / method),
                  train=replace(cfg.train, max_steps_per_stage=steps, early_stopping_patience=None,
                                select_best=False, stage_overrides={}))
    train(cfg, resume=False, force=True)
    history = json.loads((Path(out) / method / "train" / "history.json").read_text())
    for s in history["stages"]:
        print(json.dumps({"config": config, "method": method, "stage": s["stage"], "steps": s["steps"],
                          "s_per_step": round(s["s_per_step"], 1), "n_validation": s.get("n_validation"),
                          "validation_wall_s": round(s.get("validation_wall_s", 0.0), 1)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
