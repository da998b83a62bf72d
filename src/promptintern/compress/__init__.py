"""Template compressors: ``C(template, τ)`` keeps about a fraction τ of each template part.

Methods: ``selfinfo`` (default; drop the least informative words under a causal LM),
``variants`` (hand-written templates per rate), ``llmlingua`` (LLMLingua-2 package) and
``generate`` (an instruction model rewrites the text), ``none`` (leave a part as written).
``selfinfo`` can drop whole statements instead of words (``structure: lines``) or only words
of comments and prose (``structure: comments``), see :mod:`.structure`, and ranks the names the
training answers use first. Build one from a :class:`CompressConfig` with
:func:`build_compressor`; apply it with :func:`compress_template`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .base import (
    METHODS,
    STRUCTURES,
    TEMPLATE_PARTS,
    CompressConfig,
    Compressor,
    ModelLoader,
    PartRouter,
    Scaled,
    Unchanged,
    check_rate,
    compress_template,
    render_comparison,
)
from .generate import EndpointChat, GenerateCompressor, LocalChat
from .llmlingua import LLMLinguaCompressor
from .selfinfo import SelfInfoCompressor
from .structure import answer_identifiers
from .variants import TemplateVariants, VariantsCompressor, load_variants, nearest_rate

__all__ = [
    "METHODS",
    "STRUCTURES",
    "TEMPLATE_PARTS",
    "CompressConfig",
    "Compressor",
    "EndpointChat",
    "GenerateCompressor",
    "LLMLinguaCompressor",
    "LocalChat",
    "PartRouter",
    "Scaled",
    "SelfInfoCompressor",
    "TemplateVariants",
    "Unchanged",
    "VariantsCompressor",
    "answer_identifiers",
    "build_compressor",
    "check_rate",
    "compress_template",
    "load_variants",
    "nearest_rate",
    "render_comparison",
]


def build_compressor(cfg: CompressConfig, model_loader: ModelLoader, base_dir: str | Path = ".",
                     answers: Sequence[str] = ()) -> Compressor:
    """The compressor ``cfg`` describes, with its per-part overrides routed by part.

    ``model_loader(name) -> (model, tokenizer)`` is called lazily, once per model name, and
    only when a result is not already cached. ``base_dir`` resolves relative variant paths.
    ``answers`` (the training answers) name the identifiers ``protect_identifiers`` ranks first.
    """
    cfg.validate()
    memo: dict[str, tuple[Any, Any]] = {}

    def loader(name: str) -> Callable[[], tuple[Any, Any]]:
        def load() -> tuple[Any, Any]:
            if name not in memo:
                memo[name] = model_loader(name)
            return memo[name]

        return load

    answers = tuple(answers)
    default = _build_one(cfg, loader, base_dir, answers)
    if not cfg.overrides:
        return default
    parts = {}
    for part in TEMPLATE_PARTS:
        one = _build_one(cfg.for_part(part), loader, base_dir, answers) if part in cfg.overrides else default
        for_part = getattr(one, "for_part", None)
        parts[part] = for_part(part) if callable(for_part) else one
    return PartRouter(default, parts)


def _build_one(
    cfg: CompressConfig, loader: Callable[[str], Callable[[], tuple[Any, Any]]], base_dir: str | Path,
    answers: tuple[str, ...] = (),
) -> Compressor:
    cache_dir = cfg.resolved_cache_dir()
    force_keep = tuple(cfg.force_keep)
    compressor: Compressor
    if cfg.method == "none":
        return Unchanged()
    if cfg.method == "selfinfo":
        compressor = SelfInfoCompressor(
            loader(cfg.model), cfg.model, force_keep, cache_dir, aggregate=cfg.aggregate, window=cfg.window,
            structure=cfg.structure, answers=answers if cfg.protect_identifiers else (),
        )
    elif cfg.method == "variants":
        compressor = load_variants(cfg.variants, base_dir)
    elif cfg.method == "llmlingua":
        compressor = LLMLinguaCompressor(cfg.llmlingua_model_path, ("\n", *force_keep), cache_dir)
    else:  # generate
        if cfg.endpoint_url:
            backend = EndpointChat(cfg.endpoint_url, cfg.endpoint_model, cfg.api_key_env, cfg.timeout_s)
        else:
            backend = LocalChat(loader(cfg.model), cfg.model)
        compressor = GenerateCompressor(backend, force_keep, cache_dir, cfg.max_new_tokens)
    if cfg.rate_scale != 1.0:
        scaled = Scaled(compressor, cfg.rate_scale)
        if isinstance(compressor, TemplateVariants):
            return PartRouter(scaled, {p: Scaled(compressor.for_part(p), cfg.rate_scale) for p in TEMPLATE_PARTS})
        return scaled
    return compressor

