"""Serving in bf16 serves the model that was trained: the LoRA update is not rounded away.

A real checkpoint stores its weights in bf16, so every weight is exactly a bf16 number and a
LoRA update smaller than half a bf16 step of it vanishes when it is merged into bf16 weights —
whether the merge runs in bf16 or in fp32 followed by a cast. The base here is the tiny model
saved in bf16, and the adapter's update is small, as a real fine-tune's is relative to its
weights. Logits are compared in float32 (weights upcast) so that only the weights differ, not
bf16 arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from promptintern.inference import load_for_serving
from promptintern.models import load_model

PROMPT = "Request: list the files in the current directory sorted by size"


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """(base model directory saved in bf16, adapter directory, token ids of a prompt)."""
    root = tmp_path_factory.mktemp("bf16")
    model, tok = load_model("tiny-random", device="cpu", dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    _small_adapter(str(root / "base"), root / "adapter")
    return str(root / "base"), root / "adapter", tok(PROMPT, return_tensors="pt").input_ids


def _trained_logits(base_dir: str, adapter, ids) -> torch.Tensor:
    """The trained model: fp32 base (holding the bf16 values exactly) + the adapter, unmerged."""
    return _logits(PeftModel.from_pretrained(load_model(base_dir, device="cpu", dtype=torch.float32)[0], str(adapter)), ids)


def _small_adapter(base_dir: str, path) -> None:
    """An adapter whose per-weight update is well under half a bf16 step of most weights."""
    model, _ = load_model(base_dir, device="cpu", dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 1e-4)
    peft_model.save_pretrained(path)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.float()(input_ids=ids).logits


def test_bf16_serving_keeps_the_lora_update(bf16_run):
    base_dir, adapter, ids = bf16_run
    base_logits = _logits(load_model(base_dir, device="cpu", dtype=torch.float32)[0], ids)
    trained = _trained_logits(base_dir, adapter, ids)
    effect = (trained - base_logits).norm()
    assert effect > 0

    served, _ = load_for_serving(base_dir, adapter, device="cpu", dtype=torch.bfloat16)
    assert next(p for n, p in served.named_parameters() if "lora" not in n).dtype == torch.bfloat16
    kept = _logits(served, ids)
    assert (kept - trained).norm() < 0.05 * effect, "bf16 serving lost the adapter's update"

    # What the old path did (merge into bf16 weights) loses most of it: the check above can fail.
    naive = PeftModel.from_pretrained(load_model(base_dir, device="cpu", dtype=torch.bfloat16)[0], str(adapter))
    assert (_logits(naive.merge_and_unload(), ids) - trained).norm() > 0.5 * effect


def test_fp32_serving_merges_exactly(bf16_run):
    base_dir, adapter, ids = bf16_run
    served, _ = load_for_serving(base_dir, adapter, device="cpu", dtype=torch.float32)
    assert not isinstance(served, PeftModel)  # merged: no adapter overhead where merging is exact
    assert torch.allclose(_logits(served, ids), _trained_logits(base_dir, adapter, ids), atol=1e-5)
