"""Training to convergence: early stopping on the validation loss of every stage (plateau or cap),
the best checkpoint served, on the toy stages of tests/train_fixtures.py."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from promptintern.errors import ConfigError
from promptintern.trainer import LoraArgs, TrainArgs, train_stages

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import toy_args, toy_stages  # noqa: E402

_MORE = toy_stages(2, 12)  # records 8..11 are not trained on: the validation records


def falling(stage):
    """More sums in the stage's prompt: training on sums lowers their loss."""
    return _MORE[stage.index].records[8:]


def rising(stage):
    """The same prompts with an answer training on sums makes less likely: the loss rises."""
    return [replace(r, answer="the sum is unknown to me") for r in falling(stage)]


def _train(run_dir: Path, validation, n_stages: int = 1, **changes) -> list[dict]:
    train_stages(toy_stages(n_stages), model_name="tiny-random", lora=LoraArgs(),
                 args=toy_args(**{"max_steps_per_stage": None, "epochs_per_stage": 3, "save_steps": 1,
                                  "keep_checkpoints": True, "save_total_limit": 20, **changes}),
                 run_dir=run_dir, validation=validation)
    return json.loads((run_dir / "train" / "history.json").read_text())["stages"]


def _scored(entry: dict) -> list[tuple[int, float]]:
    return [(e["step"], e["eval_loss"]) for e in entry["log_history"] if "eval_loss" in e][:-1]


def test_a_rising_curve_stops_at_its_plateau_and_serves_the_best(tmp_path):
    """Loss rising from the first scoring: patience 2 stops two scorings after the best one, and
    the adapter served is that best checkpoint's, bit for bit."""
    [stage] = _train(tmp_path, rising, early_stopping_patience=2)
    scored = _scored(stage)
    best_step, best_loss = min(scored, key=lambda sl: sl[1])
    assert stage["stopped"] == "plateau" and stage["steps"] < stage["max_steps"] == 12
    assert stage["steps"] == scored[-1][0] == best_step + 2  # two scorings without improvement, then stop
    assert all(loss > best_loss for step, loss in scored if step > best_step)
    assert stage["best_step"] == best_step and stage["epochs"] < 3
    best = load_file(str(tmp_path / "train" / "stage-0" / f"checkpoint-{best_step}" / "adapter_model.safetensors"))
    served = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert best.keys() == served.keys() and all(torch.equal(best[k], served[k]) for k in best)


def test_a_falling_curve_runs_to_its_cap_and_every_stage_stops_on_its_own(tmp_path):
    stages = _train(tmp_path, falling, n_stages=2, early_stopping_patience=2,
                    stage_overrides={0: {"epochs_per_stage": 1}})
    first, last = stages
    assert first["stopped"] == "cap" and first["steps"] == first["max_steps"] == 4  # the configured cap: 1 epoch
    losses = [loss for _, loss in _scored(last)]
    assert losses == sorted(losses, reverse=True) and len(losses) == 12  # still falling at every scoring
    assert last["stopped"] == "cap" and last["steps"] == 12 and last["best_step"] == 12
    assert last["epochs"] == pytest.approx(3.0)


def test_early_stopping_is_checked():
    with pytest.raises(ConfigError, match="early_stopping_patience must be >= 1"):
        TrainArgs(early_stopping_patience=0).validate()
    with pytest.raises(ConfigError, match="needs validation records"):
        TrainArgs(early_stopping_patience=2, validation_size=0).validate()
    from promptintern.config import RunConfig

    assert "early_stopping_patience" not in RunConfig().identity()["train"]  # older runs keep their fingerprint
    assert RunConfig(train=TrainArgs(early_stopping_patience=2)).identity()["train"]["early_stopping_patience"] == 2
