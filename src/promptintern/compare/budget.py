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


def measured_step_seconds(histories: dict[str, Sequence[dict[str, Any]]]) -> dict[tuple[str, int], float]:
    """Median seconds per optimizer step per (method, stage index) over the stages already trained
    (``histories``: method → its runs' train/history.json); ``("*", -1)``: over all of them."""
    rates: dict[tuple[str, int], list[float]] = {}
    for method, hs in histories.items():
        for h in hs:
            for s in h.get("stages", []):
                if s.get("s_per_step") and not s.get("reused_from"):
                    rates.setdefault((method, int(s["stage"])), []).append(float(s["s_per_step"]))
                    rates.setdefault(("*", -1), []).append(float(s["s_per_step"]))
    return {k: sorted(v)[len(v) // 2] for k, v in rates.items()}


def plan_lines(methods: Sequence[str], seeds: Sequence[int], steps_of: Callable[[str], list[int]],
               rates: dict[tuple[str, int], float], budget: str, reused: Sequence[str] = ()) -> list[str]:
    """The plan printed before a comparison starts: methods × seeds, each method's steps (at most,
    under ``converge``) and their time at the seconds per step measured so far (the method's own
    stage where it has run, else the median of every stage run; a reused stage 0 costs nothing)."""
    lines = [f"plan: {len(methods)} methods × {len(seeds)} seeds ({', '.join(map(str, seeds))}), budget "
             f"{budget}: {BUDGETS[budget]}"]
    cap = "at most " if budget == "converge" else ""
    fallback, total, known = rates.get(("*", -1)), 0.0, True
    for m in methods:
        steps = steps_of(m)
        secs = 0.0
        for i, n in enumerate(steps):
            rate = rates.get((m, i), fallback)
            if m in reused and i == 0:
                continue
            if rate is None:
                known = False
                break
            secs += n * rate
        note = " (stage 0: full-prompt FT's)" if m in reused else ""
        est = f", ≈ {secs / 3600:.2f} h per seed" if known and steps else ""
        lines.append(f"  {m}: {cap}{sum(steps)} steps {steps or '-'}{note}{est}")
        total += secs * len(seeds)
    if known and fallback is not None:
        lines.append(f"  training time {cap}≈ {total / 3600:.2f} h at the seconds per step measured so far "
                     "(serving and scoring the test set come on top)")
    else:
        lines.append("  no step time measured yet: the estimate follows the first finished stage")
    return lines


def steps_per_epoch(n_records: int, per_step: int) -> int:
    return max(1, math.ceil(n_records / per_step))
