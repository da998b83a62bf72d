"""Logits at answer positions only, and the answer-only cross-entropy of plain training.

Both plain training and the KL losses (:mod:`promptintern.distill`) compute the LM head at the
answer positions only (a pre-hook on the head keeps those rows): over a 49k vocabulary the head
at every prompt position is a large, useless share of a step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelError
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
