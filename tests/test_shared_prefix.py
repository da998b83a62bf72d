"""Shared-prefix training gives the plain path's per-record losses and LoRA gradients (fp32, tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from promptintern.args import LoraArgs
from promptintern.errors import ConfigError
from promptintern.training import PadCollator, answer_logits, answer_mask, tokenize_records
from promptintern.training.shared_prefix import (
    MIN_PREFIX_TOKENS,
    SharedPrefixUnsupported,
    shared_prefix_length,
)

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


def _saved_bytes(model, batch, mode):
    """Bytes of the activations autograd keeps for the backward pass (parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], shared_prefix=mode)
    return sum(seen.values())


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(lora_model, reentrant):
    """Non-reentrant checkpointing keeps the shared prefix (same losses and gradients as the plain path,
    far fewer saved activations); reentrant checkpointing would detach the prefix's keys and values,
    so auto falls back to the plain path and on raises."""
    model, tok = lora_model
    batch = _batch(tok, toy_stages(3, 4)[0].records)
    plain_loss, plain_grads = _per_record_losses_and_grads(model, batch, "off")
    model.train()
    unchecked = _saved_bytes(model, batch, "on")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    try:
        if reentrant:
            auto_loss, auto_grads = _per_record_losses_and_grads(model, batch, "auto")
            with pytest.raises(SharedPrefixUnsupported, match="reentrant"):
                answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], shared_prefix="on")
        else:
            checked = _saved_bytes(model, batch, "on")
            assert checked < unchecked / 3, (checked, unchecked)
            auto_loss, auto_grads = _per_record_losses_and_grads(model, batch, "on")
        assert all(not getattr(m, "_can_checkpoint_with_cache", False) for m in model.modules())  # restored
    finally:
        model.activation_checkpointing_disable()
        model.eval()
    torch.testing.assert_close(auto_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name, g in plain_grads.items():
        torch.testing.assert_close(auto_grads[name], g, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="train.shared_prefix"):
        answer_logits(model, batch["input_ids"], batch["attention_mask"], batch["labels"], shared_prefix="yes")


def test_activation_checkpointing_replays_the_dropout_masks():
    """With LoRA dropout on, the checkpointed shared step draws the same masks as the unchecked one:
    the same losses and gradients from the same seed."""
    from peft import get_peft_model

    from promptintern.models import load_model

    base, tok = load_model("tiny-random", device="cpu")
    model = get_peft_model(base, LoraArgs(dropout=0.3).to_peft())
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.train()
    batch = _batch(tok, toy_stages(3, 4)[0].records)
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(1)
        results.append(_per_record_losses_and_grads(model, batch, "on"))
    (loss, grads), (ck_loss, ck_grads) = results
    torch.manual_seed(2)
    other, _ = _per_record_losses_and_grads(model, batch, "on")
    assert not torch.allclose(other, loss)  # the dropout masks matter here
    torch.testing.assert_close(ck_loss, loss, atol=1e-6, rtol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(ck_grads[name], g, atol=1e-6, rtol=1e-5)


def test_training_uses_it_and_reports_tokens(tmp_path):
    """Stage 0 (long shared template) runs every batch with the prefix shared; the query-only stage
    does not; history.json reports padding share, computed tokens and peak memory per stage. With
    the switch off, the same run computes more token positions and gives the same losses; so does
    the shared prefix under transformers' activation checkpointing (train.extra)."""
    import json

    from promptintern.training import train_stages
    from train_fixtures import toy_args

    losses = {}
    for mode, extra in (("on", {}), ("off", {}), ("on", {"activation_checkpointing": True})):
        run_dir = tmp_path / f"{mode}{len(extra)}"
        train_stages(toy_stages(2, 8), model_name="tiny-random", lora=LoraArgs(dropout=0.0),
                     args=toy_args(max_steps_per_stage=2, shared_prefix=mode, extra=extra), run_dir=run_dir)
        stages = json.loads((run_dir / "train" / "history.json").read_text())["stages"]
        first, last = stages[0]["tokens"], stages[1]["tokens"]
        assert first["batches"] == 2 and 0 <= first["padding_share"] < 1 and stages[0]["peak_rss_mb"] > 0
        assert last["shared_prefix_batches"] == 0  # the query-only stage shares too little
        if mode == "on":
            assert first["shared_prefix_batches"] == 2 and first["computed"] < first["padded"]
        else:
            assert first["shared_prefix_batches"] == 0 and first["computed"] == first["padded"]
        losses[mode, len(extra)] = [s["train_loss"] for s in stages]
    assert losses["on", 0] == pytest.approx(losses["off", 0], rel=1e-4)
    assert losses["on", 1] == pytest.approx(losses["on", 0], rel=1e-5)
