"""How much each compared method trains: to its best (``converge``), equal steps, or equal tokens.

``converge`` (the default) answers the user's question — is the internalized model, trained
well, as good as the full prompt trained well, and what did each cost to get there? Every method
trains epoch after epoch over all its pairs until its validation loss, scored in the prompt of
the stage (the last stage's is the served prompt), has not improved for ``patience`` scorings,
capped at ``max_epochs``; the best checkpoint is served. A staged method revisits all pairs in
every stage; its earlier stages stop at their own plateau or at ``stage_max_epochs``. The
mechanics are the Trainer's own (``train.early_stopping_patience``: EarlyStoppingCallback,
``load_best_model_at_end``, ``metric_for_best_model: eval_loss``).

``steps`` is the paper-style race: equal optimizer steps, a staged method splitting its pairs
into one slice per stage. ``tokens`` matches compute instead: every method trains on as many
tokens (prompt + answer, tokenized as in training) as full-prompt FT does in ``total_steps``
steps, the staged method's budget shared equally by its stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

BUDGETS = {
    "converge": "each method to its validation plateau (patience, capped at max_epochs), best checkpoint served",
    "steps": "equal optimizer steps for every method (a staged method splits its pairs between its stages)",
    "tokens": "equal training tokens for every method (full-prompt FT's tokens in total_steps steps)",
}


def converge_train(train: dict[str, Any], args: Any, n_stages: int, eval_steps: int) -> dict[str, Any]:
    """``train`` (a run config's train section) set to train every stage to its plateau."""
    train.update(epochs_per_stage=args.max_epochs, max_steps_per_stage=None, save_steps=eval_steps,
                 early_stopping_patience=args.patience, validation_size=args.validation_size)
    if args.stage_max_epochs is not None and n_stages > 1:
        overrides = {int(i): dict(v) for i, v in (train.get("stage_overrides") or {}).items()}
        for i in range(n_stages - 1):
            overrides.setdefault(i, {})["epochs_per_stage"] = args.stage_max_epochs
        train["stage_overrides"] = overrides
    return train


def token_matched_steps(reference_tokens: float, stage_lengths: Sequence[float], per_step: int) -> list[int]:
    """Steps per stage that spend ``reference_tokens`` training tokens in equal shares across the
    stages, a stage of mean record length L taking ``per_step × L`` tokens a step (at least 1)."""
    if not stage_lengths:
        return []
    share = reference_tokens / len(stage_lengths)
    return [max(1, round(share / (per_step * length))) for length in stage_lengths]


def stage_lengths(cfg: Any) -> list[float]:
    """Mean record length (prompt + answer tokens, as training encodes them) of each stage of ``cfg``."""
    from ..models import load_tokenizer
    from ..pipeline import prepare
    from ..prompt import encode_chat

    prep = prepare(cfg)
    tok = load_tokenizer(cfg.model)
    out = []
    for stage in prep.stages:
        lengths = [len(encode_chat(tok, r.messages, r.answer)["input_ids"]) for r in stage.records]
        out.append(sum(lengths) / max(1, len(lengths)))
    return out


def measured_step_seconds(histories: Sequence[dict[str, Any]]) -> float | None:
    """Median seconds per optimizer step over the stages of finished runs (None before any)."""
    rates = sorted(float(s["s_per_step"]) for h in histories for s in h.get("stages", []) if s.get("s_per_step"))
    return rates[len(rates) // 2] if rates else None


def plan_lines(methods: Sequence[str], seeds: Sequence[int], steps_of: Callable[[str], list[int]],
               s_per_step: float | None, budget: str) -> list[str]:
    """The plan printed before a comparison starts: methods × seeds, each method's steps (at most,
    under ``converge``) and the time they take at the measured seconds per step."""
    lines = [f"plan: {len(methods)} methods × {len(seeds)} seeds ({', '.join(map(str, seeds))}), budget "
             f"{budget}: {BUDGETS[budget]}"]
    total = 0.0
    for m in methods:
        steps = steps_of(m)
        n = sum(steps)
        cap = "at most " if budget == "converge" else ""
        est = f", ≈ {n * s_per_step / 3600:.2f} h per seed" if s_per_step and n else ""
        lines.append(f"  {m}: {cap}{n} steps {steps or '-'}{est}")
        total += n * len(seeds) * (s_per_step or 0.0)
    if s_per_step:
        lines.append(f"  estimated training time {'at most ' if budget == 'converge' else ''}"
                     f"{total / 3600:.2f} h at {s_per_step:.2f} s per step (measured on finished runs)")
    else:
        lines.append("  no step time measured yet: the estimate follows the first finished run")
    return lines


def steps_per_epoch(n_records: int, per_step: int) -> int:
    return max(1, math.ceil(n_records / per_step))
