"""Adapter to LLMLingua-2 (the paper's compression baseline), via the optional ``llmlingua`` package.

LLMLingua-2 is a token classifier (keep / drop) trained on GPT-4 compressions; we use it as is.
It needs the package (``pip install promptintern[llmlingua]``) and a local classifier model
directory (no downloads here). Newlines are force-kept so the documentation keeps its lines.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..identity import model_identity
from .base import ResultCache, sha256_text, trivial_result

INSTALL_HINT = (
    "pip install promptintern[llmlingua]; LLMLingua-2 also needs a local classifier model directory "
    "(compress.llmlingua_model_path)"
)


@dataclass
class LLMLinguaCompressor:
    """``PromptCompressor(use_llmlingua2=True)`` behind the :class:`Compressor` protocol, cached."""

    model_path: str | None
    force_tokens: tuple[str, ...] = ("\n",)
    cache_dir: Path | None = None
    device_map: str = "cpu"
    name: str = "llmlingua"
    _compressor: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self._module = importlib.import_module("llmlingua")
        except ImportError as exc:
            raise ConfigError(f"compress.method 'llmlingua' needs the llmlingua package: {INSTALL_HINT}") from exc
        if not self.model_path:
            raise ConfigError("compress.method 'llmlingua' needs compress.llmlingua_model_path, a local LLMLingua-2 model directory")
        if not Path(self.model_path).expanduser().is_dir():
            raise ConfigError(f"compress.llmlingua_model_path: {self.model_path} is not a directory")

    def compress(self, text: str, rate: float) -> str:
        if (done := trivial_result(text, rate)) is not None:
            return done
        rate = float(rate)
        cache = ResultCache(self.cache_dir, "llmlingua")
        key = cache.key(
            text=sha256_text(text), rate=round(rate, 6), model=model_identity(str(self.model_path)),
            force_tokens=list(self.force_tokens),
        )
        hit = cache.get(key)
        if hit is not None and isinstance(hit.get("text"), str):
            return hit["text"]
        if self._compressor is None:
            self._compressor = self._module.PromptCompressor(
                model_name=str(Path(self.model_path).expanduser()), use_llmlingua2=True, device_map=self.device_map
            )
        out = self._compressor.compress_prompt(text, rate=rate, force_tokens=list(self.force_tokens))["compressed_prompt"]
        cache.put(key, {"rate": rate, "model": self.model_path, "text": out})
        return out
