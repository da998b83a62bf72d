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

Memory: both passes hand the model caches of their own (see :func:`_layer_classes`) that a
decoder layer may call twice with the same result, so the passes also run under activation
checkpointing (transformers' ``activation_checkpointing``, non-reentrant): each decoder layer then
keeps only its input for the backward pass and recomputes the rest, with the same dropout masks.
Without checkpointing the caches give the same numbers as transformers' own dynamic cache.

Unsupported models or settings (cache layers other than the plain dynamic one, e.g. sliding windows;
reentrant checkpointing, which detaches the prefix's keys and values from the graph) fall back to
the plain path in ``auto`` mode and raise in ``on`` mode.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..args import SHARED_PREFIX_MODES
from ..errors import ConfigError
from ..models import cache_keyword

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


def _decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The modules transformers' activation checkpointing wraps (one per decoder layer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in _unwrap(model).modules() if isinstance(m, GradientCheckpointingLayer)]


@contextlib.contextmanager
def _cache_under_checkpointing(model: Any) -> Iterator[bool]:
    """Let checkpointed decoder layers keep the cache argument during both passes; yields whether
    any layer is checkpointed (its ``use_cache`` is then off: the layers write our caches anyway).

    transformers drops the cache of a checkpointed layer because its backward replay would write
    the cache a second time; the caches here return the same states on a replay without writing,
    which is the contract of ``_can_checkpoint_with_cache``. A reentrant checkpoint runs the layer
    without autograd, so the prefix's keys and values would reach the suffix detached: unsupported.
    """
    layers = [m for m in _decoder_layers(model) if getattr(m, "gradient_checkpointing", False)]
    for m in layers:
        func = getattr(m, "_gradient_checkpointing_func", None)
        if getattr(func, "keywords", {}).get("use_reentrant") is not False:
            raise SharedPrefixUnsupported("reentrant activation checkpointing detaches the shared prefix's "
                                          "keys and values (use use_reentrant: false)")
    saved = [m.__dict__.get("_can_checkpoint_with_cache") for m in layers]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield bool(layers)
    finally:
        for m, old in zip(layers, saved, strict=True):
            if old is None:
                del m._can_checkpoint_with_cache
            else:
                m._can_checkpoint_with_cache = old


def _new_cache(model: Any, make_layer: Any) -> Any:
    """A ``DynamicCache`` of the model's layer layout whose layers come from ``make_layer(i)``.

    Only plain full-attention layers can be shared across rows; any other layer type (sliding
    window, chunked, linear attention) makes the model unsupported.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    inner = _unwrap(model)
    config = inner.get_base_model().config if hasattr(inner, "get_base_model") else inner.config
    cache = DynamicCache(config=config)
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise SharedPrefixUnsupported(f"cache layer {type(layer).__name__} cannot be shared across rows")
        cache.layers[i] = make_layer(i)
    if not cache.layers:
        raise SharedPrefixUnsupported(f"{type(config).__name__} declares no per-layer key/value cache")
    return cache


@functools.cache
def _layer_classes() -> tuple[type, type]:
    """The two cache layers, built on first use: importing transformers' cache module takes seconds."""
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """Keeps the first key/value states written (the prefix pass) and returns them unchanged.

        A checkpoint's backward replay of the layer writes again: it gets its recomputed states
        back and the cache keeps the first ones, which the suffix pass already used.
        """

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.device = key_states.device
                self.keys, self.values = key_states, value_states
                self.is_initialized = True
            return key_states, value_states

    class SuffixLayer(DynamicLayer):
        """The prefix's states expanded to the batch as views; a suffix appends without writing.

        ``update`` returns prefix + suffix states, as a dynamic cache would, but leaves the cache
        as it was: calling it again (a checkpoint's replay) returns the same result.
        """

        def __init__(self, prefix: Any, rows: int) -> None:
            super().__init__()
            self.device = prefix.keys.device
            self.keys = prefix.keys.expand(rows, -1, -1, -1)
            self.values = prefix.values.expand(rows, -1, -1, -1)
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return PrefixLayer, SuffixLayer


def prefix_then_suffix(model: Any, head_rows: Any, head: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor, keep: torch.Tensor, prefix: int) -> torch.Tensor:
    """LM-head logits at ``keep`` positions (row by row), computed with the prefix run once.

    ``head_rows(head, mask)`` is the context manager that restricts the LM head to masked rows
    (the answer-only hook of plain training), so neither pass computes logits it does not need.
    """
    rows, width = input_ids.shape
    keyword = cache_keyword(_unwrap(model))
    prefix_layer, suffix_layer = _layer_classes()
    first = _new_cache(model, lambda _i: prefix_layer())
    with _cache_under_checkpointing(model) as checkpointed:
        use_cache = not checkpointed  # what checkpointed layers would be told (with a warning) anyway
        with head_rows(head, torch.zeros((1, prefix), dtype=torch.bool, device=input_ids.device)):
            _unwrap(model)(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix],
                           use_cache=use_cache, **{keyword: first})
        if any(not layer.is_initialized or layer.keys.shape[-2] != prefix for layer in first.layers):
            raise SharedPrefixUnsupported("the model kept no key/value cache of the prefix")
        cache = _new_cache(model, lambda i: suffix_layer(first.layers[i], rows))
        positions = torch.arange(prefix, width, device=input_ids.device).expand(rows, -1)
        with head_rows(head, keep[:, prefix:]):
            out = model(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, position_ids=positions,
                        use_cache=use_cache, **{keyword: cache})
    return out.logits
