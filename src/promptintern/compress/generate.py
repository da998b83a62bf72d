"""Abstractive compression: ask an instruction model to shorten the text (the paper's "GPT-4 generation").

The rewrite is free-form, so neither the rate nor the force-kept strings are guaranteed: the
prompt names the target length in words and the strings to keep, and generation is capped at
1.5 × the target length in tokens. Two backends: a local HF chat model (greedy) or any
OpenAI-compatible endpoint (``POST {url}/chat/completions``, temperature 0). Results are cached
on disk per (text, rate, backend, settings), so a rerun never asks the model again.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, ModelError
from ..identity import model_identity
from .base import ResultCache, sha256_text, trivial_result

PROMPT_VERSION = 1
CHARS_PER_TOKEN = 4.0  # token estimate for endpoints, whose tokenizer we do not have


def shorten_prompt(text: str, words: int, force_keep: Sequence[str] = ()) -> str:
    """The instruction sent to the model: target length in words, then the text."""
    keep = f" Keep these exactly as written: {', '.join(force_keep)}." if force_keep else ""
    return (
        f"Shorten the following text to about {words} words, keeping every command name, flag and rule "
        f"needed to do the task.{keep} Reply with the shortened text only.\n\n{text}"
    )


class ChatBackend(Protocol):
    """Completes one user message; ``ident`` names it in cache keys."""

    ident: str

    def count(self, text: str) -> int: ...

    def complete(self, prompt: str, max_tokens: int) -> str: ...


@dataclass
class LocalChat:
    """A local HF causal LM with a chat template, decoding greedily."""

    load: Callable[[], tuple[Any, Any]]
    model_id: str
    _loaded: tuple[Any, Any] | None = field(default=None, init=False, repr=False)

    @property
    def ident(self) -> str:
        return "local:" + model_identity(self.model_id)

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            model, tokenizer = self.load()
            model.eval()
            self._loaded = (model, tokenizer)
        return self._loaded

    def count(self, text: str) -> int:
        return len(self._model()[1](text, add_special_tokens=False)["input_ids"])

    def complete(self, prompt: str, max_tokens: int) -> str:
        import torch
        from transformers import GenerationConfig

        model, tok = self._model()
        messages = [{"role": "user", "content": prompt}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) if tok.chat_template else prompt
        enc = tok(text, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
        eos = tok.eos_token_id
        gen = GenerationConfig(
            do_sample=False, max_new_tokens=max_tokens, eos_token_id=eos,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
        )
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=gen)
        return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _one_line(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:limit]


@dataclass
class EndpointChat:
    """An OpenAI-compatible chat completions API, reached with urllib (no extra dependency)."""

    url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0

    @property
    def ident(self) -> str:
        return f"endpoint:{self.url.rstrip('/')}:{self.model}"

    def count(self, text: str) -> int:
        return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))

    def complete(self, prompt: str, max_tokens: int) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"compress.api_key_env: environment variable {self.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        url = self.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ModelError(f"{url}: HTTP {exc.code}: {_one_line(exc.read() or exc.reason)}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(f"cannot reach {url}: {_one_line(str(reason))}") from exc
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelError(f"{url}: malformed response, expected choices[0].message.content: {_one_line(raw, 80)}") from exc
        if not isinstance(content, str):
            raise ModelError(f"{url}: malformed response, choices[0].message.content is not text")
        return content


@dataclass
class GenerateCompressor:
    """Asks ``backend`` to rewrite the text to about ``rate`` of its length (cached)."""

    backend: ChatBackend
    force_keep: tuple[str, ...] = ()
    cache_dir: Path | None = None
    max_new_tokens: int | None = None
    name: str = "generate"

    def compress(self, text: str, rate: float) -> str:
        if (done := trivial_result(text, rate)) is not None:
            return done
        rate = float(rate)
        cache = ResultCache(self.cache_dir, "generate")
        key = cache.key(
            prompt=PROMPT_VERSION, text=sha256_text(text), rate=round(rate, 6), backend=self.backend.ident,
            force_keep=list(self.force_keep), max_new_tokens=self.max_new_tokens,
        )
        hit = cache.get(key)
        if hit is not None and isinstance(hit.get("text"), str):
            return hit["text"]
        words = max(1, round(rate * len(text.split())))
        budget = math.ceil(1.5 * rate * self.backend.count(text))
        max_tokens = max(1, min(budget, self.max_new_tokens) if self.max_new_tokens else budget)
        out = self.backend.complete(shorten_prompt(text, words, self.force_keep), max_tokens).strip()
        out = self._fit(out, max_tokens)
        cache.put(key, {"rate": rate, "backend": self.backend.ident, "max_tokens": max_tokens, "text": out})
        return out

    def _fit(self, out: str, max_tokens: int) -> str:
        """Drop trailing words until the text re-tokenizes within the cap: a decoded string can
        split into more tokens than were generated, and the cap is a promise about the result."""
        words = out.split(" ")
        while len(words) > 1 and self.backend.count(" ".join(words)) > max_tokens:
            words.pop()
        return " ".join(words)
