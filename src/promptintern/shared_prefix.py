"""Shared-prefix training: the tokens every row of a batch shares are run once, then only the suffixes.

Within a PromptIntern stage every record starts with the same tokens -- the system message and the
template at that stage's τ, most of a long-prompt row -- and only the retrieved examples, the query
and the answer differ. The plain path recomputes that prefix for every row. Here the prefix runs
once (batch dimension 1, with gradients, through the LoRA model), its key/value cache is expanded
across the batch as views, and the rows' suffixes run on top of it with the right positions and
attention mask. Gradients flow back through the one prefix computation, summed over rows by the
expand's backward, which is exactly what the per-row path sums: per-record losses and LoRA
gradients agree within float tolerance (tested).

The prefix is found from the token ids of each batch, not from assumptions about the chat template,
and it stops before the first position whose next token is an answer token, so every answer
logit comes from the suffix pass. One difference remains by construction: a LoRA dropout mask on
the prefix is drawn once for the batch instead of once per row.

Unsupported models or settings (no key/value cache kept, e.g. under activation checkpointing;
cache layers other than the plain dynamic one, e.g. sliding windows) fall back to the plain path
in ``auto`` mode and raise in ``on`` mode.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .args import SHARED_PREFIX_MODES
from .errors import ConfigError

MIN_PREFIX_TOKENS = 32  # below this, two forward passes cost more than they save


@dataclass
class BatchTokens:
    """Token accounting of one batch: what padding costs, what the shared prefix saves."""

    rows: int
    width: int  # padded row length
    real: int  # non-padding tokens
    prefix: int  # shared prefix length (0: plain path)

    @property
    def computed(self) -> int:
        """Token positions the model actually ran (padding included)."""
        return self.prefix + self.rows * (self.width - self.prefix) if self.prefix else self.rows * self.width


def token_summary(batches: list[BatchTokens]) -> dict[str, Any]:
    """A stage's token accounting for history.json: padding share, shared-prefix use, peak memory.

    Counts the batches this process ran in this session (after a resume: since the resume).
    ``peak_rss_mb`` is the process's resident-memory peak so far (the kernel keeps only the maximum).
    """
    import resource
    import sys

    padded = sum(b.rows * b.width for b in batches)
    real = sum(b.real for b in batches)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {"tokens": {"batches": len(batches), "real": real, "padded": padded,
                       "padding_share": round(1 - real / padded, 4) if padded else 0.0,
                       "computed": sum(b.computed for b in batches),
                       "shared_prefix_batches": sum(1 for b in batches if b.prefix)},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)}


class SharedPrefixUnsupported(RuntimeError):
    """This model or setting cannot run a shared prefix (``auto`` falls back to the plain path)."""


def check_mode(mode: str) -> str:
    if mode not in SHARED_PREFIX_MODES:
        raise ConfigError(f"train.shared_prefix: {mode!r} is not one of {', '.join(SHARED_PREFIX_MODES)}")
    return mode


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """Length of the token prefix every row shares, usable for a shared pass (0 if none worth it).

    ``keep`` marks positions whose next token is an answer token: the prefix ends before the first
    of them in any row, and leaves every row at least one token of its own.
    """
    rows = input_ids.shape[0]
    if rows < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    differs = (~same).nonzero()
    length = int(differs[0]) if len(differs) else input_ids.shape[1]
    length = min(length, int(attention_mask.sum(dim=1).min()) - 1)
    kept = keep.any(dim=1)
    if kept.any():
        length = min(length, int(keep[kept].float().argmax(dim=1).min()))
    return length if length >= MIN_PREFIX_TOKENS else 0


def _unwrap(model: Any) -> Any:
    """The module under DDP / accelerate wrappers: the prefix pass must not start a DDP iteration."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    return inner


def _cache_keyword(model: Any) -> str:
    """The cache argument's name: ``cache`` in transformers 5.24+, ``past_key_values`` before and in remote code."""
    inner = _unwrap(model)
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _expand_cache(cache: Any, rows: int) -> None:
    """Expand a batch-1 dynamic cache to ``rows`` rows as views (no copies until the suffix appends)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        raise SharedPrefixUnsupported(f"{type(cache).__name__} has no per-layer key/value tensors")
    for layer in layers:
        if getattr(layer, "is_sliding", False) or not torch.is_tensor(getattr(layer, "keys", None)):
            raise SharedPrefixUnsupported(f"cache layer {type(layer).__name__} cannot be shared across rows")
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)


def prefix_then_suffix(model: Any, head_rows: Any, head: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """LM-head logits at ``keep`` positions (row by row), computed with the prefix run once.

    ``head_rows(head, mask)`` is the context manager that restricts the LM head to masked rows
    (the answer-only hook of plain training), so neither pass computes logits it does not need.
    """
    rows, width = input_ids.shape
    with head_rows(head, torch.zeros((1, prefix), dtype=torch.bool, device=input_ids.device)):
        first = _unwrap(model)(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix],
                               use_cache=True)
    cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
    if cache is None or cache.get_seq_length() != prefix:
        raise SharedPrefixUnsupported("the model kept no key/value cache of the prefix (activation checkpointing "
                                      "turns caching off while training)")
    _expand_cache(cache, rows)
    positions = torch.arange(prefix, width, device=input_ids.device).expand(rows, -1)
    with head_rows(head, keep[:, prefix:]):
        out = model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, **{_cache_keyword(model): cache})
    return out.logits
