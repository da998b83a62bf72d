"""The training losses: answer-only logits, the cross-entropy of plain training, and the KL to a teacher.

Every loss computes the LM head at the answer positions only (a pre-hook on the head keeps those
rows): over a 49k vocabulary the head at every prompt position is a large, useless share of a step.

The KL losses (``kl``, ``ce+kl``) distil a teacher that sees the stage-0 prompt into the student
that sees the stage's prompt, on the same gold answer (the teacher: :mod:`.teacher`). They live
here, beside the cross-entropy they mix with; the teacher module imports this one (for the
answer-only logits and the targets' form), so the loss takes any object with the teacher's
``targets`` and ``temperature`` (:class:`TargetSource`) rather than importing the teacher back.

Estimator (a KL between coarse-grained distributions). Per answer position, with
``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)``, let ``S`` be the teacher's
``kl_topk`` most likely tokens and ``R`` the rest of the vocabulary, one bucket::

    KL_k = Σ_{i∈S} p_i log(p_i / q_i) + p_R log(p_R / q_R),   p_R = Σ_{i∉S} p_i,  q_R = Σ_{i∉S} q_i

The teacher keeps only its top-k logits and the logsumexp of the others (``p_R`` is exact, not
``1 − Σ p_S``); the student's logits exist in full at the answer positions anyway (the CE term
needs them), so ``q_R`` is exact too. By the log-sum inequality ``0 ≤ KL − KL_k =
p_R · KL(p|R ‖ q|R)``: the estimate never exceeds the full KL, misses only the mismatch
*inside* the tail, is exact when k covers the vocabulary, and grows towards the full KL as k
grows (the top-k sets are nested). The loss is ``T² · KL_k`` summed over answer tokens and
divided like the cross-entropy (answer tokens of the accumulated batch), so gradients keep
their scale across temperatures (Hinton et al.).

Memory: the LM head runs at the answer positions only for both models, so no full-vocabulary
logits exist for prompt positions; the teacher's answer-position logits are reduced to top-k +
tail logsumexp chunk by chunk and freed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..args import KL_LOSSES
from ..errors import ConfigError, DataError, ModelError
from ..prompt import IGNORE_INDEX
from .shared_prefix import (
    BatchTokens,
    SharedPrefixUnsupported,
    check_mode,
    prefix_then_suffix,
    shared_prefix_length,
)


def answer_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is an answer token (position t predicts token t + 1)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _output_head(model: Any) -> torch.nn.Module:
    """The LM head of ``model``, looking through DDP / accelerate wrappers and peft."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        raise ModelError(f"{type(inner).__name__} exposes no output embeddings (get_output_embeddings()); "
                         "answer-only logits need a causal LM with an LM head")
    return head


@contextlib.contextmanager
def _head_rows(head: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While active, ``head`` sees only the rows ``hidden[keep]`` of its ``[B, T, H]`` input.

    A hook rather than a boolean ``logits_to_keep``: only recent transformers releases accept such
    a mask (5.24 does; 5.17 raises IndexError, seen on a GPU image), remote-code models may never,
    and the hook works on every causal LM whose head is called on the final hidden states.
    """
    def keep_rows(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden, *rest = args
        if hidden.dim() != 3 or hidden.shape[:2] != keep.shape:
            return None
        return (hidden[keep.to(hidden.device)], *rest)

    handle = head.register_forward_pre_hook(keep_rows)
    try:
        yield
    finally:
        handle.remove()


def answer_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor, shared_prefix: str = "off",
                  tokens: list[BatchTokens] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LM-head logits at the answer positions only, flattened row by row ``[N, V]``, and their targets ``[N]``.

    ``shared_prefix`` (auto | on | off): run the tokens all rows share once (see
    :mod:`.shared_prefix`); ``auto`` falls back to the plain pass where unsupported.
    ``tokens``, when given, receives this batch's token accounting (padding, shared prefix).
    """
    keep = answer_mask(labels)
    head = _output_head(model)
    prefix = shared_prefix_length(input_ids, attention_mask, keep) if check_mode(shared_prefix) != "off" else 0
    logits = None
    if prefix:
        try:
            logits = prefix_then_suffix(model, _head_rows, head, input_ids, attention_mask, keep, prefix)
        except SharedPrefixUnsupported:
            if shared_prefix == "on":
                raise
    if logits is None:
        prefix = 0
        with _head_rows(head, keep):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    if tokens is not None:
        tokens.append(BatchTokens(*input_ids.shape, int(attention_mask.sum()), prefix))
    if logits.dim() != 2:
        raise ModelError(f"{type(model).__name__} did not call its LM head on the final hidden states "
                         "(answer-only logits need a standard causal LM)")
    return logits, labels[:, 1:][keep[:, :-1]]



def answer_loss(model: Any, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None,
                shared_prefix: str = "off", tokens: list[BatchTokens] | None = None) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens, with LM-head logits at those positions only.

    Position ``t`` predicts token ``t + 1``, so the kept positions are those whose next label
    is not -100. The summed loss is divided by ``num_items_in_batch`` (the answer-token count
    of the whole accumulated batch, from the Trainer) or else by this batch's count.
    """
    logits, targets = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                    shared_prefix=shared_prefix, tokens=tokens)
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return total / count


# ---------------------------------------------------------------- the KL estimator

_TOPK_CHUNK = 1024  # answer positions reduced to top-k at a time (bounds the temporary [chunk, V] copies)


@dataclass
class TeacherTargets:
    """The teacher's reduced distribution at N answer positions (see the module docstring)."""

    indices: torch.Tensor  # [N, k] int64: the teacher's top-k token ids
    logits: torch.Tensor  # [N, k] float32: their logits divided by T
    tail_lse: torch.Tensor  # [N] float32: logsumexp of the other logits / T (-inf when k = V)

    def __len__(self) -> int:
        return self.indices.shape[0]

    def to(self, device: Any) -> TeacherTargets:
        return TeacherTargets(self.indices.to(device), self.logits.to(device), self.tail_lse.to(device))

    def split(self, sizes: Sequence[int]) -> list[TeacherTargets]:
        parts = zip(self.indices.split(list(sizes)), self.logits.split(list(sizes)),
                    self.tail_lse.split(list(sizes)), strict=True)
        return [TeacherTargets(i, v, t) for i, v, t in parts]

    @staticmethod
    def cat(parts: Sequence[TeacherTargets]) -> TeacherTargets:
        return TeacherTargets(torch.cat([p.indices for p in parts]), torch.cat([p.logits for p in parts]),
                              torch.cat([p.tail_lse for p in parts]))


@torch.no_grad()
def topk_targets(logits: torch.Tensor, k: int, temperature: float) -> TeacherTargets:
    """Reduce teacher logits ``[N, V]`` to top-k logits / T plus the logsumexp of the rest."""
    k = min(k, logits.shape[-1])
    idx, vals, tails = [], [], []
    for part in logits.split(_TOPK_CHUNK):
        z = part.float() / temperature
        v, i = z.topk(k, dim=-1)
        if k < z.shape[-1]:
            tail = z.scatter(-1, i, float("-inf")).logsumexp(-1)
        else:
            tail = torch.full(z.shape[:1], float("-inf"), device=z.device)
        idx.append(i)
        vals.append(v)
        tails.append(tail)
    if not idx:  # no answer position
        empty = logits.new_empty((0, k), dtype=torch.float32)
        return TeacherTargets(empty.long(), empty, empty.new_empty((0,)))
    return TeacherTargets(torch.cat(idx), torch.cat(vals), torch.cat(tails))


def bucket_kl(student_logits: torch.Tensor, targets: TeacherTargets, temperature: float) -> torch.Tensor:
    """``KL_k(p_teacher ‖ q_student)`` per answer position ``[N]`` (not yet scaled by T²).

    Both normalisers are assembled the same way (top-k logsumexp ⊕ tail logsumexp), so equal
    logits give exactly zero.
    """
    s = student_logits.float() / temperature
    idx = targets.indices
    s_top = s.gather(-1, idx)
    log_p_top_unnorm = targets.logits
    if idx.shape[-1] < s.shape[-1]:
        s_tail = s.scatter(-1, idx, float("-inf")).logsumexp(-1)
        lse_s = torch.logaddexp(s_top.logsumexp(-1), s_tail)
        lse_t = torch.logaddexp(log_p_top_unnorm.logsumexp(-1), targets.tail_lse)
        log_q_tail, log_p_tail = s_tail - lse_s, targets.tail_lse - lse_t
        tail = log_p_tail.exp() * (log_p_tail - log_q_tail)
    else:  # k covers the vocabulary: no tail bucket
        lse_s, lse_t = s_top.logsumexp(-1), log_p_top_unnorm.logsumexp(-1)
        tail = torch.zeros_like(lse_s)
    log_q_top = s_top - lse_s[:, None]
    log_p_top = log_p_top_unnorm - lse_t[:, None]
    return (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1) + tail


# ---------------------------------------------------------------- the KL stage losses


class TargetSource(Protocol):
    """What the KL losses need of a teacher (:class:`.teacher.Teacher`): its targets for a batch."""

    temperature: float

    def targets(self, student: Any, inputs: dict[str, torch.Tensor]) -> TeacherTargets: ...


@dataclass
class LossParts:
    """The summed (not yet normalised) terms of one batch and the answer tokens each term covers."""

    ce: torch.Tensor
    kl: torch.Tensor  # T²-scaled
    n_tokens: int
    ce_tokens: int = 0
    kl_tokens: int = 0


def _term_weights(loss: str, kl_weight: float) -> tuple[float, float]:
    """(CE weight, KL weight) of an answer token learned by ``loss``."""
    return {"ce": (1.0, 0.0), "kl": (0.0, 1.0), "ce+kl": (1.0 - kl_weight, kl_weight)}[loss]


def distill_loss(model: Any, teacher: TargetSource, inputs: dict[str, torch.Tensor], *, loss: str,
                 kl_weight: float, student: Any = None, num_items_in_batch: Any = None,
                 shared_prefix: str = "off", tokens: list[BatchTokens] | None = None,
                 rows_loss: str | None = None) -> tuple[torch.Tensor, LossParts]:
    """``kl`` = T²·KL_k, ``ce+kl`` = (1 − λ)·CE + λ·T²·KL_k, per answer token of the accumulated batch.

    ``model`` is the (possibly DDP-wrapped) student; ``student`` its unwrapped module for a
    self-teacher (default: ``model``). A batch that holds rows of ``data.teacher_answers`` or rows
    without a teacher prompt (the collator's ``kl_rows``) is scored per row: the gold pairs by
    ``loss`` (here also ``ce``), the teacher's rows by ``rows_loss`` (None: like the gold pairs),
    and the teacher runs on the rows that need its logits only.
    """
    if loss not in (*KL_LOSSES, "ce") or (loss == "ce" and "kl_rows" not in inputs):
        raise ConfigError(f"train.loss: {loss!r} is not one of {', '.join(KL_LOSSES)}")
    logits, targets = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                    shared_prefix=shared_prefix, tokens=tokens)
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    if "kl_rows" in inputs:
        total, parts = _per_row_loss(logits, targets, teacher, student if student is not None else model, inputs,
                                     _term_weights(loss, kl_weight), _term_weights(rows_loss or loss, kl_weight))
        return total / count, parts
    t = teacher.targets(student if student is not None else model, inputs)
    if len(t) != logits.shape[0]:
        raise DataError(f"teacher and student disagree on the answer length ({len(t)} vs {logits.shape[0]} tokens)")
    temp = teacher.temperature
    kl = bucket_kl(logits, t, temp).sum() * (temp * temp)
    n = targets.numel()
    if loss == "kl":
        ce = logits.new_zeros((), dtype=torch.float32)
        total = kl
        return total / count, LossParts(ce.detach(), kl.detach(), n, 0, n)
    ce = F.cross_entropy(logits.float(), targets, reduction="sum")
    total = (1.0 - kl_weight) * ce + kl_weight * kl
    return total / count, LossParts(ce.detach(), kl.detach(), n, n, n)


def _per_row_loss(logits: torch.Tensor, targets: torch.Tensor, teacher: TargetSource, student: Any,
                  inputs: dict[str, torch.Tensor], gold: tuple[float, float], taught: tuple[float, float]
                  ) -> tuple[torch.Tensor, LossParts]:
    """The summed loss of a batch whose rows learn by different terms (see :func:`distill_loss`)."""
    keep = answer_mask(inputs["labels"])[:, :-1]
    rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]  # row of each answer token
    kl_pos = inputs["kl_rows"].to(rows.device)[rows]
    from_teacher = inputs["from_teacher"].to(rows.device)[rows]
    w_ce = torch.where(from_teacher, taught[0], gold[0]).to(logits.device)
    w_kl = torch.where(from_teacher, taught[1], gold[1]).to(logits.device)
    if bool((w_kl[~kl_pos.to(w_kl.device)] > 0).any()):
        raise DataError("a row learned by KL has no teacher prompt")
    ce_tok = F.cross_entropy(logits.float(), targets, reduction="none")
    ce_on = w_ce > 0
    ce = (ce_tok * ce_on).sum()
    total = (w_ce * ce_tok).sum()
    kl = logits.new_zeros((), dtype=torch.float32)
    n_kl = int(kl_pos.sum())
    if n_kl:
        t = teacher.targets(student, inputs)  # the collator padded the KL rows' teacher prompts only
        if len(t) != n_kl:
            raise DataError(f"teacher and student disagree on the answer length ({len(t)} vs {n_kl} tokens)")
        temp = teacher.temperature
        mask = kl_pos.to(logits.device)
        kl_tok = bucket_kl(logits[mask], t, temp) * (temp * temp)
        kl = kl_tok.sum()
        total = total + (w_kl[mask] * kl_tok).sum()
    return total, LossParts(ce.detach(), kl.detach(), targets.numel(), int(ce_on.sum()), n_kl)


