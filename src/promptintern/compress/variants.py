"""Hand-written compressed templates, chosen by rate.

The official PromptIntern repository ships its MBPP template at roughly 100%, 50% and 10% of
its words; this compressor serves such user-written variants. Selection rule (ours):

- rate 1 → the original text; rate 0 → ``""``;
- otherwise the variant whose rate is nearest to the requested one, where the original counts as
  the variant at rate 1 unless one is given; on a tie, the larger rate (keep more).

A variant set is per text (:class:`VariantsCompressor`) or per template part
(:class:`TemplateVariants`, which :func:`~promptintern.compress.compress_template` routes part by
part).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .base import TEMPLATE_PARTS, check_rate


def nearest_rate(available: Iterable[float], rate: float) -> float:
    """The rate of the variant to serve for ``rate`` (1.0 = the original); see module docstring."""
    candidates = {float(r) for r in available} | {1.0}
    # Distances are rounded so 0.3 sits exactly between 0.1 and 0.5 despite binary floats.
    return min(candidates, key=lambda r: (round(abs(r - rate), 9), -r))


@dataclass
class VariantsCompressor:
    """Serves the user-written variant of one text nearest to the requested rate."""

    variants: dict[float, str]
    name: str = "variants"

    def compress(self, text: str, rate: float) -> str:
        rate = check_rate(rate)
        if rate >= 1.0:
            return text
        if rate <= 0.0:
            return ""
        chosen = nearest_rate(self.variants, rate)
        return self.variants.get(chosen, text)


@dataclass
class TemplateVariants:
    """Variants of a whole template: one :class:`VariantsCompressor` per part."""

    parts: dict[str, VariantsCompressor] = field(default_factory=dict)
    name: str = "variants"

    def for_part(self, part: str) -> VariantsCompressor:
        return self.parts.get(part, VariantsCompressor({}))

    def compress(self, text: str, rate: float) -> str:
        raise ConfigError("variants are written per template part; compress a Template with compress_template")


def _read(value: str, base: Path, where: str) -> str:
    """``value`` itself, or the content of the file it names when it starts with ``@``."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc


def load_variants(spec: Mapping[Any, Any], base_dir: str | Path = ".") -> TemplateVariants:
    """Build per-part variants from ``{rate: {instruction: ..., documentation: ...} | path}``.

    A part's text may be ``@file`` (read from that file); a variant may be the path of a YAML or
    JSON file holding the mapping (its ``@file`` entries are relative to that file). Relative
    paths are resolved against ``base_dir``.
    """
    base = Path(base_dir)
    per_part: dict[str, dict[float, str]] = {p: {} for p in TEMPLATE_PARTS}
    for raw_rate, value in spec.items():
        where = f"compress.variants.{raw_rate}"
        try:
            rate = check_rate(float(raw_rate))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: the key must be a rate in [0, 1]") from exc
        value_base = base
        if isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else base / path
            try:
                value = yaml.safe_load(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from exc
            except yaml.YAMLError as exc:
                raise ConfigError(f"{where}: {path} is not valid YAML/JSON") from exc
            value_base = path.parent
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of template parts, got {type(value).__name__}")
        for part, text in value.items():
            if part not in TEMPLATE_PARTS:
                raise ConfigError(f"{where}: unknown part {part!r}; choose from {', '.join(TEMPLATE_PARTS)}")
            if not isinstance(text, str):
                raise ConfigError(f"{where}.{part}: expected text, got {type(text).__name__}")
            per_part[part][rate] = _read(text, value_base, f"{where}.{part}")
    return TemplateVariants({p: VariantsCompressor(v) for p, v in per_part.items()})
