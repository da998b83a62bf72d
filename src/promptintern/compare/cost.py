"""Cost per query with prompt caching, the cost of training, and the break-even query count.

A user who keeps a long recurring prompt does not pay full price for it: providers bill input
served from a prompt cache at a discount. So the prefix-cached full prompt is billed at the
cached-input price for its cached tokens, and the question internalization must answer is: how
many queries until its cheaper queries have paid for its training, compared with fine-tuning on
the full prompt and serving it from the cache?

Training cost is given two ways: hosted (counted training tokens × a fine-tuning price per 1M
tokens, how providers bill) and self-run (measured training wall time × a $/hour figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

# Inference prices: pecollective.com/tools/gpt-4o-mini-pricing, page dated April 2026 ("GPT-4o Mini
# (Fine-tuned)": $0.30 input, $0.15 cached input, $1.20 output per 1M tokens), read through the
# search tool on 2026-11-30. Training price: see the `training_source` default.
GPT4O_MINI_FT_SOURCE = ("OpenAI gpt-4o-mini fine-tuned model, as listed on pecollective.com/tools/gpt-4o-mini-pricing "
                        "(page dated April 2026, read 2026-11-30): $0.30 input, $0.15 cached input, $1.20 output per "
                        "1M tokens; not re-checked against OpenAI's own page (no internet here)")
TRAINING_SOURCE = ("$3.00 per 1M training tokens: gpt-4o-mini fine-tuning as listed by tokenmix.ai/blog/openai-fine-tuning-pricing "
                   "(April 2026, 'verified against OpenAI's official documentation'; same page: $0.30 input, $1.20 output), "
                   "read through the search tool on 2026-11-30; other third-party pages disagree ($1.00, $0.30), "
                   "OpenAI's own page not reachable here — set your own")


@dataclass
class PriceProfile:
    """Per-token prices of one hosted fine-tuned model."""

    name: str = field(default="gpt-4o-mini-ft", metadata={"help": "Name shown in tables."})
    input_per_1m: float = field(default=0.30, metadata={"help": "$ per 1M uncached input tokens."})
    cached_input_per_1m: float = field(default=0.15, metadata={"help": "$ per 1M input tokens served from the provider's prompt cache."})
    output_per_1m: float = field(default=1.20, metadata={"help": "$ per 1M output tokens."})
    training_per_1m: float = field(default=3.00, metadata={"help": "$ per 1M training tokens of a hosted fine-tuning job."})
    source: str = field(default=GPT4O_MINI_FT_SOURCE, metadata={"help": "Where the inference prices come from, with the date."})
    training_source: str = field(default=TRAINING_SOURCE, metadata={"help": "Where the training price comes from."})

    def validate(self) -> None:
        if min(self.input_per_1m, self.cached_input_per_1m, self.output_per_1m, self.training_per_1m) < 0:
            raise ConfigError(f"compare.cost.profiles.{self.name}: prices must be >= 0")

    def per_query(self, input_tokens: float, output_tokens: float, cached_tokens: float = 0.0) -> float:
        """Dollars for one query; ``cached_tokens`` of the input are billed at the cached price."""
        return ((input_tokens - cached_tokens) * self.input_per_1m + cached_tokens * self.cached_input_per_1m
                + output_tokens * self.output_per_1m) / 1e6


@dataclass
class CostArgs:
    """Price profiles and the training-cost figures."""

    profiles: list[PriceProfile] = field(default_factory=lambda: [PriceProfile()], metadata={"help": "Price profiles; the first is the verdict's."})
    compute_per_hour: float = field(default=0.10, metadata={"help": "$ per hour of the machine that trained (multiplies measured training wall time)."})
    compute_source: str = field(default="an illustrative figure for a small 2-vCPU cloud VM, not a quoted price — set your own", metadata={"help": "Where compute_per_hour comes from."})

    def validate(self) -> None:
        if not self.profiles:
            raise ConfigError("compare.cost.profiles: give at least one price profile")
        if self.compute_per_hour < 0:
            raise ConfigError("compare.cost.compute_per_hour must be >= 0")


def method_costs(profile: PriceProfile, tokens: dict[str, Any], training: dict[str, Any], compute_per_hour: float
                 ) -> dict[str, Any]:
    """Per-query cost (with and without the cached-input discount) and training cost of one method.

    ``tokens``: ``input_tokens_mean``, ``output_tokens_mean`` (natural lengths, as served) and
    ``cached_tokens`` (the prefix-cached row's cached prefix); ``training``: ``tokens`` and
    ``wall_s`` (means over seeds).
    """
    inp, out, cached = tokens["input_tokens_mean"], tokens["output_tokens_mean"], tokens.get("cached_tokens", 0.0)
    hosted, compute = labelling_costs(profile, training, compute_per_hour)
    return {
        "per_query": profile.per_query(inp, out, cached),
        "per_query_no_cache_discount": profile.per_query(inp, out, 0.0),
        "per_1k_queries": 1000 * profile.per_query(inp, out, cached),
        "training_hosted": training.get("tokens", 0.0) * profile.training_per_1m / 1e6 + hosted,
        "training_compute": training.get("wall_s", 0.0) / 3600 * compute_per_hour + compute,
        "labelling_hosted": hosted, "labelling_compute": compute,
    }


def labelling_costs(profile: PriceProfile, training: dict[str, Any], compute_per_hour: float) -> tuple[float, float]:
    """What a teacher's answers to new queries cost (hosted, self-run): zero for a method without them.

    ``training["labelling"]``: ``queries``, ``input_tokens``, ``output_tokens`` (totals) and
    ``wall_s``; hosted, each query's input is billed like a served full-prompt query, its cached
    prefix (``labelling_cached_tokens``, the template the teacher's prompts share) at the cached price.
    """
    lab = training.get("labelling")
    if not lab:
        return 0.0, 0.0
    n = max(1.0, float(lab["queries"]))
    cached = min(float(training.get("labelling_cached_tokens") or 0.0), lab["input_tokens"] / n)
    hosted = n * profile.per_query(lab["input_tokens"] / n, lab["output_tokens"] / n, cached)
    return hosted, lab["wall_s"] / 3600 * compute_per_hour


def break_even(candidate: dict[str, Any], reference: dict[str, Any], basis: str) -> dict[str, Any]:
    """Queries after which ``candidate`` (its training + queries) costs less than ``reference``.

    ``basis``: which training cost counts (``training_hosted`` or ``training_compute``). When the
    candidate trains for no more than the reference, it is cheaper from the first query; when each
    of its queries costs at least as much, never.
    """
    saving = reference["per_query"] - candidate["per_query"]
    extra = candidate[basis] - reference[basis]
    if saving <= 0:
        return {"queries": None, "never": True, "saving_per_query": saving, "extra_training": extra}
    queries = 0 if extra <= 0 else math.ceil(extra / saving)
    return {"queries": queries, "never": False, "saving_per_query": saving, "extra_training": extra}
