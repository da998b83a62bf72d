"""Shared-prefix training gives the plain path's per-record losses and LoRA gradients (fp32, tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptintern.distill import answer_logits, answer_mask
from promptintern.errors import ConfigError
from promptintern.shared_prefix import MIN_PREFIX_TOKENS, SharedPrefixUnsupported, shared_prefix_length
from promptintern.trainer import LoraArgs, PadCollator, tokenize_records

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import tiny_lora_model, toy_stages  # noqa: E402


@pytest.fixture(scope="module")
def lora_model():
    return tiny_lora_model()


def _batch(tok, records):
    return PadCollator(tok.pad_token_id)(tokenize_records(records, tok, 4096)[0])


def _per_record_losses_and_grads(model, batch, mode):
    logits, targets = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                    shared_prefix=mode)
    per_token = F.cross_entropy(logits.float(), targets, reduction="none")
    counts = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
    per_record = torch.stack([part.mean() for part in per_token.split(counts)])
    model.zero_grad()
    per_token.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return per_record.detach(), grads


def test_losses_and_gradients_equal_the_plain_path(lora_model):
    model, tok = lora_model
    # ragged suffixes after one shared system+template prefix: requests of 1, 2 and 3 digits
    records = [r for r in toy_stages(3, 120)[0].records if r.id in ("3", "7", "15", "64", "101", "118")]
    batch = _batch(tok, records)
    keep = answer_mask(batch["labels"])
    prefix = shared_prefix_length(batch["input_ids"], batch["attention_mask"], keep)
    lengths = batch["attention_mask"].sum(dim=1)
    assert prefix >= MIN_PREFIX_TOKENS and len(set(lengths.tolist())) > 1  # shared prefix, ragged rows
    assert prefix < int(keep.float().argmax(dim=1).min()) + 1  # no answer position inside the prefix

    plain_loss, plain_grads = _per_record_losses_and_grads(model, batch, "off")
    shared_loss, shared_grads = _per_record_losses_and_grads(model, batch, "on")
    torch.testing.assert_close(shared_loss, plain_loss, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        assert g.abs().sum() > 0, name  # every LoRA matrix takes part
        torch.testing.assert_close(shared_grads[name], g, atol=1e-5, rtol=1e-4)


def test_prefix_detection_from_token_ids(lora_model):
    _, tok = lora_model
    same = toy_stages(3, 4)[0].records
    batch = _batch(tok, same)
    keep = answer_mask(batch["labels"])
    ids = batch["input_ids"]
    prefix = shared_prefix_length(ids, batch["attention_mask"], keep)
    assert (ids[:, :prefix] == ids[:1, :prefix]).all() and not (ids[:, prefix] == ids[0, prefix]).all()
    # the query-only stage shares only the system message and 'Request: ' (17 tokens): the plain path
    last = _batch(tok, toy_stages(3, 4)[2].records)
    assert shared_prefix_length(last["input_ids"], last["attention_mask"], answer_mask(last["labels"])) == 0
    # one row: nothing to share
    assert shared_prefix_length(ids[:1], batch["attention_mask"][:1], keep[:1]) == 0


def test_gradient_checkpointing_falls_back_in_auto_and_raises_in_on(lora_model):
    model, tok = lora_model
    batch = _batch(tok, toy_stages(3, 4)[0].records)
    plain, _ = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:  # with gradients, as in training: the layers then refuse to cache
        auto, _ = answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                shared_prefix="auto")
        with pytest.raises(SharedPrefixUnsupported):
            answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], shared_prefix="on")
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    torch.testing.assert_close(auto.detach(), plain.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="train.shared_prefix"):
        answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], shared_prefix="yes")


def test_training_uses_it_and_reports_tokens(tmp_path):
    """Stage 0 (long shared template) runs every batch with the prefix shared; the query-only stage
    does not; history.json reports padding share, computed tokens and peak memory per stage. With
    the switch off, the same run computes more token positions and gives the same losses."""
    import json

    from promptintern.trainer import train_stages
    from train_fixtures import toy_args

    losses = {}
    for mode in ("on", "off"):
        run_dir = tmp_path / mode
        train_stages(toy_stages(2, 8), model_name="tiny-random", lora=LoraArgs(dropout=0.0),
                     args=toy_args(max_steps_per_stage=2, shared_prefix=mode), run_dir=run_dir)
        stages = json.loads((run_dir / "train" / "history.json").read_text())["stages"]
        first, last = stages[0]["tokens"], stages[1]["tokens"]
        assert first["batches"] == 2 and 0 <= first["padding_share"] < 1 and stages[0]["peak_rss_mb"] > 0
        assert last["shared_prefix_batches"] == 0  # the query-only stage shares too little
        if mode == "on":
            assert first["shared_prefix_batches"] == 2 and first["computed"] < first["padded"]
        else:
            assert first["shared_prefix_batches"] == 0 and first["computed"] == first["padded"]
        losses[mode] = [s["train_loss"] for s in stages]
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
