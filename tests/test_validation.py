"""Validation used: per-stage validation loss, the last stage's best checkpoint, a missing file refused.

The toy stages train on sums (tests/train_fixtures.py); their validation records are further
sums in the same stage's prompt, or, where a checkpoint other than the last must win, the
same prompts with an answer training makes less likely (so the validation loss rises).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from promptintern.args import LoraArgs, TrainArgs
from promptintern.config import RunConfig
from promptintern.errors import ConfigError
from promptintern.training import PadCollator, answer_loss, tokenize_records, train_stages

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_fixtures import ROOT, tiny_run_config, write_config  # noqa: E402
from train_fixtures import toy_args, toy_stages  # noqa: E402

N_STAGES = 2
_MORE = toy_stages(N_STAGES, 12)  # records 8..11 are not trained on: the validation records


def sums(stage):
    """Validation records in ``stage``'s own prompt format (more sums)."""
    return _MORE[stage.index].records[8:]


def words(stage):
    """The same prompts with an answer that training on sums makes less likely."""
    return [replace(r, answer="the sum is unknown to me") for r in sums(stage)]


def _train(run_dir: Path, validation=None, callbacks=(), resume: bool = False, **changes) -> dict:
    train_stages(toy_stages(N_STAGES), model_name="tiny-random", lora=LoraArgs(), args=toy_args(**changes),
                 run_dir=run_dir, resume=resume, validation=validation, callbacks=callbacks)
    return json.loads((run_dir / "train" / "history.json").read_text())


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """No validation; every checkpoint kept (volatile fields: the weights are those of any run)."""
    run_dir = tmp_path_factory.mktemp("plain")
    _train(run_dir, keep_checkpoints=True, save_total_limit=5)
    return run_dir


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> Path:
    """select_best on validation records whose loss rises as training goes on."""
    run_dir = tmp_path_factory.mktemp("best")
    _train(run_dir, validation=words, select_best=True, keep_checkpoints=True, save_total_limit=5)
    return run_dir


def _direct_loss(final: Path, records, batch_size: int) -> float:
    """The answer-only loss of a stage's final adapter, computed here: the mean over batches (in
    order, ``batch_size`` records each) of each batch's loss per answer token."""
    from peft import get_peft_model

    from promptintern.models import load_model
    from promptintern.training.loop import _load_adapter_weights

    base, tok = load_model("tiny-random", device="cpu")
    model = get_peft_model(base, LoraArgs().to_peft())
    _load_adapter_weights(model, final)
    model.eval()
    data, _ = tokenize_records(records, tok, 2048)
    collate = PadCollator(tok.pad_token_id)
    with torch.no_grad():
        losses = [float(answer_loss(model, collate(data[i:i + batch_size]))) for i in range(0, len(data), batch_size)]
    return sum(losses) / len(losses)


def test_validation_loss_per_stage_leaves_the_weights_as_they_were(plain, tmp_path):
    history = _train(tmp_path, validation=sums)
    for i in range(N_STAGES):  # every stage's adapter, bit for bit
        assert _same(_adapter(tmp_path / "train" / f"stage-{i}" / "final"),
                     _adapter(plain / "train" / f"stage-{i}" / "final"))
    assert _same(_adapter(tmp_path / "adapter"), _adapter(plain / "adapter"))
    ref = json.loads((plain / "train" / "history.json").read_text())["stages"]
    for stage, got, want in zip(toy_stages(N_STAGES), history["stages"], ref, strict=True):
        assert got["train_loss"] == want["train_loss"] and "validation_loss" not in want
        assert got["n_validation"] == 4
        direct = _direct_loss(tmp_path / "train" / f"stage-{stage.index}" / "final", sums(stage), 2)
        assert got["validation_loss"] == pytest.approx(direct, rel=1e-5)
    # on each stage's own prompt: the full-template stage and the query-only stage see different inputs
    assert history["stages"][0]["validation_loss"] != history["stages"][1]["validation_loss"]


def test_select_best_ends_the_last_stage_with_its_best_checkpoint(plain, best):
    last = json.loads((best / "train" / "history.json").read_text())["stages"][-1]
    scored = [(e["step"], e["eval_loss"]) for e in last["log_history"] if "eval_loss" in e][:-1]  # at each save
    assert [s for s, _ in scored] == [2, 4, 6]
    step, loss = min(scored, key=lambda sl: sl[1])
    assert (last["best_step"], last["best_validation_loss"]) == (step, loss)
    assert step != last["steps"]  # the loss rose: an earlier checkpoint won
    assert last["validation_loss"] == pytest.approx(loss, rel=1e-6)  # scored again on the chosen weights
    stage_dir = best / "train" / f"stage-{N_STAGES - 1}"
    assert _same(_adapter(stage_dir / "final"), _adapter(stage_dir / f"checkpoint-{step}"))
    assert _same(_adapter(best / "adapter"), _adapter(stage_dir / f"checkpoint-{step}"))
    # scoring at every checkpoint did not change training: the same checkpoints as without it
    for s, _ in scored:
        assert _same(_adapter(stage_dir / f"checkpoint-{s}"),
                     _adapter(plain / "train" / f"stage-{N_STAGES - 1}" / f"checkpoint-{s}"))
    first = json.loads((best / "train" / "history.json").read_text())["stages"][0]
    assert "best_step" not in first  # only the last stage chooses


class _Crash(TrainerCallback):
    """Fails the run right after checkpoint 4 of the last stage is on disk (a crash at a known point)."""

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if Path(args.output_dir).name == f"stage-{N_STAGES - 1}" and state.global_step == 4:
            raise KeyboardInterrupt


def test_resumed_run_records_the_same_validation_and_choice(best, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, validation=words, select_best=True, callbacks=[_Crash()])
    history = _train(tmp_path, validation=words, select_best=True, resume=True)
    want = json.loads((best / "train" / "history.json").read_text())["stages"]
    assert history["stages"][-1]["resumed_from"] == "checkpoint-4"
    keys = ("validation_loss", "n_validation", "best_step", "best_validation_loss", "train_loss")
    assert [[s.get(k) for k in keys] for s in history["stages"]] == [[s.get(k) for k in keys] for s in want]
    assert _same(_adapter(tmp_path / "adapter"), _adapter(best / "adapter"))


def test_the_fields_are_checked_and_leave_existing_fingerprints_alone():
    with pytest.raises(ConfigError, match="validation_size must be >= 0"):
        TrainArgs(validation_size=-1).validate()
    with pytest.raises(ConfigError, match="select_best needs validation records"):
        TrainArgs(validation_size=0, select_best=True).validate()
    base = RunConfig()
    assert "validation_size" not in base.identity()["train"] and "select_best" not in base.identity()["train"]
    assert RunConfig(train=TrainArgs(validation_size=0)).fingerprint() == base.fingerprint()  # may change on resume
    chosen = RunConfig(train=TrainArgs(select_best=True))
    assert chosen.fingerprint() != base.fingerprint()  # the choice changes the weights, and so does the set
    assert RunConfig(train=TrainArgs(select_best=True, validation_size=8)).fingerprint() != chosen.fingerprint()


def _sql_copy(tmp_path: Path) -> Path:
    task_dir = Path(shutil.copytree(ROOT / "examples" / "sql", tmp_path / "sql"))
    return task_dir / "task.yaml"


def test_a_missing_validation_file_is_one_line_before_anything_is_written(tmp_path, capsys):
    from promptintern.cli import main

    task = _sql_copy(tmp_path)
    (task.parent / "validation.jsonl").unlink()
    cfg = write_config(tmp_path / "run.yaml", {**tiny_run_config(tmp_path / "run"), "task": str(task)})
    assert main(["train", str(cfg)]) == ConfigError.exit_code
    err = capsys.readouterr().err.strip()
    assert "validation file 'validation.jsonl' not found" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_select_best_without_a_validation_split_is_refused(tmp_path):
    import yaml

    from promptintern.config import load_config
    from promptintern.pipeline import check

    task = _sql_copy(tmp_path)
    spec = yaml.safe_load(task.read_text())
    del spec["data"]["validation"]
    task.write_text(yaml.safe_dump(spec))
    raw = {**tiny_run_config(tmp_path / "run"), "task": str(task)}
    cfg = load_config(str(write_config(tmp_path / "run.yaml", raw)))
    assert check(cfg).validation == []  # no split, no validation loss: nothing to refuse
    raw["train"] = {**raw["train"], "select_best": True}
    with pytest.raises(ConfigError, match="select_best: task sql has no validation split"):
        check(load_config(str(write_config(tmp_path / "best.yaml", raw))))


def test_run_reports_each_stage_scored_on_its_own_prompt(tmp_path):
    """End to end on the SQL example: the validation records of a stage are the prompts a query gets
    at that stage's (τ, k); metrics.json and report.md carry each stage's validation loss."""
    from promptintern.cli import main
    from promptintern.config import load_config
    from promptintern.pipeline import prepare, serving_messages
    from promptintern.stages import validation_builder

    raw = tiny_run_config(tmp_path / "run", data={"test_size": 2},
                          train={"max_steps_per_stage": 1, "per_device_batch_size": 2, "save_steps": 1,
                                 "logging_steps": 1, "validation_size": 3})
    cfg_path = write_config(tmp_path / "run.yaml", raw)
    prep = prepare(load_config(str(cfg_path)))
    assert len(prep.validation) == 3
    build = validation_builder(prep.task, prep.validation, prep.stages, prep.retriever, prep.templates.at)
    for stage in prep.stages:
        records = build(stage)
        served = serving_messages(prep, prep.validation, stage.tau, stage.k)
        assert [r.messages for r in records] == [m for _, m in served]
        assert [r.answer for r in records] == [prep.task.format.render_answer(i.answer) for i in prep.validation]
    assert prep.stages[-1].tau == 0 and prep.stages[-1].k == 0  # PromptIntern's last stage: the query alone

    assert main(["--threads", "1", "run", str(cfg_path)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    stages = metrics["train"]["history"]["stages"]
    assert [s["n_validation"] for s in stages] == [3, 3]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| train loss | validation loss (n) |" in report
    for s in stages:
        assert f"{s['validation_loss']:.4f} (3)" in report
