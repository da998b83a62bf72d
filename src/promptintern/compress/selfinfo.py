"""Self-information compression (Selective Context / LLMLingua-1 style), native and model-agnostic.

A causal LM reads the text once; the self-information of a token is ``-log p(token | prefix)``.
Words the model finds predictable carry little information and are dropped first.

Choices (ours; the paper does not specify its compressor beyond LLMLingua-2):

- The unit is a *word*: a whitespace-delimited word together with its leading whitespace, so a
  word's sub-tokens are never split apart. Tokens are mapped to words by the fast tokenizer's
  character offsets.
- A word's information is the sum of its tokens' self-information (``-log p(word | prefix)`` by
  the chain rule). Words are ranked by information *per token* (``aggregate="mean"``, default):
  with a token budget this is the greedy order of the knapsack "keep the most information that
  fits". ``aggregate="sum"`` ranks by whole-word information instead (favours long words).
- The kept share is exact up to tokenisation: the target is ``round(rate · tokens(text))`` and the
  result string is re-tokenised to check it. Words are added in rank order while they fit, then
  smaller ones fill the rest; the budget is corrected a few times against the re-tokenised count
  (joining words can merge or split tokens at the seams, and newlines cost tokens too).
- Structure: newlines are never dropped, but a line that loses all its words disappears (no
  blank-line debris; runs of blank lines collapse to one). A list or heading marker (``-``,
  ``*``, ``1.``, ``#``) is kept exactly when its line keeps a word, and a code fence is kept
  (with its partner) exactly when its block keeps a word; both count toward the budget.
- ``force_keep`` strings (command names, ``{placeholders}``, `````python``) are always kept,
  every occurrence, matched on word boundaries, and count toward the budget. When they alone
  exceed it they are kept anyway, so the result is then longer than asked (never shorter).
- Units other than words, for schemas and code (``structure``: whole statements, or only
  comments and prose), and the names of the training answers ranked first (``prefer``, within the
  rate, unlike ``force_keep``): see :mod:`.structure`.
- Ties are broken by position (earlier first); the forward pass is deterministic, so the same
  text, rate and model always give the same result. Results and per-token scores are cached on
  disk, so a template is scored once per model and every stage reuses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..identity import model_identity
from .base import ResultCache, check_rate, sha256_text, trivial_result
from .layout import Layout, Unit, layout
from .structure import answer_identifiers, structured_layout

ALGO_VERSION = 1  # bump when the selection changes, so stale cache entries are not reused
_MAX_CORRECTIONS = 8
_PREFER_BOOST = 1e6  # above any self-information, so preferred units rank first


def forced_units(lay: Layout, force_keep: Sequence[str]) -> set[int]:
    """Units overlapping an occurrence of a ``force_keep`` string (matched on word boundaries)."""
    spans = []
    for s in force_keep:
        if not s:
            continue
        left = r"(?<!\w)" if re.match(r"\w", s[0]) else ""
        right = r"(?!\w)" if re.match(r"\w", s[-1]) else ""
        spans += [(m.start(), m.end()) for m in re.finditer(left + re.escape(s) + right, lay.text)]
    return {i for i, u in enumerate(lay.units) for a, b in spans if u.word < b and u.end > a}


def unit_token_stats(lay: Layout, offsets: Sequence[tuple[int, int]], scores: Sequence[float]) -> tuple[list[int], list[float]]:
    """Per unit: how many tokens start inside it, and the sum of their self-information.

    Tokens starting outside every unit (newlines, trailing spaces) are structure, not words.
    """
    costs = [0] * len(lay.units)
    values = [0.0] * len(lay.units)
    u = 0
    for (s, _e), score in sorted(zip(offsets, scores, strict=True), key=lambda x: x[0][0]):
        while u < len(lay.units) and lay.units[u].end <= s:
            u += 1
        if u < len(lay.units) and lay.units[u].start <= s:
            costs[u] += 1
            values[u] += score
    return costs, values


def select(
    lay: Layout,
    costs: Sequence[int],
    priority: Sequence[float],
    forced: set[int],
    budget: int,
) -> set[int]:
    """Units to keep: forced ones (with their groups), then by priority while they fit.

    Markers and fences are never chosen alone; they come with the first word that needs them,
    which pays for them. Ties in priority go to the earlier unit.
    """
    kept: set[int] = set()
    opened: set[int] = set()
    used = 0

    def extra(u: int) -> int:
        return costs[u] + sum(costs[m] for g in lay.needs[u] if g not in opened for m in lay.groups[g] if m not in kept)

    def take(u: int) -> None:
        nonlocal used
        for g in lay.needs[u]:
            if g not in opened:
                opened.add(g)
                for m in lay.groups[g]:
                    if m not in kept:
                        kept.add(m)
                        used += costs[m]
        if u not in kept:
            kept.add(u)
            used += costs[u]

    for u in sorted(forced):
        take(u)
    words = [i for i, u in enumerate(lay.units) if u.kind == "word" and i not in kept]
    for u in sorted(words, key=lambda i: (-priority[i], i)):
        if u not in kept and used + extra(u) <= budget:
            take(u)
    return kept


def render(lay: Layout, kept: set[int]) -> str:
    """The kept units in original order; empty lines vanish, blank-line runs collapse to one."""
    by_line: dict[int, list[Unit]] = {}
    for i in sorted(kept):
        by_line.setdefault(lay.units[i].line, []).append(lay.units[i])
    has_units = {u.line for u in lay.units}
    out: list[str] = []
    for li, (a, b) in enumerate(lay.lines):
        if li in by_line:
            line = lay.text[a:b]
            first, *rest = by_line[li]
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            out.append(indent + lay.text[first.word : first.end] + "".join(lay.text[u.start : u.end] for u in rest))
        elif li not in has_units and out and out[-1] != "":
            out.append("")  # an original blank line, kept once
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


@dataclass(frozen=True)
class Compression:
    """A compressed text with its accounting (tokens counted by re-tokenising the result)."""

    text: str
    kept_tokens: int
    total_tokens: int
    target_tokens: int
    forced_tokens: int


def compress_scored(
    text: str,
    offsets: Sequence[tuple[int, int]],
    scores: Sequence[float],
    rate: float,
    count: Callable[[str], int],
    force_keep: Sequence[str] = (),
    aggregate: str = "mean",
    structure: str = "words",
    prefer: Sequence[str] = (),
) -> Compression:
    """Compress ``text`` given its tokens' offsets and self-information (pure, model-free).

    ``count`` tokenises a string (the same tokenizer that produced ``offsets``); ``structure``
    picks the units (``words``, or ``lines`` / ``comments`` from :mod:`.structure`). Units with
    a ``prefer`` string are ranked before all others but, unlike ``force_keep``, only kept while
    they fit the rate.
    """
    total = len(offsets)
    target = round(check_rate(rate) * total)
    if structure == "words":
        lay, must = layout(text), set()
    else:

        lay, must = structured_layout(text, structure)
    costs, values = unit_token_stats(lay, offsets, scores)
    priority = values if aggregate == "sum" else [v / max(c, 1) for v, c in zip(values, costs, strict=True)]
    preferred = forced_units(lay, prefer)
    priority = [p + _PREFER_BOOST if i in preferred else p for i, p in enumerate(priority)]
    forced = forced_units(lay, force_keep) | must
    forced_kept = select(lay, costs, priority, forced, budget=0)
    forced_tokens = count(render(lay, forced_kept)) if forced_kept else 0
    unit_tokens = sum(costs)
    budget = round(target * unit_tokens / max(total, 1))  # newlines take the rest, roughly
    tried: dict[int, tuple[str, int]] = {}  # budget -> (text, tokens)
    for _ in range(_MAX_CORRECTIONS):
        out = render(lay, select(lay, costs, priority, forced, budget))
        n = count(out) if out else 0
        tried[budget] = (out, n)
        budget += target - n
        if n == target or budget in tried:
            break
    out, n = min(tried.values(), key=lambda r: (abs(r[1] - target), r[1]))  # closest; on a tie, shorter
    return Compression(out, n, total, target, forced_tokens)


def token_self_info(model: Any, ids: Sequence[int], start_id: int | None, window: int) -> list[float]:
    """``-log p(ids[i] | ids[:i])`` for every token, in nats, from fp32 log-probabilities.

    ``start_id`` (BOS, or EOS when there is none) gives the first token a context. Texts longer
    than the model's context are scored with a sliding window that keeps half a window of
    context for every new token.
    """
    import torch

    seq = ([start_id] if start_id is not None else []) + list(ids)
    offset = 1 if start_id is not None else 0
    scores = [0.0] * len(ids)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None) or window
    width = max(2, min(window, max_pos))
    device = next(model.parameters()).device
    pos = 1  # next position of ``seq`` to score
    with torch.inference_mode():
        while pos < len(seq):
            begin = max(0, pos - width // 2) if pos > 1 else 0
            end = min(len(seq), begin + width)
            chunk = torch.tensor([seq[begin:end]], device=device)
            logits = model(input_ids=chunk, use_cache=False).logits[0].float()
            logp = torch.log_softmax(logits[pos - 1 - begin : end - 1 - begin], dim=-1)
            target = chunk[0, pos - begin : end - begin]
            info = (-logp.gather(1, target[:, None])[:, 0]).tolist()
            for j, value in enumerate(info):
                if pos + j - offset >= 0:
                    scores[pos + j - offset] = value
            pos = end
    return scores


@dataclass
class SelfInfoCompressor:
    """Keeps the most informative words of a text under a causal LM (see module docstring).

    ``load`` returns ``(model, tokenizer)`` and is called at most once, only on a cache miss.
    """

    load: Callable[[], tuple[Any, Any]]
    model_id: str
    force_keep: tuple[str, ...] = ()
    cache_dir: Path | None = None
    aggregate: str = "mean"
    window: int = 2048
    structure: str = "words"
    answers: tuple[str, ...] = field(default=(), repr=False)  # training answers: names they use rank first
    name: str = "selfinfo"
    _loaded: tuple[Any, Any] | None = field(default=None, init=False, repr=False)

    def _model(self) -> tuple[Any, Any]:
        if self._loaded is None:
            model, tokenizer = self.load()
            if not getattr(tokenizer, "is_fast", False):
                raise ModelError(f"{self.model_id}: selfinfo needs a fast tokenizer (character offsets)")
            model.eval()
            self._loaded = (model, tokenizer)
        return self._loaded

    def count(self, text: str) -> int:
        """Tokens of ``text`` under the scoring model's tokenizer (no special tokens)."""
        return len(self._model()[1](text, add_special_tokens=False)["input_ids"]) if text else 0

    def compress(self, text: str, rate: float) -> str:
        if (done := trivial_result(text, rate)) is not None:
            return done
        rate = float(rate)
        return self.compress_with_stats(text, rate).text

    def compress_with_stats(self, text: str, rate: float) -> Compression:
        """Like :meth:`compress`, with the token accounting (cached alongside the text)."""
        rate = check_rate(rate)
        if rate >= 1.0 or rate <= 0.0 or not text.strip():
            out = text if rate >= 1.0 else ""
            n = self.count(text)
            return Compression(out, self.count(out), n, round(rate * n), 0)

        prefer = answer_identifiers(self.answers, text) if self.answers else []
        cache = ResultCache(self.cache_dir, "selfinfo")
        extra = {k: v for k, v in (("structure", self.structure), ("prefer", prefer)) if v not in ("words", [])}
        key = cache.key(  # ``extra`` only when set, so entries written before these options stay valid
            algo=ALGO_VERSION, text=sha256_text(text), rate=round(rate, 6), model=model_identity(self.model_id),
            force_keep=list(self.force_keep), aggregate=self.aggregate, **extra,
        )
        hit = cache.get(key)
        if hit is not None:
            try:
                return Compression(**{k: hit[k] for k in Compression.__dataclass_fields__})
            except (KeyError, TypeError):
                pass  # an entry from another layout: recompute
        offsets, scores = self._scores(text)
        result = compress_scored(text, offsets, scores, rate, self.count, self.force_keep, self.aggregate,
                                 self.structure, prefer)
        cache.put(key, {"rate": rate, "model": self.model_id, **result.__dict__})
        return result

    def _scores(self, text: str) -> tuple[list[tuple[int, int]], list[float]]:
        """Token offsets and self-information; the scores are cached per (text, model)."""
        model, tokenizer = self._model()
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        cache = ResultCache(self.cache_dir, "selfinfo-scores")
        key = cache.key(algo=ALGO_VERSION, text=sha256_text(text), model=model_identity(self.model_id), window=self.window)
        hit = cache.get(key)
        if hit is not None and len(hit.get("scores", ())) == len(offsets):
            return offsets, [float(s) for s in hit["scores"]]
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # Rounded before use, not only before caching, so a fresh and a cached run rank alike.
        scores = [round(s, 4) for s in token_self_info(model, enc["input_ids"], start, self.window)]
        cache.put(key, {"model": self.model_id, "scores": scores})
        return offsets, scores
