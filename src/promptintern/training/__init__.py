"""Progressive LoRA training, in one home: the stage loop and every part it is built from.

- :mod:`.loop`: the stage loop (``train_stages``): one adapter trained stage after stage, resume, publish;
- :mod:`.data`: stage records → token ids with answer-only labels, and their padding;
- :mod:`.shared_prefix`: the tokens all rows of a batch share run once, then only the suffixes;
- :mod:`.loss`: answer-only logits (LM-head hook), the cross-entropy, the top-k KL to a teacher;
- :mod:`.teacher`: the KL teacher (the student itself, a frozen adapter or model), its target cache;
- :mod:`.hf`: the Hugging Face ``Trainer`` subclass, its callbacks and ``TrainingArguments``;
- :mod:`.validation`: each stage's validation loss and the last stage's best checkpoint;
- :mod:`.checkpoints`: the run directory's bookkeeping: what was trained, what is done, what resumes;
- :mod:`.stop`: a clean stop on SIGTERM / SIGINT (a checkpoint at the current step).

The public names below are imported on first use (PEP 562), so that importing a light part
(``.stop``, ``.checkpoints``) or the torch-free config layer never imports torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module of this package that defines it
_EXPORTS = {
    "train_stages": "loop",
    "PadCollator": "data",
    "tokenize_records": "data",
    "BatchTokens": "shared_prefix",
    "token_summary": "shared_prefix",
    "answer_logits": "loss",
    "answer_loss": "loss",
    "answer_mask": "loss",
    "bucket_kl": "loss",
    "distill_loss": "loss",
    "LossParts": "loss",
    "TeacherTargets": "loss",
    "topk_targets": "loss",
    "Teacher": "teacher",
    "TeacherCache": "teacher",
    "load_frozen_teacher": "teacher",
    "teacher_fingerprint": "teacher",
    "check_passthrough": "hf",
    "resolve_dtype": "hf",
    "run_schedule": "hf",
    "DONE_FILE": "checkpoints",
    "adapter_problem": "checkpoints",
    "checkpoint_problem": "checkpoints",
    "latest_checkpoint": "checkpoints",
    "stage_done": "checkpoints",
    "train_record": "checkpoints",
    "StopRequest": "stop",
    "stop_requests": "stop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then cached in this module)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
