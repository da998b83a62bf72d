"""How many tokens to generate per query: read from the training answers, and said when too few.

A fixed ``max_new_tokens`` right for one task silently cuts another's answers (48 tokens suit
NL2Bash commands, not SQL joins). So ``infer.max_new_tokens: auto`` (the default) takes the
training answers' length in tokens — the 99th percentile × 1.25, capped at the longest, plus
:data:`MARGIN` — and whatever the limit, a run warns with counts when gold answers of the
training or test split are longer than it.

A length counts the rendered answer (the task's ``answer_format``) plus one token for the end of
turn the model must also generate.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .errors import ConfigError

AUTO = "auto"
MARGIN = 8


def answer_lengths(tokenizer: Any, answers: Sequence[str], fmt: Any) -> list[int]:
    """Tokens the model generates for each gold answer (rendered by ``fmt``), end of turn included."""
    if not answers:
        return []
    texts = [fmt.render_answer(a) for a in answers]
    return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def auto_limit(lengths: Sequence[int]) -> int:
    """``min(longest, ceil(1.25 · p99)) + MARGIN``: room for every ordinary answer, without letting
    one outlier make every query generate for as long."""
    if not lengths:
        raise ConfigError("infer.max_new_tokens: 'auto' needs training answers to measure; set a number")
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return min(ordered[-1], math.ceil(1.25 * p99)) + MARGIN


def check_setting(value: int | str, where: str = "infer.max_new_tokens") -> None:
    """``value`` must be ``auto`` or a number of tokens >= 1 (a one-line :class:`ConfigError`)."""
    if value == AUTO:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be 'auto' or >= 1, got {value!r}")


def long_answers_warning(limit: int, lengths: Mapping[str, Sequence[int]], auto: bool) -> str | None:
    """A one-line warning naming, per split, how many gold answers are longer than ``limit``."""
    over = {name: sum(n > limit for n in ls) for name, ls in lengths.items() if ls}
    if not any(over.values()):
        return None
    counts = " and ".join(f"{c} of {len(lengths[name])} {name}" for name, c in over.items() if c)
    longest = max(max(ls) for ls in lengths.values() if ls)
    how = "auto, from the training answers" if auto else "set in the config or on the command line"
    return (f"infer.max_new_tokens={limit} ({how}) is shorter than {counts} gold answers (longest {longest} "
            f"tokens with the end of turn): those predictions will be cut off; raise it to at least {longest}")


def resolve_infer_args(args: Any, model: str, task: Any, train: Sequence[Any], test: Sequence[Any] = ()) -> Any:
    """``args`` (an ``InferArgs``) with ``max_new_tokens`` a number, warning on stderr when gold
    answers of ``train`` or ``test`` (instances with ``.answer``) would not fit."""
    from .models import load_tokenizer

    check_setting(args.max_new_tokens)
    tokenizer = load_tokenizer(model)
    lengths = {"training": answer_lengths(tokenizer, [i.answer for i in train], task.format),
               "test": answer_lengths(tokenizer, [i.answer for i in test if i.answer], task.format)}
    auto = args.max_new_tokens == AUTO
    limit = auto_limit(lengths["training"]) if auto else int(args.max_new_tokens)
    message = long_answers_warning(limit, lengths, auto)
    if message:
        print(f"promptintern: warning: {message}", file=sys.stderr, flush=True)
    return replace(args, max_new_tokens=limit)
