"""Training to convergence: early stopping on the validation loss of every stage (plateau or cap),
the best checkpoint served, on the toy stages of tests/train_fixtures.py."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from promptintern.args import LoraArgs, TrainArgs
from promptintern.errors import ConfigError
from promptintern.training import train_stages

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


# ---------------------------------------------------------------- compare at converge, steps and tokens

from promptintern.cli import main  # noqa: E402
from promptintern.compare.plan import Plan, load_compare_config  # noqa: E402
from test_compare import _config  # noqa: E402

CONVERGE = ["compare.methods=[full-prompt,promptintern]", "compare.seeds=1", "compare.budget=converge",
            "compare.max_epochs=2", "compare.patience=1", "compare.eval_steps=1", "compare.validation_size=4",
            "train.keep_checkpoints=true", "train.save_total_limit=20"]


def _plan(tmp_path: Path, *sets: str) -> Plan:
    run_raw, args = load_compare_config(str(_config(tmp_path)), list(sets))
    return Plan(run_raw, args, tmp_path / "out")


def test_converge_trains_every_stage_on_all_pairs_to_its_plateau(tmp_path):
    plan = _plan(tmp_path, *CONVERGE, "compare.stage_max_epochs=1")
    cfg = plan.config("promptintern", 0)
    assert cfg.data.stage_mode == "revisit" and cfg.train.early_stopping_patience == 1
    assert cfg.train.max_steps_per_stage is None and cfg.train.epochs_per_stage == 2
    assert cfg.train.for_stage(0).epochs_per_stage == 1 and cfg.train.save_steps == 1
    assert cfg.train.validation_size == 4
    assert plan.planned_steps("promptintern") == [3, 6] and plan.planned_steps("full-prompt") == [6]  # 6 pairs, batch 2
    with pytest.raises(ConfigError, match="lr_policy 'one' needs every stage's steps"):
        _plan(tmp_path, "compare.budget=converge", "compare.lr_policy=one")


def test_tokens_budget_gives_every_method_full_prompt_fts_tokens(tmp_path):
    plan = _plan(tmp_path, "compare.budget=tokens", "compare.total_steps=4",
                 "compare.methods=[full-prompt,query-only,promptintern]")
    full, query = plan.stage_lengths("full-prompt"), plan.stage_lengths("query-only")
    assert query[0] < full[0]
    assert plan.planned_steps("full-prompt") == [4]
    budget = 4 * 2 * full[0]
    assert plan.planned_steps("query-only") == [round(budget / (2 * query[0]))]
    pi = plan.planned_steps("promptintern")
    assert pi == [round(budget / 2 / (2 * x)) for x in plan.stage_lengths("promptintern")] and pi[0] < pi[1]
    assert plan.config("query-only", 0).train.max_steps_per_stage == plan.planned_steps("query-only")[0]
    assert plan.config("promptintern", 0).data.stage_mode == "slice"


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("converge")
    config, out = _config(tmp), tmp / "out"
    sets = [x for s in CONVERGE for x in ("--set", s)]
    assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs", *sets]) == 0
    return config, out, sets


def _weights(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_staged_method_starts_from_full_prompt_fts_best_adapter(converged):
    _, out, _ = converged
    full, pi = out / "runs" / "full-prompt" / "seed-0", out / "runs" / "promptintern" / "seed-0"
    full_stage = json.loads((full / "train" / "history.json").read_text())["stages"][0]
    assert full_stage["best_step"] and full_stage["stopped"] in ("plateau", "cap")
    # stage 0 of promptintern is full-prompt FT's served (best) adapter, bit for bit
    assert _same(_weights(pi / "train" / "stage-0" / "final"), _weights(full / "adapter"))
    assert _same(_weights(full / "adapter"), _weights(full / "train" / "stage-0" / f"checkpoint-{full_stage['best_step']}"))
    stages = json.loads((pi / "train" / "history.json").read_text())["stages"]
    assert stages[0]["reused_from"] == "runs/full-prompt/seed-0/train/stage-0/final"
    assert stages[0]["train_wall_s"] == full_stage["train_wall_s"]  # stage 0's cost charged to the staged method
    assert stages[1]["steps"] >= 1 and "reused_from" not in stages[1]
    results = json.loads((out / "results.json").read_text())
    m = results["methods"]["promptintern"]
    rows = m["stages_per_seed"]["0"]
    assert [r["reused_from"] is not None for r in rows] == [True, False]
    assert m["train_wall_s_per_seed"][0] >= full_stage["train_wall_s"]
    assert all(len(r["curve"]) >= 1 for r in rows) and m["runaway_share_per_seed"][0] is not None
    report = (out / "report.md").read_text()
    assert "## How each method got there" in report and "= full-prompt FT's" in report
    assert (out / "plots" / "validation.png").is_file()


def test_a_comparison_resumes_inside_a_stage(converged, capsys):
    """Stage 1 of the staged method cut back to its first checkpoint: the rerun keeps full-prompt FT,
    resumes stage 1 from that checkpoint, and ends with the same adapter."""
    config, out, sets = converged
    pi = out / "runs" / "promptintern" / "seed-0"
    before = _weights(pi / "adapter")
    for name in ("adapter", "predictions", "metrics.json", "train/stage-1/final"):
        path = pi / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for ckpt in (pi / "train" / "stage-1").glob("checkpoint-*"):
        if int(ckpt.name.rpartition("-")[2]) > 1:
            shutil.rmtree(ckpt)
    capsys.readouterr()
    assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs", *sets]) == 0
    log = capsys.readouterr().out
    assert "full-prompt seed 0: finished earlier, kept" in log and "plan: 2 methods × 1 seeds" in log
    stages = json.loads((pi / "train" / "history.json").read_text())["stages"]
    assert stages[1]["resumed_from"] == "checkpoint-1"
    assert _same(_weights(pi / "adapter"), before)


def test_the_plan_estimates_time_from_measured_step_times():
    from promptintern.compare.budget import measured_step_seconds, plan_lines

    histories = {"full-prompt": [{"stages": [{"stage": 0, "s_per_step": 60.0}]}],
                 "promptintern": [{"stages": [{"stage": 0, "s_per_step": 60.0, "reused_from": "x"},
                                              {"stage": 1, "s_per_step": 30.0}]}]}
    rates = measured_step_seconds(histories)
    assert rates == {("full-prompt", 0): 60.0, ("promptintern", 1): 30.0, ("*", -1): 60.0}  # a reused stage is no measurement
    steps = {"full-prompt": [180], "promptintern": [180, 180, 180]}
    lines = plan_lines(list(steps), [0, 1], steps.get, rates, "converge", reused=["promptintern"])
    assert lines[0].startswith("plan: 2 methods × 2 seeds (0, 1), budget converge")
    assert lines[1] == "  full-prompt: at most 180 steps [180], ≈ 3.00 h per seed"
    # stage 0 reused (no time), stage 1 at its own 30 s, stage 2 at the (upper) median of all measured, 60 s
    assert lines[2] == "  promptintern: at most 540 steps [180, 180, 180] (stage 0: full-prompt FT's), ≈ 4.50 h per seed"
    assert "≈ 15.00 h" in lines[3]
    assert "no step time measured yet" in plan_lines(["full-prompt"], [0], steps.get, {}, "steps")[-1]


class _CrashAfter(TrainerCallback):
    """Fails the run right after checkpoint ``step`` is on disk (a crash at a known point)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_a_resumed_stage_keeps_its_count_of_scorings_without_improvement(tmp_path):
    """Crash at the checkpoint after the first scoring without improvement: the resumed stage stops
    where the uninterrupted one did, with the same adapter (the count is not restarted at 0)."""
    [whole] = _train(tmp_path / "whole", rising, early_stopping_patience=2)
    best = whole["best_step"]
    args = toy_args(max_steps_per_stage=None, epochs_per_stage=3, save_steps=1, keep_checkpoints=True,
                    save_total_limit=20, early_stopping_patience=2)
    with pytest.raises(KeyboardInterrupt):
        train_stages(toy_stages(1), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path / "cut",
                     validation=rising, callbacks=[_CrashAfter(best + 1)])
    train_stages(toy_stages(1), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path / "cut",
                 validation=rising, resume=True)
    [resumed] = json.loads((tmp_path / "cut" / "train" / "history.json").read_text())["stages"]
    assert resumed["resumed_from"] == f"checkpoint-{best + 1}"
    assert (resumed["steps"], resumed["best_step"], resumed["stopped"]) == (whole["steps"], best, "plateau")
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_converge_without_a_validation_split_is_one_line_before_anything_runs(tmp_path, capsys):
    task_dir = tmp_path / "task"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "sql", task_dir)
    spec = (task_dir / "task.yaml").read_text()
    (task_dir / "task.yaml").write_text(spec.replace("  validation: validation.jsonl\n", ""))
    config = _config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["run"]["task"] = str(task_dir / "task.yaml")
    raw["compare"]["budget"] = "converge"
    config.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(config), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compare.budget 'converge'" in err[0] and "compare.budget=steps" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_tokens_run_trains_the_token_matched_steps(tmp_path):
    """query-only under `tokens`: its run trains the steps that spend full-prompt FT's tokens in
    total_steps steps — more steps than full-prompt FT, its records being shorter."""
    sets = ["compare.methods=[query-only]", "compare.seeds=1", "compare.budget=tokens", "compare.total_steps=2"]
    plan = _plan(tmp_path, *sets, "compare.methods=[full-prompt,query-only]")
    want = plan.planned_steps("query-only")
    assert want[0] > 2
    config, out = _config(tmp_path), tmp_path / "run"
    assert main(["--threads", "1", "compare", str(config), "--out", str(out), "--passes", "runs",
                 *[x for s in sets for x in ("--set", s)]]) == 0
    history = json.loads((out / "runs" / "query-only" / "seed-0" / "train" / "history.json").read_text())
    assert [s["steps"] for s in history["stages"]] == want
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["budget"] == "tokens" and results["methods"]["query-only"]["train_steps"] == [sum(want)]
