"""Progressive LoRA training on the tiny random model: loss, stage chaining, determinism, resume."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback

from promptintern.args import LoraArgs, TrainArgs
from promptintern.errors import ConfigError, RunDirError
from promptintern.identity import identity_view
from promptintern.prompt import IGNORE_INDEX
from promptintern.training import (
    PadCollator,
    answer_loss,
    checkpoint_problem,
    latest_checkpoint,
    tokenize_records,
    train_stages,
)

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import tiny_lora_model, toy_args, toy_stages  # noqa: E402

HELPER = Path(__file__).parent / "train_fixtures.py"


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].cpu(), b[key].cpu()), key  # training may have run on a GPU


def run_helper(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(HELPER), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helper failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """An uninterrupted 3-stage run (6 steps per stage, checkpoints every 2)."""
    run_dir = tmp_path_factory.mktemp("reference")
    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(), run_dir=run_dir)
    return run_dir


# ---------------------------------------------------------------- data and loss


def test_labels_cover_the_answer_only(tiny_model):
    _, tok = tiny_model
    records = toy_stages(1, 3)[0].records
    data, dropped = tokenize_records(records, tok, max_length=4096)
    assert dropped == [] and len(data) == 3
    for rec, ex in zip(records, data, strict=True):
        answer_ids = [t for t in ex["labels"] if t != IGNORE_INDEX]
        first = next(i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in ex["labels"][:first])  # the prompt is masked
        assert ex["labels"][first:] == ex["input_ids"][first:]  # the answer is one trailing span
        assert tok.decode(answer_ids).strip() == rec.answer + "<|im_end|>"


def test_records_longer_than_max_length_are_dropped_not_truncated(tiny_model):
    _, tok = tiny_model
    stage0, stage2 = toy_stages(3, 2)[0], toy_stages(3, 2)[2]
    short = len(tokenize_records(stage2.records[:1], tok, 4096)[0][0]["input_ids"])
    data, dropped = tokenize_records(stage0.records + stage2.records, tok, max_length=short + 1)
    assert dropped == ["0", "1"]  # the long stage-0 prompts
    assert len(data) == 2 and all(len(d["input_ids"]) <= short + 1 for d in data)


def test_answer_only_logits_give_the_full_logits_loss_and_gradients():
    model, tok = tiny_lora_model()
    records = toy_stages(3, 3)[0].records + toy_stages(3, 3)[2].records  # very different lengths
    batch = PadCollator(tok.pad_token_id)(tokenize_records(records, tok, 4096)[0])
    assert (batch["attention_mask"] == 0).any()  # padding is exercised

    full = model(**batch).loss
    full.backward()
    grads_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    mine = answer_loss(model, batch)
    mine.backward()
    grads_mine = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    torch.testing.assert_close(mine, full, atol=1e-5, rtol=0)
    for n in grads_full:
        torch.testing.assert_close(grads_mine[n], grads_full[n], atol=1e-5, rtol=1e-4)
    n_answer = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    summed = answer_loss(model, batch, num_items_in_batch=1)
    torch.testing.assert_close(summed / n_answer, full, atol=1e-5, rtol=0)


def test_answer_logits_through_a_wrapper_whose_forward_takes_no_mask(tiny_model):
    """Answer-only logits come from a hook on the LM head, not from a boolean ``logits_to_keep``
    (transformers 5.17 raises IndexError on one): a DDP-like wrapper with a plain forward works,
    the rows equal the full logits at the answer positions, and the hook is gone afterwards."""
    from promptintern.training import answer_logits, answer_mask

    model, tok = tiny_model

    class Wrapped(torch.nn.Module):  # like DistributedDataParallel: the model sits in .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, input_ids, attention_mask=None, use_cache=None):  # noqa: ANN001
            return self.module(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    records = toy_stages(3, 3)[0].records + toy_stages(3, 3)[2].records
    batch = PadCollator(tok.pad_token_id)(tokenize_records(records, tok, 4096)[0])
    with torch.no_grad():
        logits, targets = answer_logits(Wrapped(model), batch["input_ids"], batch["attention_mask"], batch["labels"])
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = answer_mask(batch["labels"])
    assert logits.shape == (int(keep.sum()), full.shape[-1])
    torch.testing.assert_close(logits, full[keep], atol=1e-5, rtol=0)
    assert torch.equal(targets, batch["labels"][:, 1:][keep[:, :-1]])
    assert not model.get_output_embeddings()._forward_pre_hooks


# ---------------------------------------------------------------- arguments


def test_train_args_validation_and_stage_overrides():
    args = TrainArgs(learning_rate=2e-4, stage_overrides={1: {"learning_rate": 1e-3, "max_steps_per_stage": 3}})
    args.validate()
    assert args.for_stage(0) is args
    s1 = args.for_stage(1)
    assert (s1.learning_rate, s1.max_steps_per_stage, s1.seed) == (1e-3, 3, args.seed)
    with pytest.raises(ConfigError, match="cannot change per stage"):
        TrainArgs(stage_overrides={0: {"seed": 3}}).validate()
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainArgs(stage_overrides={0: {"learning_rate": "fast"}}).validate()
    with pytest.raises(ConfigError, match="warmup_ratio"):
        TrainArgs(stage_overrides={2: {"warmup_ratio": 1.5}}).validate()
    with pytest.raises(ConfigError, match="optimizer_state"):
        TrainArgs(optimizer_state="sometimes").validate()
    with pytest.raises(ConfigError, match="lr_scheduler"):
        TrainArgs(lr_scheduler="zigzag").validate()
    with pytest.raises(ConfigError, match="lr_span"):
        TrainArgs(lr_span="forever").validate()
    with pytest.raises(ConfigError, match="needs train.max_steps_per_stage"):
        TrainArgs(lr_span="run").validate()
    with pytest.raises(ConfigError, match="needs a step-based"):
        TrainArgs(lr_span="run", max_steps_per_stage=4, lr_scheduler="reduce_lr_on_plateau").validate()
    with pytest.raises(ConfigError, match="'warmup_ratio' cannot change per stage under lr_span 'run'"):
        TrainArgs(lr_span="run", max_steps_per_stage=4, stage_overrides={1: {"warmup_ratio": 0.2}}).validate()
    TrainArgs(lr_span="run", max_steps_per_stage=4, stage_overrides={1: {"max_steps_per_stage": 2}}).validate()
    # Left out of the identity at its default, so runs made before lr_span existed still resume.
    assert "lr_span" not in identity_view(TrainArgs())
    assert identity_view(TrainArgs(lr_span="run", max_steps_per_stage=4))["lr_span"] == "run"
    with pytest.raises(ConfigError, match="no stage 5"):
        train_stages(toy_stages(2), model_name="tiny-random", lora=LoraArgs(),
                     args=TrainArgs(stage_overrides={5: {"learning_rate": 1e-3}}), run_dir=Path("unused"))


# ---------------------------------------------------------------- stages, optimizer, determinism


class Recorder(TrainerCallback):
    """Collects, per stage, the adapter weights and the optimizer's step counts at train begin."""

    def __init__(self):
        self.begin: list[dict[str, torch.Tensor]] = []
        self.optimizer_steps: list[list[float]] = []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.begin.append({k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()})
        self.optimizer_steps.append([float(s["step"]) for s in optimizer.state_dict()["state"].values()])


def test_each_stage_starts_from_the_previous_adapter(tmp_path):
    rec = Recorder()
    args = toy_args(max_steps_per_stage=3, stage_overrides={0: {"max_steps_per_stage": 2}})
    train_stages(toy_stages(2), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path,
                 callbacks=[rec])
    final0 = adapter_tensors(tmp_path / "train" / "stage-0" / "final")
    final1 = adapter_tensors(tmp_path / "train" / "stage-1" / "final")
    assert_same_tensors(rec.begin[1], final0)
    assert any(not torch.equal(final0[k], final1[k]) for k in final0)  # stage 1 trained on
    assert_same_tensors(adapter_tensors(tmp_path / "adapter"), final1)
    assert rec.optimizer_steps == [[], []]  # optimizer_state="reset": every stage starts fresh
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert [s["steps"] for s in history["stages"]] == [2, 3]  # the stage-0 override applied
    assert all(s["log_history"] and s["train_wall_s"] > 0 for s in history["stages"])
    assert not list((tmp_path / "train").glob("stage-*/checkpoint-*"))  # removed once a stage is done


def test_optimizer_state_keep_carries_adam_moments(tmp_path):
    rec = Recorder()
    train_stages(toy_stages(2), model_name="tiny-random", lora=LoraArgs(),
                 args=toy_args(max_steps_per_stage=3, optimizer_state="keep"), run_dir=tmp_path, callbacks=[rec])
    assert rec.optimizer_steps[0] == []
    assert rec.optimizer_steps[1] and set(rec.optimizer_steps[1]) == {3.0}  # stage 0's 3 steps carried over
    assert (tmp_path / "train" / "stage-0" / "final" / "optimizer.pt").is_file()
    assert not (tmp_path / "adapter" / "optimizer.pt").exists()


def test_run_schedule_is_one_schedule_entered_part_way():
    """Stages of 3 and 5 steps under one schedule see the LRs of a single 8-step schedule."""
    from promptintern.training import run_schedule

    def lrs(offset: int, steps: int, total: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched, out = run_schedule(opt, "linear", 2, offset, total), []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    whole = lrs(0, 8, 8)
    assert whole == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert lrs(0, 3, 8) + lrs(3, 5, 8) == pytest.approx(whole)


def test_lr_span_run_continues_the_schedule_across_stages(tmp_path):
    """Logged LRs of a 2-stage run (3 + 3 steps) under lr_span 'run' are those of one 6-step run;
    under the default each stage restarts the warm-up."""
    def logged_lrs(run_dir: Path, stages: int, **changes) -> list[float]:
        args = toy_args(max_steps_per_stage=6 // stages, warmup_ratio=0.34, **changes)
        train_stages(toy_stages(stages), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=run_dir)
        history = json.loads((run_dir / "train" / "history.json").read_text())
        return [e["learning_rate"] for s in history["stages"] for e in s["log_history"] if "learning_rate" in e]

    single = logged_lrs(tmp_path / "one", 1)
    spanned = logged_lrs(tmp_path / "run", 2, lr_span="run")
    restarted = logged_lrs(tmp_path / "stage", 2)
    assert len(single) == len(spanned) == 6
    assert spanned == pytest.approx(single)
    assert restarted[3] < restarted[2]  # the second stage starts its own warm-up again
    assert restarted != pytest.approx(single)


def test_resume_under_lr_span_run_matches_uninterrupted_run(tmp_path):
    """Killed inside stage 1, the resumed run re-enters the one schedule at the checkpoint's step."""
    proc = run_helper(str(tmp_path / "run"), "--lr-span", "run", "--kill-at", "1:2", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_helper(str(tmp_path / "run"), "--lr-span", "run", "--resume")
    run_helper(str(tmp_path / "ref"), "--lr-span", "run")
    run_helper(str(tmp_path / "restart"))
    ref = adapter_tensors(tmp_path / "ref" / "adapter")
    assert_same_tensors(adapter_tensors(tmp_path / "run" / "adapter"), ref)
    restart = adapter_tensors(tmp_path / "restart" / "adapter")
    assert any(not torch.equal(ref[k], restart[k]) for k in ref)  # the span changes the training


def test_same_config_gives_identical_adapter(reference_run, tmp_path):
    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(), run_dir=tmp_path)
    assert_same_tensors(adapter_tensors(tmp_path / "adapter"), adapter_tensors(reference_run / "adapter"))


# ---------------------------------------------------------------- run directory and resume


def test_existing_run_needs_resume_or_force(reference_run, tmp_path):
    with pytest.raises(RunDirError, match="--resume .* --force"):
        train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(),
                     run_dir=reference_run)
    with pytest.raises(RunDirError, match="different train.learning_rate"):
        train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(learning_rate=5e-4),
                     run_dir=reference_run, resume=True)
    before = (reference_run / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    out = train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(logging_steps=3),
                       run_dir=reference_run, resume=True)  # done, and logging does not change the weights
    assert out == reference_run / "adapter"
    assert (out / "adapter_model.safetensors").stat().st_mtime_ns == before

    small = tmp_path / "run"
    train_stages(toy_stages(1), model_name="tiny-random", lora=LoraArgs(), args=toy_args(max_steps_per_stage=1),
                 run_dir=small)
    train_stages(toy_stages(1), model_name="tiny-random", lora=LoraArgs(), args=toy_args(max_steps_per_stage=2),
                 run_dir=small, force=True)
    assert json.loads((small / "train" / "history.json").read_text())["stages"][0]["steps"] == 2


def test_resume_after_sigkill_mid_stage_matches_uninterrupted_run(reference_run, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_helper(str(run_dir), "--kill-at", "1:4", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    stage1 = run_dir / "train" / "stage-1"
    assert (run_dir / "train" / "stage-0" / "final" / "DONE.json").is_file()
    assert not (stage1 / "final").exists() and not (run_dir / "adapter").exists()
    # A checkpoint cut short while being written (no trainer_state.json) must be ignored.
    partial = stage1 / "checkpoint-6"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(stage1) == (stage1 / "checkpoint-4", [partial])

    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(), run_dir=run_dir,
                 resume=True)
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(reference_run / "adapter"))
    for i in range(3):
        assert_same_tensors(adapter_tensors(run_dir / "train" / f"stage-{i}" / "final"),
                            adapter_tensors(reference_run / "train" / f"stage-{i}" / "final"))
    history = json.loads((run_dir / "train" / "history.json").read_text())
    assert [s["resumed_from"] for s in history["stages"]] == [None, "checkpoint-4", None]
    resumed = history["stages"][1]  # its seconds before checkpoint-4 (in the killed process) still count
    assert 0 < resumed["wall_s_before_resume"] < resumed["train_wall_s"]
    assert history["stages"][0]["wall_s_before_resume"] == 0
    ref = json.loads((reference_run / "train" / "history.json").read_text())
    losses = [[e["loss"] for e in s["log_history"] if "loss" in e] for s in history["stages"]]
    assert losses == [[e["loss"] for e in s["log_history"] if "loss" in e] for s in ref["stages"]]


@pytest.fixture(scope="module")
def killed_in_stage_1(tmp_path_factory) -> Path:
    """A run SIGKILLed right after checkpoint-4 of stage 1 (checkpoints 2 and 4 on disk)."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    proc = run_helper(str(run_dir), "--kill-at", "1:4", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return run_dir


def _history(run_dir: Path) -> dict:
    return json.loads((run_dir / "train" / "history.json").read_text())


def test_resumed_stage_reports_the_loss_of_all_its_steps(killed_in_stage_1, reference_run, tmp_path):
    """train_loss of a stage resumed mid-way is the mean over all its steps, as uninterrupted."""
    run_dir = Path(shutil.copytree(killed_in_stage_1, tmp_path / "run"))
    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(), run_dir=run_dir, resume=True)
    got, want = _history(run_dir)["stages"], _history(reference_run)["stages"]
    assert got[1]["resumed_from"] == "checkpoint-4"
    assert [s["train_loss"] for s in got] == [s["train_loss"] for s in want]


@pytest.mark.parametrize("damaged, then", [(["checkpoint-4"], "resuming from checkpoint-2"),
                                           (["checkpoint-2", "checkpoint-4"], "restarting the stage")])
def test_damaged_checkpoint_falls_back_and_says_so(killed_in_stage_1, reference_run, tmp_path, caplog, damaged, then):
    run_dir = Path(shutil.copytree(killed_in_stage_1, tmp_path / "run"))
    stage1 = run_dir / "train" / "stage-1"
    assert sorted(p.name for p in stage1.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    for name in damaged:  # cut short, as by a full disk
        opt = stage1 / name / "optimizer.pt"
        opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="promptintern.training"):
        train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=toy_args(), run_dir=run_dir,
                     resume=True)
    assert (f"stage 2/3: checkpoint-4 cannot be resumed from (optimizer.pt does not match its checksum "
            f"(damaged since it was saved)); {then}") in caplog.text
    assert_same_tensors(adapter_tensors(run_dir / "adapter"), adapter_tensors(reference_run / "adapter"))
    assert [s["train_loss"] for s in _history(run_dir)["stages"]] == [s["train_loss"] for s in _history(reference_run)["stages"]]


def test_checkpoint_problem_names_the_damaged_file(killed_in_stage_1, tmp_path):
    ckpt = Path(shutil.copytree(killed_in_stage_1 / "train" / "stage-1" / "checkpoint-4", tmp_path / "checkpoint-4"))
    assert checkpoint_problem(ckpt) is None
    weights = ckpt / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8])
    assert checkpoint_problem(ckpt) == "adapter_model.safetensors does not match its checksum (damaged since it was saved)"
    weights.write_bytes(original)
    (ckpt / "trainer_state.json").write_text("{")
    assert checkpoint_problem(ckpt) == "trainer_state.json does not match its checksum (damaged since it was saved)"
    (ckpt / "checksums.json").unlink()  # a checkpoint of an older version: checked by format only
    assert checkpoint_problem(ckpt) == "trainer_state.json unreadable (DataError)"
    (ckpt / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(ckpt) == "trainer_state.json does not hold the step"


def test_resume_with_kept_optimizer_state_matches_uninterrupted_run(tmp_path):
    """With optimizer_state=keep the carried AdamW state must survive the crash too (killed in stage 2)."""
    args = toy_args(optimizer_state="keep")
    proc = run_helper(str(tmp_path / "run"), "--keep", "--kill-at", "2:2", check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path / "run",
                 resume=True)
    train_stages(toy_stages(), model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path / "ref")
    assert_same_tensors(adapter_tensors(tmp_path / "run" / "adapter"), adapter_tensors(tmp_path / "ref" / "adapter"))
