"""The report's "How each method got there" section and its validation-loss plot.

Per method and seed: every stage's steps and epochs, why it stopped (``plateau``: no better
validation loss for ``patience`` scorings; ``cap``: its epochs or steps ran out), the step
served, the training tokens and seconds up to it, the validation cost, which stages another
method trained (the same training, not run twice), and the share of answers that ran to ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any


def _trained_by(reused_from: str) -> str:
    """The method that trained a reused stage (``runs/<method>/seed-N/train/stage-I/final``)."""
    parts = reused_from.split("/")
    method = parts[1] if len(parts) > 1 and parts[0] == "runs" else reused_from
    return "full-prompt FT" if method == "full-prompt" else method


def _stage_text(st: dict[str, Any]) -> str:
    epochs = f", {st['epochs']:.1f} ep" if st.get("epochs") is not None else ""
    best = f", best @{st['best_step']}" if st.get("best_step") else ""
    why = f" ({st['stopped']})" if st.get("stopped") else ""
    reused = f" = {_trained_by(st['reused_from'])}'s" if st.get("reused_from") else ""
    return f"s{st['stage']}: {st['steps']} steps{epochs}{why}{best}{reused}"


def training_section(results: dict[str, Any]) -> list[str]:
    ms = results["methods"]
    if not ms:
        return []
    acc = results["accuracy"]["methods"]
    lines = ["## How each method got there", "",
             f"Budget `{results['plan'].get('budget', 'steps')}`: {results['plan'].get('budget_means', '')}.", "",
             "| method | seed | stages: steps, epochs (why it stopped), step served | training tokens to the best | "
             "training s to the best | validation s | accuracy (served = best) | answers at max_new_tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for m, s in ms.items():
        per_seed = acc.get(m, {}).get("per_seed", [])
        for i, seed in enumerate(s["seeds"]):
            stages = s.get("stages_per_seed", {}).get(seed) or s.get("stages_per_seed", {}).get(str(seed), [])
            runaway = s.get("runaway_share_per_seed", [None] * len(s["seeds"]))[i]
            tokens, wall = _to_best(stages, s, i)
            lines.append(f"| {m} | {seed} | {'; '.join(_stage_text(st) for st in stages) or '-'} | {tokens} | {wall} | "
                         f"{sum(st['validation_s'] for st in stages):.0f} | "
                         f"{per_seed[i]:.2f} | {'-' if runaway is None else f'{100 * runaway:.1f}%'} |"
                         if i < len(per_seed) else f"| {m} | {seed} | - | - | - | - | - | - |")
    notes = ["", "`plateau`: the validation loss (scored on the fixed validation sample in the stage's own prompt, "
             "the last stage's being the served one) did not improve for `patience` scorings; `cap`: the stage ran "
             "its configured epochs or steps. A stage marked `= full-prompt FT's` (or another method's) was not "
             "trained again: it is that method's best adapter for the stage, same seed (same records, prompt, seed, "
             "settings and starting weights), and its tokens and seconds are still counted here and in the cost. Seconds to the best count the last "
             "stage pro rata of its steps."]
    return lines + notes + [""]


def _to_best(stages: list[dict[str, Any]], summary: dict[str, Any], i: int) -> tuple[str, str]:
    tokens = summary.get("to_best_tokens_per_seed", [])
    walls = summary.get("to_best_wall_s_per_seed", [])
    if i < len(tokens) and i < len(walls):
        return f"{tokens[i]:,.0f}", f"{walls[i]:.0f}"
    return "-", "-"


def plot_validation(results: dict[str, Any], plt: Any) -> Any:
    """The validation.png figure: validation loss vs cumulative optimizer step (a staged method's
    stages one after the other), every method and seed; None when no run was scored."""
    curves = []
    for m, s in results["methods"].items():
        for seed, stages in (s.get("stages_per_seed") or {}).items():
            offset, xs, ys = 0, [], []
            for st in stages:
                xs += [offset + step for step, _ in st["curve"]]
                ys += [loss for _, loss in st["curve"]]
                offset += st["steps"]
            if xs:
                curves.append((f"{m} s{seed}", xs, ys))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, xs, ys in curves:
        ax.plot(xs, ys, marker=".", label=label)
    ax.set(xlabel="optimizer step (all stages)", ylabel="validation loss (answer tokens)",
           title="validation loss, each stage in its own prompt (the last stage's is the served one)")
    ax.legend(fontsize=7)
    return fig
