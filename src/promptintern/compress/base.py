"""The compressor protocol, per-part routing, the on-disk result cache and the config.

PromptIntern compresses the recurring template stage by stage: ``C(template, τ)`` keeps a
fraction ``τ`` of the template's tokens (``τ = 1``: unchanged, ``τ = 0``: removed). The paper
distinguishes an instruction compressor from a document compressor, so a template is never
compressed as one string: :func:`compress_template` compresses each part on its own, with its
own compressor and rate when asked to.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..identity import cache_root
from ..io import read_json, write_json
from ..prompt import Template

METHODS = ("selfinfo", "variants", "llmlingua", "generate", "none")
STRUCTURES = ("words", "lines", "comments")
TEMPLATE_PARTS = ("instruction", "documentation")


@runtime_checkable
class Compressor(Protocol):
    """Shortens a text so that about ``rate`` of its tokens remain (1 = unchanged, 0 = ``""``)."""

    name: str

    def compress(self, text: str, rate: float) -> str: ...


def check_rate(rate: float) -> float:
    """``rate`` as a float in [0, 1]; anything else is a :class:`ConfigError`."""
    try:
        value = float(rate)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"compression rate must be a number in [0, 1], got {rate!r}") from exc
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ConfigError(f"compression rate must be in [0, 1], got {rate!r}")
    return value


def trivial_result(text: str, rate: float) -> str | None:
    """The answer that needs no compressor: the text itself at rate 1, '' at rate 0 or for blank
    text; None when real compression is needed. Validates ``rate`` first."""
    rate = check_rate(rate)
    if rate >= 1.0:
        return text
    if rate <= 0.0 or not text.strip():
        return ""
    return None


@dataclass
class Unchanged:
    """``method: none``: the text as written at every rate above 0, e.g. for a part that must
    not be compressed (``compress.overrides.documentation: {method: none}``)."""

    name: str = "none"

    def compress(self, text: str, rate: float) -> str:
        return "" if check_rate(rate) <= 0.0 else text


@dataclass
class Scaled:
    """Runs ``inner`` at ``min(1, rate · scale)``: e.g. keep the instruction longer than the docs."""

    inner: Compressor
    scale: float
    name: str = "scaled"

    def compress(self, text: str, rate: float) -> str:
        return self.inner.compress(text, min(1.0, check_rate(rate) * self.scale))


@dataclass
class PartRouter:
    """One compressor per template part, behind the single-compressor interface.

    ``compress`` uses ``default``; :func:`compress_template` asks :meth:`for_part` instead, so
    a pipeline that holds one compressor still gets per-part behaviour.
    """

    default: Compressor
    parts: dict[str, Compressor] = field(default_factory=dict)
    name: str = "router"

    def for_part(self, part: str) -> Compressor:
        return self.parts.get(part, self.default)

    def compress(self, text: str, rate: float) -> str:
        return self.default.compress(text, rate)


CompressorSpec = Compressor | Mapping[str, Compressor]


def _compressor_for(compressor: CompressorSpec, part: str) -> Compressor:
    if isinstance(compressor, Mapping):
        if part not in compressor:
            raise ConfigError(f"no compressor given for template part {part!r}")
        return compressor[part]
    for_part = getattr(compressor, "for_part", None)
    return for_part(part) if callable(for_part) else compressor


def compress_template(
    template: Template,
    rate: float,
    compressor: CompressorSpec,
    parts: Sequence[str] = TEMPLATE_PARTS,
    rates: Mapping[str, float] | None = None,
) -> Template:
    """``template`` with each part in ``parts`` compressed on its own.

    ``compressor`` is one compressor, a mapping part → compressor, or a router (anything with
    ``for_part``); ``rates`` overrides ``rate`` per part. Parts not in ``parts`` are kept whole.
    Rate 1 leaves a part unchanged and rate 0 empties it, whatever the compressor.
    """
    unknown = [p for p in (*parts, *(rates or {})) if p not in TEMPLATE_PARTS]
    if unknown:
        raise ConfigError(f"unknown template part {unknown[0]!r}; choose from {', '.join(TEMPLATE_PARTS)}")
    updates = {}
    for part in parts:
        part_rate = check_rate((rates or {}).get(part, rate))
        text = getattr(template, part)
        if part_rate >= 1.0 or not text.strip():
            continue
        updates[part] = "" if part_rate <= 0.0 else _compressor_for(compressor, part).compress(text, part_rate)
    return replace(template, **updates)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_dir() -> Path:
    """``compress`` under the one cache root (:func:`promptintern.identity.cache_root`)."""
    return cache_root() / "compress"


@dataclass
class ResultCache:
    """Compressed texts on disk, one JSON file per key, so every stage and rerun reuses them.

    ``directory`` None disables caching. Files are written atomically; an unreadable entry is
    treated as a miss (and overwritten), never as an error.
    """

    directory: Path | None
    namespace: str

    def key(self, **parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else Path(self.directory) / self.namespace / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = read_json(path)
        except Exception:  # a corrupt cache entry is recomputed, not fatal
            return None
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        if path is not None:
            write_json(path, entry)


@dataclass
class CompressConfig:
    """Which template compressor to use and how (see ``promptintern.compress``)."""

    method: str = field(default="selfinfo", metadata={"help": "selfinfo (drop the least informative words under a causal LM), variants (hand-written templates per rate), llmlingua (LLMLingua-2 package), generate (ask an instruction model to shorten), none (leave the text as written while τ > 0; e.g. overrides.documentation: {method: none}).", "choices": METHODS})
    structure: str = field(default="words", metadata={"help": "selfinfo: what may be dropped. words: any word (prose). lines: whole statements only (a line, or lines joined by an open bracket, a trailing comma or deeper indentation), comments and prose lines whole, for code or schemas. comments: statements never, only words of comments and prose lines.", "choices": STRUCTURES})
    protect_identifiers: bool = field(default=True, metadata={"help": "selfinfo: rank first (within the rate) the names the training answers use where the template writes them: tables, columns, functions, flags."})
    model: str = field(default="smollm2-135m", metadata={"help": "Model that scores words (selfinfo) or rewrites the text (generate, local backend): alias or local HF directory."})
    force_keep: list[str] = field(default_factory=list, metadata={"help": "Strings never dropped (command names, {placeholders}, ```python); empty = the task's own list."})
    cache_dir: str | None = field(default=None, metadata={"help": "Directory of cached compressions; null = compress/ under the cache root ($PROMPTINTERN_CACHE or the user cache directory)."})
    cache: bool = field(default=True, metadata={"help": "Cache compressed texts on disk (selfinfo, generate)."})
    aggregate: str = field(default="mean", metadata={"help": "selfinfo: rank words by mean (information per token of budget) or sum (whole-word information) of their tokens' self-information.", "choices": ("mean", "sum")})
    window: int = field(default=2048, metadata={"help": "selfinfo: longest token window of one forward pass; longer texts are scored with a sliding window."})
    variants: dict[float, dict[str, str] | str] = field(default_factory=dict, metadata={"help": "variants: rate → {instruction: ..., documentation: ...} (text, or @path to read it from a file) or the path of a YAML/JSON file holding that mapping."})
    llmlingua_model_path: str | None = field(default=None, metadata={"help": "llmlingua: local directory of an LLMLingua-2 token classifier (e.g. a downloaded microsoft/llmlingua-2-xlm-roberta-large-meetingbank)."})
    endpoint_url: str | None = field(default=None, metadata={"help": "generate: base URL of an OpenAI-compatible API (…/v1); null = the local model."})
    endpoint_model: str | None = field(default=None, metadata={"help": "generate: model name sent to the endpoint."})
    api_key_env: str | None = field(default=None, metadata={"help": "generate: name of the environment variable holding the endpoint's API key (the key itself never goes in a config)."})
    timeout_s: float = field(default=60.0, metadata={"help": "generate: timeout of one endpoint request, seconds."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "generate: cap on generated tokens; null = 1.5 × the target length."})
    rate_scale: float = field(default=1.0, metadata={"help": "Compress at min(1, τ · rate_scale) instead of τ (useful in per-part overrides)."})
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "Per-part settings: {instruction|documentation: {field: value}}, e.g. a different method or rate_scale for the instruction."})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"compress.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "variants" and not self.variants:
            raise ConfigError("compress.method 'variants' needs compress.variants: {rate: {instruction: ..., documentation: ...}}")
        if self.structure != "words" and self.method not in ("selfinfo", "none"):
            raise ConfigError(f"compress.structure {self.structure!r} needs method selfinfo, not {self.method!r}")
        if self.method == "generate" and self.endpoint_url and not self.endpoint_model:
            raise ConfigError("compress.endpoint_model is required with compress.endpoint_url")
        if self.window < 16:
            raise ConfigError(f"compress.window must be >= 16, got {self.window}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"compress.max_new_tokens must be >= 1 or null, got {self.max_new_tokens}")
        if self.timeout_s <= 0:
            raise ConfigError(f"compress.timeout_s must be > 0, got {self.timeout_s}")
        if not self.rate_scale > 0:
            raise ConfigError(f"compress.rate_scale must be > 0, got {self.rate_scale}")
        for rate in self.variants:
            if not 0.0 <= float(rate) <= 1.0:
                raise ConfigError(f"compress.variants: rate {rate!r} is not in [0, 1]")
        for part in self.overrides:
            if part not in TEMPLATE_PARTS:
                raise ConfigError(f"compress.overrides: unknown part {part!r}; choose from {', '.join(TEMPLATE_PARTS)}")
            self.for_part(part)

    def for_part(self, part: str) -> CompressConfig:
        """This config with the overrides of ``part`` applied (validated, one level deep)."""
        from ..configtools import from_dict

        extra = self.overrides.get(part) or {}
        if not isinstance(extra, Mapping):
            raise ConfigError(f"compress.overrides.{part}: expected a mapping, got {type(extra).__name__}")
        if "overrides" in extra:
            raise ConfigError(f"compress.overrides.{part}: overrides cannot be nested")
        base = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "overrides"}
        return from_dict(CompressConfig, {**base, **extra}, where=f"compress.overrides.{part}")

    def resolved_cache_dir(self) -> Path | None:
        if not self.cache:
            return None
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


ModelLoader = Callable[[str], tuple[Any, Any]]


def render_comparison(
    original: Template,
    compressed: Template,
    count: Callable[[str], int],
    *,
    title: str,
    note: str = "",
) -> str:
    """Markdown page showing a template and its compressed form side by side, with token counts.

    ``count`` gives the number of tokens of a text (e.g. the model's tokenizer without special
    tokens). The side-by-side table is HTML, because a Markdown table cannot hold a block of text.
    """
    rows = ["| part | original tokens | compressed tokens | kept |", "|---|---:|---:|---:|"]
    total_o = total_c = 0
    for part in TEMPLATE_PARTS:
        n_o, n_c = count(getattr(original, part)), count(getattr(compressed, part))
        total_o, total_c = total_o + n_o, total_c + n_c
        rows.append(f"| {part} | {n_o} | {n_c} | {n_c / n_o:.1%} |" if n_o else f"| {part} | 0 | {n_c} | – |")
    rows.append(f"| **total** | {total_o} | {total_c} | {total_c / max(total_o, 1):.1%} |")
    out = [f"# {title}", ""]
    if note:
        out += [note, ""]
    out += [*rows, ""]
    for part in TEMPLATE_PARTS:
        o, c = getattr(original, part), getattr(compressed, part)
        if not (o or c):
            continue
        out += [
            f"## {part.capitalize()}",
            "",
            "<table>",
            f"<tr><th>original ({count(o)} tokens)</th><th>compressed ({count(c)} tokens)</th></tr>",
            f'<tr><td valign="top"><pre>{html.escape(o)}</pre></td>'
            f'<td valign="top"><pre>{html.escape(c)}</pre></td></tr>',
            "</table>",
            "",
        ]
    return "\n".join(out)
