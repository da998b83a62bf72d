"""KL stage losses (distilling the stage-0-prompt teacher into the student) on the tiny random model."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from promptintern.args import LoraArgs, TrainArgs
from promptintern.configtools import from_dict
from promptintern.errors import ConfigError
from promptintern.schedule import Schedule, StagePoint
from promptintern.stages import Stage, build_stages, load_stages, save_stages
from promptintern.training import (
    PadCollator,
    Teacher,
    TeacherCache,
    answer_logits,
    answer_loss,
    bucket_kl,
    distill_loss,
    load_frozen_teacher,
    teacher_fingerprint,
    tokenize_records,
    topk_targets,
    train_stages,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_stages import ToyTask, make_instances, neighbours_of, toy_template_at  # noqa: E402
from train_fixtures import toy_args, toy_stages  # noqa: E402


def with_teacher(stages: list[Stage]) -> list[Stage]:
    """Every record also carries its stage-0 prompt, as build_stages(teacher_point=...) does."""
    first = {r.id: r.messages for r in stages[0].records}
    return [Stage(s.index, s.tau, s.k, [replace(r, teacher_messages=first[r.id]) for r in s.records])
            for s in stages]


def peft_model(seed: int):
    """tiny-random with a LoRA adapter whose B is non-zero (so the adapter changes the outputs)."""
    from promptintern.models import load_model

    base, tok = load_model("tiny-random", device="cpu")  # a private copy: LoRA layers are injected in place
    model = get_peft_model(base, LoraArgs(dropout=0.0).to_peft())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.train(), tok


def batch_of(records, tok) -> dict[str, torch.Tensor]:
    data, dropped = tokenize_records(records, tok, 4096, with_teacher=True)
    assert not dropped
    return PadCollator(tok.pad_token_id)(data)


@pytest.fixture(scope="module")
def student():
    return peft_model(seed=0)


@pytest.fixture(scope="module")
def teacher_adapter(tmp_path_factory) -> Path:
    """A frozen PEFT adapter (different weights from the student's) saved like a run's adapter/."""
    path = tmp_path_factory.mktemp("teacher") / "adapter"
    model, _ = peft_model(seed=1)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def frozen_teacher(teacher_adapter):
    return load_frozen_teacher(str(teacher_adapter), "tiny-random", torch.float32)


@pytest.fixture(scope="module")
def distill_batch(student):
    """Student: the query alone (stage 2); teacher: the full template (stage 0); 4 instances."""
    _, tok = student
    return batch_of(with_teacher(toy_stages(3, 4))[2].records, tok)


def full_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The exact KL(p_teacher ‖ q_student) per position over the whole vocabulary (the reference)."""
    lp = torch.log_softmax(teacher_logits.float() / temperature, -1)
    lq = torch.log_softmax(student_logits.float() / temperature, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


# ---------------------------------------------------------------- the estimator


def test_kl_is_zero_for_the_same_prompt_and_weights(student, teacher_adapter):
    model, tok = student
    same = [replace(r, teacher_messages=r.messages) for r in toy_stages(3, 4)[0].records]
    batch = batch_of(same, tok)
    loss, parts = distill_loss(model, Teacher(None, 64, 1.0), batch, loss="kl", kl_weight=0.5)
    assert abs(loss.item()) <= 1e-6 and parts.n_tokens == int((batch["labels"] != -100).sum())
    # ce+kl is then (1 − λ)·ce exactly
    mixed, parts = distill_loss(model, Teacher(None, 64, 2.0), batch, loss="ce+kl", kl_weight=0.25)
    torch.testing.assert_close(mixed, 0.75 * parts.ce / parts.n_tokens, atol=1e-6, rtol=0)
    # A frozen teacher holding the student's own adapter (merged into the base) agrees as well.
    own = teacher_adapter.parent / "own"
    model.save_pretrained(str(own))
    frozen = load_frozen_teacher(str(own), "tiny-random", torch.float32)
    loss, _ = distill_loss(model, Teacher(frozen, 64, 1.0), batch, loss="kl", kl_weight=0.5)
    assert abs(loss.item()) <= 1e-6


def test_topk_error_is_the_tail_mismatch_and_shrinks_with_k(student, distill_batch):
    """KL − KL_k = p_R · KL(p|R ‖ q|R) ≥ 0, non-increasing in k, 0 at k = V; small on peaked teachers."""
    model, _ = student
    b = distill_batch
    with torch.no_grad():
        s, _ = answer_logits(model, b["input_ids"], b["attention_mask"], b["labels"])
        t, _ = answer_logits(model, b["teacher_input_ids"], b["teacher_attention_mask"], b["teacher_labels"])
        # T = 1: the random model is nearly uniform (worst case); T = 0.1: as peaked as a trained LM
        # (top-1 ≈ 0.6, top-64 mass ≈ 0.998 here).
        for temperature, bound_1024 in ((1.0, None), (0.1, 1e-4)):
            exact = full_kl(s, t, temperature).sum()
            errors = []
            for k in (8, 64, 1024):
                approx = bucket_kl(s, topk_targets(t, k, temperature), temperature).sum()
                lp = torch.log_softmax(t.float() / temperature, -1)
                lq = torch.log_softmax(s.float() / temperature, -1)
                tail = torch.ones_like(lp, dtype=torch.bool).scatter(-1, lp.topk(k).indices, False)
                p_r = (lp.exp() * tail).sum(-1)
                cp = torch.where(tail, lp - p_r.log()[:, None], 0.0)  # log p(i | R)
                cq = torch.where(tail, lq - (lq.exp() * tail).sum(-1).log()[:, None], 0.0)
                predicted = (p_r * (cp.exp() * tail * (cp - cq)).sum(-1)).sum()
                # float32 pairwise sums over N·V terms err by up to ~eps·log2(N·V)·|sum| ≈ 3e-6·|exact|;
                # at T = 0.1 |exact| is large and exact − approx is a small difference of two such sums.
                torch.testing.assert_close(exact - approx, predicted, rtol=1e-3, atol=max(1e-4, 3e-6 * exact.item()))
                errors.append((exact - approx).item() / exact.item())
            assert errors == sorted(errors, reverse=True) and errors[-1] >= -1e-6, errors
            if bound_1024 is not None:
                assert errors[-1] < bound_1024, errors
            full = bucket_kl(s, topk_targets(t, s.shape[-1], temperature), temperature).sum()
            torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- gradients


def test_gradients_reach_only_the_students_adapter(student, frozen_teacher, distill_batch):
    model, _ = student
    model.zero_grad()
    loss, _ = distill_loss(model, Teacher(frozen_teacher, 64, 1.0), distill_batch, loss="ce+kl", kl_weight=0.5)
    loss.backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None for p in lora.values())
    assert any(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_A" in n)
    assert all(p.grad is None and not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert all(p.grad is None and not p.requires_grad for p in frozen_teacher.parameters())
    model.zero_grad()

    # Self-distillation: the teacher pass is a constant (no graph), so the gradient is exactly that
    # of the KL against precomputed targets; the adapter stays in training mode afterwards.
    teacher = Teacher(None, 64, 1.0)
    loss, _ = distill_loss(model, teacher, distill_batch, loss="kl", kl_weight=0.5)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in lora.items()}
    model.zero_grad()
    targets = teacher.targets(model, distill_batch)
    assert not targets.logits.requires_grad and model.training
    s, n = answer_logits(model, distill_batch["input_ids"], distill_batch["attention_mask"], distill_batch["labels"])
    (bucket_kl(s, targets, 1.0).sum() / n.numel()).backward()
    for name, p in lora.items():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-7, rtol=1e-5)
    model.zero_grad()


# ---------------------------------------------------------------- cache


def test_cached_and_uncached_teacher_give_identical_losses(student, frozen_teacher, teacher_adapter, distill_batch,
                                                           tmp_path):
    model, tok = student
    calls = []
    hook = frozen_teacher.register_forward_hook(lambda *args: calls.append(1))
    try:
        cache = TeacherCache(tmp_path / "teacher-cache", teacher_fingerprint(str(teacher_adapter), "tiny-random"),
                             64, 1.0)
        uncached = Teacher(frozen_teacher, 64, 1.0)
        cached = Teacher(frozen_teacher, 64, 1.0, cache=cache)
        with torch.no_grad():
            ref, _ = distill_loss(model, uncached, distill_batch, loss="ce+kl", kl_weight=0.5)
            first, _ = distill_loss(model, cached, distill_batch, loss="ce+kl", kl_weight=0.5)
            assert len(calls) == 2 and cached.rows_computed == 4 and cached.cache_hits == 0
            second, _ = distill_loss(model, cached, distill_batch, loss="ce+kl", kl_weight=0.5)
            assert len(calls) == 2 and cached.cache_hits == 4  # no teacher forward the second time
        assert torch.equal(ref, first) and torch.equal(first, second)
        files = sorted((tmp_path / "teacher-cache").glob("*/*.safetensors"))
        assert len(files) == 4 and all(f.parent.name == f.stem[:2] for f in files)
        stored = load_file(str(files[0]))
        assert set(stored) == {"indices", "logits", "tail_lse"} and stored["indices"].shape[1] == 64

        # A batch with one new instance: only that row runs through the teacher.
        records = with_teacher(toy_stages(3, 5))[2].records
        with torch.no_grad():
            mixed, _ = distill_loss(model, cached, batch_of(records, tok), loss="kl", kl_weight=0.5)
            plain, _ = distill_loss(model, uncached, batch_of(records, tok), loss="kl", kl_weight=0.5)
        assert len(calls) == 4 and cached.rows_computed == 5
        torch.testing.assert_close(mixed, plain, rtol=1e-5, atol=1e-6)
    finally:
        hook.remove()
    # The key names the teacher, k and T: other settings never read these entries.
    assert TeacherCache(cache.root, cache.fingerprint, 32, 1.0).key([1, 2], 1) != cache.key([1, 2], 1)
    assert TeacherCache(cache.root, "other", 64, 1.0).key([1, 2], 1) != cache.key([1, 2], 1)


# ---------------------------------------------------------------- training


def test_ce_kl_training_over_two_stages_records_the_teacher_cost(tmp_path):
    stages = with_teacher(toy_stages(2, 4))
    args = toy_args(max_steps_per_stage=2, loss="ce+kl", kl_weight=0.5)
    train_stages(stages, model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=tmp_path / "self")
    history = json.loads((tmp_path / "self" / "train" / "history.json").read_text())
    assert [s["steps"] for s in history["stages"]] == [2, 2]
    for s in history["stages"]:
        assert 0 < s["teacher_wall_s"] < s["train_wall_s"] and s["teacher_rows"] == 4
        assert all({"ce", "kl"} <= set(e) for e in s["log_history"] if "loss" in e)
    assert history["teacher_wall_s"] == pytest.approx(sum(s["teacher_wall_s"] for s in history["stages"]))
    stage0_kl = [e["kl"] for e in history["stages"][0]["log_history"] if "kl" in e]
    assert max(stage0_kl) < 1e-3  # stage 0: teacher and student share the prompt (only dropout differs)

    # A frozen teacher (the first run's adapter) with the cache: stage 1 reuses stage 0's targets.
    frozen = toy_args(max_steps_per_stage=2, loss="kl", teacher=str(tmp_path / "self" / "adapter"),
                      teacher_cache=True)
    train_stages(stages, model_name="tiny-random", lora=LoraArgs(), args=frozen, run_dir=tmp_path / "frozen")
    history = json.loads((tmp_path / "frozen" / "train" / "history.json").read_text())
    assert [(s["teacher_rows"], s["teacher_cache_hits"]) for s in history["stages"]] == [(4, 0), (0, 4)]
    assert len(list((tmp_path / "frozen" / "train" / "teacher-cache").glob("*/*.safetensors"))) == 4
    config = json.loads((tmp_path / "frozen" / "train" / "config.json").read_text())
    assert config["teacher_fingerprint"] and config["train"]["teacher_cache"] is True


def test_kl_training_resumes_exactly_from_a_checkpoint(tmp_path):
    stages = with_teacher(toy_stages(2, 4))
    args = toy_args(max_steps_per_stage=4, loss="ce+kl", keep_checkpoints=True)
    run = tmp_path / "run"
    train_stages(stages, model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=run)
    reference = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    losses = [e["loss"] for e in json.loads((run / "train" / "history.json").read_text())["stages"][1]["log_history"]
              if "loss" in e]
    # Undo stage 1 after its checkpoint-2, as a crash there would have left the run.
    for path in (run / "adapter", run / "train" / "stage-1" / "final", run / "train" / "stage-1" / "checkpoint-4"):
        shutil.rmtree(path)
    train_stages(stages, model_name="tiny-random", lora=LoraArgs(), args=args, run_dir=run, resume=True)
    again = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert reference.keys() == again.keys() and all(torch.equal(reference[k], again[k]) for k in reference)
    stage1 = json.loads((run / "train" / "history.json").read_text())["stages"][1]
    assert stage1["resumed_from"] == "checkpoint-2"
    assert [e["loss"] for e in stage1["log_history"] if "loss" in e] == losses


# ---------------------------------------------------------------- configuration and data


def test_kl_options_are_validated(tmp_path):
    TrainArgs(loss="ce+kl", kl_weight=0.3, kl_temperature=2.0, kl_topk=8).validate()
    cases = [
        ({"loss": "kl", "teacher_cache": True}, "teacher_cache needs a frozen teacher"),
        ({"loss": "ce+kl", "kl_weight": 1.0}, "kl_weight must be in \\(0, 1\\)"),
        ({"loss": "kl", "kl_temperature": 0.0}, "kl_temperature must be > 0"),
        ({"loss": "kl", "kl_topk": 0}, "kl_topk must be >= 1"),
        ({"loss": "kl", "teacher": str(tmp_path / "missing")}, "neither 'self' nor an existing directory"),
        ({"loss": "kl", "teacher": str(tmp_path)}, "not 'self', a PEFT adapter directory or a model directory"),
    ]
    for changes, message in cases:
        with pytest.raises(ConfigError, match=message):
            TrainArgs(**changes).validate()
    with pytest.raises(ConfigError, match="train.loss: 'js' is not one of ce, kl, ce\\+kl"):
        from_dict(TrainArgs, {"loss": "js"}, where="train")
    TrainArgs(kl_weight=7.0, teacher_cache=True).validate()  # KL options are ignored by loss 'ce'
    with pytest.raises(ConfigError, match="needs teacher prompts, but stage 0 record '0'"):
        train_stages(toy_stages(2, 2), model_name="tiny-random", lora=LoraArgs(), args=toy_args(loss="kl"),
                     run_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


def test_ce_fingerprints_ignore_the_kl_fields():
    from promptintern.config import RunConfig
    from promptintern.training import train_record

    stages = toy_stages(1, 2)
    a = train_record(stages, "tiny-random", LoraArgs(), TrainArgs())
    assert not {"kl_weight", "teacher", "teacher_cache"} & set(a["train"]) and "teacher_fingerprint" not in a
    assert train_record(stages, "tiny-random", LoraArgs(), TrainArgs(kl_weight=0.9)) == a
    assert "kl_weight" in train_record(stages, "tiny-random", LoraArgs(), TrainArgs(loss="kl"))["train"]
    cfg = RunConfig()
    before = cfg.fingerprint()
    cfg.train.kl_topk = 8
    assert cfg.fingerprint() == before
    cfg.train.loss = "kl"
    assert cfg.fingerprint() != before


def test_build_stages_attaches_the_teacher_prompt(tmp_path):
    inst = make_instances(5)
    sched = Schedule(stages=3, shape="linear", tau0=1.0, k=2)
    args = (ToyTask(), inst, sched.points(), toy_template_at, neighbours_of(inst, 2))
    plain = build_stages(*args)
    stages = build_stages(*args, teacher_point=StagePoint(0, sched.tau0, sched.k))
    for s, p in zip(stages, plain, strict=True):
        for rec, ref, first in zip(s.records, p.records, stages[0].records, strict=True):
            assert rec.teacher_messages == first.messages and replace(rec, teacher_messages=None) == ref
    assert stages[0].records[0].teacher_messages == stages[0].records[0].messages
    prints = save_stages(stages, tmp_path / "with")
    assert [s.records for s in load_stages(tmp_path / "with", 3)] == [s.records for s in stages]
    plain_prints = save_stages(plain, tmp_path / "plain")
    assert "teacher_messages" not in (tmp_path / "plain" / "stage-0.jsonl").read_text()
    assert plain_prints != prints


def test_pipeline_gives_a_query_only_student_the_full_prompt_teacher(tmp_path):
    from pipeline_fixtures import tiny_run_config
    from promptintern.config import RunConfig
    from promptintern.pipeline import prepare

    raw = tiny_run_config(tmp_path / "run", method="query-only")
    raw["train"] = {**raw["train"], "loss": "ce+kl"}
    cfg = from_dict(RunConfig, raw)
    prep = prepare(cfg)
    (stage,) = prep.stages
    rec = stage.records[0]
    assert rec.messages[-1]["content"].startswith("Question: ")  # the student: the query alone
    teacher_turn = rec.teacher_messages[-1]["content"]
    assert len(teacher_turn) > 5 * len(rec.messages[-1]["content"]) and teacher_turn.endswith(rec.messages[-1]["content"])


# ---------------------------------------------------------------- gold pairs and a teacher's rows in one batch


def test_a_mixed_batch_is_ce_on_the_gold_rows_plus_kl_on_the_teachers_rows(student, frozen_teacher):
    """Rows of data.teacher_answers learn by KL to the teacher, gold pairs by CE, in the same batch: the
    loss is the sum of what each group gives alone, and the teacher runs on its rows only."""
    model, tok = student
    records = with_teacher(toy_stages(3, 4))[2].records
    gold = [replace(r, teacher_messages=None) for r in records[:2]]
    taught = [replace(r, from_teacher=True) for r in records[2:]]
    data, dropped = tokenize_records([*gold, *taught], tok, 4096, with_teacher=False, teacher_rows_kl=True)
    assert not dropped and [("teacher_input_ids" in d, d.get("from_teacher")) for d in data] == \
        [(False, None), (False, None), (True, 1), (True, 1)]
    batch = PadCollator(tok.pad_token_id)(data)
    assert batch["kl_rows"].tolist() == [False, False, True, True] and batch["teacher_input_ids"].shape[0] == 2
    teacher = Teacher(frozen_teacher, 64, 2.0)
    with torch.no_grad():
        mixed, parts = distill_loss(model, teacher, batch, loss="ce", kl_weight=0.5, rows_loss="kl")
        gold_batch = PadCollator(tok.pad_token_id)(tokenize_records(gold, tok, 4096)[0])
        ce_alone = answer_loss(model, gold_batch)
        kl_alone, kl_parts = distill_loss(model, Teacher(frozen_teacher, 64, 2.0), batch_of(taught, tok),
                                          loss="kl", kl_weight=0.5)
    n_gold = int((gold_batch["labels"] != -100).sum())
    assert teacher.rows_computed == 2  # the teacher ran on its own two rows only
    assert parts.ce_tokens == n_gold and parts.kl_tokens == kl_parts.n_tokens
    torch.testing.assert_close(mixed * parts.n_tokens, ce_alone * n_gold + kl_alone * kl_parts.n_tokens,
                               rtol=1e-5, atol=1e-5)
    # The same rows learned by CE on the teacher's text: plain cross-entropy over the whole batch.
    data, _ = tokenize_records([*gold, *taught], tok, 4096, with_teacher=False, teacher_rows_kl=False)
    batch = PadCollator(tok.pad_token_id)(data)
    assert "teacher_input_ids" not in batch and batch["from_teacher"].tolist() == [False, False, True, True]
    with torch.no_grad():
        as_ce, parts = distill_loss(model, teacher, batch, loss="ce", kl_weight=0.5, rows_loss="ce")
        plain = answer_loss(model, PadCollator(tok.pad_token_id)(tokenize_records(records, tok, 4096)[0]))
    torch.testing.assert_close(as_ce, plain, rtol=1e-5, atol=1e-6)
    assert parts.kl_tokens == 0
