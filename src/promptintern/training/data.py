"""Stage records as token ids: answer-only labels, records too long dropped (never cut), padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..prompt import IGNORE_INDEX, encode_chat
from ..stages import StageRecord


def tokenize_records(
    records: Sequence[StageRecord], tokenizer: Any, max_length: int, with_teacher: bool = False,
    teacher_rows_kl: bool | None = None,
) -> tuple[list[dict[str, list[int]]], list[str]]:
    """Encode records as ``{"input_ids", "labels"}`` (labels -100 on the prompt).

    A record that learns from a teacher's logits also holds ``teacher_input_ids`` /
    ``teacher_labels``, the record's ``teacher_messages`` with the same answer, and is kept only
    when both fit: every record under ``with_teacher`` (a KL ``train.loss``), except that the rows
    of ``data.teacher_answers`` (``from_teacher``) follow ``teacher_rows_kl`` when it is given.
    Those rows are marked ``from_teacher: 1``. Returns the encoded examples and the ids of the
    records dropped for exceeding ``max_length`` tokens (see the module docstring for why they are
    not truncated).
    """
    kept, dropped = [], []
    for rec in records:
        enc = encode_chat(tokenizer, rec.messages, rec.answer)
        longest = len(enc["input_ids"])
        if needs_teacher(rec, with_teacher, teacher_rows_kl):
            if rec.teacher_messages is None:
                raise ConfigError(f"record {rec.id!r} has no teacher prompt (teacher_messages), which a KL loss needs")
            t = encode_chat(tokenizer, rec.teacher_messages, rec.answer)
            if _answer_ids(t["labels"]) != _answer_ids(enc["labels"]):
                raise DataError(f"record {rec.id!r}: teacher and student answers tokenize differently")
            enc = {**enc, "teacher_input_ids": t["input_ids"], "teacher_labels": t["labels"]}
            longest = max(longest, len(t["input_ids"]))
        if rec.from_teacher:
            enc["from_teacher"] = 1
        if longest > max_length:
            dropped.append(rec.id)
        else:
            kept.append(enc)
    return kept, dropped


def needs_teacher(rec: StageRecord, gold_kl: bool, teacher_rows_kl: bool | None) -> bool:
    """Whether ``rec`` is learned from a teacher's logits: gold pairs by ``train.loss``, the rows of
    ``data.teacher_answers`` by ``train.teacher_rows_loss`` (None: like the gold pairs)."""
    return bool(teacher_rows_kl) if rec.from_teacher and teacher_rows_kl is not None else gold_kl


def _answer_ids(labels: Sequence[int]) -> list[int]:
    return [t for t in labels if t != IGNORE_INDEX]


@dataclass
class PadCollator:
    """Pads a batch on the right: ``pad_token_id`` in input_ids, 0 in the mask, -100 in labels.

    The teacher's sequences (``teacher_input_ids`` / ``teacher_labels``) of the rows that have
    them are padded the same way into ``teacher_input_ids``, ``teacher_attention_mask``,
    ``teacher_labels``; when only some rows have them (teacher rows learned by KL beside gold rows
    learned by CE), ``kl_rows`` marks those rows (bool ``[B]``) and ``from_teacher`` the teacher's
    rows. A batch whose rows all have them, and none from a teacher, is what it always was.
    """

    pad_token_id: int

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self._pad(features, "")
        kl = [f for f in features if "teacher_input_ids" in f]
        if kl:
            batch.update(self._pad(kl, "teacher_"))
        if len(kl) != len(features) or any(f.get("from_teacher") for f in features):
            batch["kl_rows"] = torch.tensor(["teacher_input_ids" in f for f in features])
            batch["from_teacher"] = torch.tensor([bool(f.get("from_teacher")) for f in features])
        return batch

    def _pad(self, features: Sequence[dict[str, list[int]]], prefix: str) -> dict[str, torch.Tensor]:
        width = max(len(f[f"{prefix}input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f[f"{prefix}input_ids"])
            ids[row, :n] = torch.tensor(f[f"{prefix}input_ids"])
            labels[row, :n] = torch.tensor(f[f"{prefix}labels"])
            mask[row, :n] = 1
        return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}
