"""results.json, report.md (the verdict first, in plain words) and the plots of a comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_path, write_json, write_text
from .training_report import plot_validation, training_section


def write_outputs(results: dict[str, Any], out: Path) -> None:
    plots = write_plots(results, out / "plots")
    results["plots"] = [str(p.relative_to(out)) for p in plots]
    write_json(out / "results.json", results)
    write_text(out / "report.md", render(results))


def _ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"


def _money(x: float) -> str:
    return f"${x:.6f}" if abs(x) < 0.01 else f"${x:,.2f}"


def verdict_text(results: dict[str, Any]) -> str:
    """The verdict in plain words."""
    v, stat = results["verdict"], results.get("statistic") or "accuracy"
    if "cheapest_as_accurate" not in v:
        return v["text"] + _pending(results)
    tol, ref, best = v["tolerance"], v["reference"], v["cheapest_as_accurate"]
    lines = []
    if best == ref:
        hedge = " (for now)" if v.get("undecided") else ""
        lines.append(f"**Keep the prompt{hedge}.** No method that drops it is shown to be both as accurate as "
                     f"full-prompt FT (the lower end of its 95% interval within {tol:g} points of {stat}) and "
                     f"cheaper than {'serving full-prompt FT from the prefix cache' if ref != 'full-prompt' else 'full-prompt FT'} "
                     f"(`{ref}`), under the "
                     f"`{v['profile']}` prices.")
    else:
        d = v["diff"]
        be = v["break_even"]
        hosted, compute = be["training_hosted"], be["training_compute"]
        more = (" It is also **more accurate**: the whole interval lies above full-prompt FT."
                if v.get("more_accurate") else "")
        lines.append(f"**Use `{best}`.** It is the cheapest method above the floor and within {tol:g} points of "
                     f"full-prompt FT: {d['diff']:+.2f} points of {stat} (95% interval {_ci(d['ci95'])} over "
                     f"{d['n_items']} test items and {d['n_seeds']} seeds), and saves "
                     f"{_money(v['per_query_saving'])} per query ({_money(1000 * v['per_query_saving'])} per 1,000) "
                     f"against `{ref}` under the `{v['profile']}` prices, {v.get('cost_basis', 'per query')}.{more}")
        lines.append(f"Break-even against `{ref}`: {_break_even(hosted)} with hosted fine-tuning prices, "
                     f"{_break_even(compute)} with the measured training time at "
                     f"${results['cost']['compute_per_hour']:g}/hour.")
    for u in v.get("undecided", []):
        more = u["more"]
        need = (f"about {more['factor']:.1f}× the data would settle it if the estimate holds "
                f"(≈ {more['items']} test items at this many seeds, or ≈ {more['seeds']} seeds at this many items)"
                if more else "more data would not settle it at this estimate")
        lines.append(f"**The data cannot tell** whether `{u['method']}` (cheaper) is as accurate: "
                     f"{u['diff']:+.2f} points, interval {_ci(u['ci95'])} reaches below −{tol:g}; {need}.")
    if v.get("worse"):
        lines.append("Less accurate than full-prompt FT by more than the tolerance (whole interval below it): "
                     + ", ".join(f"`{m}`" for m in v["worse"]) + ".")
    if v.get("at_floor"):
        lines.append("Not resolved above the floor (not learned at this budget), so never recommended: "
                     + ", ".join(f"`{m}`" for m in v["at_floor"]) + ".")
    if results["accuracy"]["methods"].get("full-prompt", {}).get("n_seeds") == 1:
        lines.append("**One training seed**: every interval here covers the test items only, not the spread "
                     "between training runs of the same method, which can be as large as the differences between "
                     "methods; train more seeds (`--seeds N`) before relying on this verdict.")
    return "\n\n".join(lines) + _pending(results)


def _pending(results: dict[str, Any]) -> str:
    if results["complete"]:
        return ""
    return (f"\n\nNot every run has finished ({len(results['pending'])} pending: "
            + ", ".join(results["pending"][:8]) + "); this verdict uses those that have.")


def _break_even(b: dict[str, Any]) -> str:
    if b["never"]:
        return "never (its queries cost no less)"
    if b["queries"] == 0:
        return "from the first query (its training costs no more)"
    return f"after {b['queries']:,} queries"


def render(results: dict[str, Any]) -> str:
    parts = [f"# promptintern compare: {results['task']} · {results['model']}", "",
             "## Verdict", "", verdict_text(results), ""]
    parts += _accuracy_section(results) + _slice_section(results) + _teacher_section(results)
    parts += training_section(results) + _speed_section(results)
    parts += _scaling_section(results)
    parts += _cost_section(results) + _plan_section(results)
    if results.get("plots"):
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in results["plots"]] + [""]
    return "\n".join(parts)


def _accuracy_section(results: dict[str, Any]) -> list[str]:
    acc, stat = results["accuracy"], results.get("statistic")
    if not acc["methods"]:
        return ["## Accuracy across seeds", "", "No (method, seed) run has finished yet.", ""]
    lines = ["## Accuracy across seeds", "",
             f"Statistic: {stat}, from the per-item scores stored in each run's metrics.json, over "
             f"{acc['n_items']} test items. Differences: bootstrap over test items and seeds "
             f"({results['resamples']:,} resamples); "
             "significant only when the 95% interval excludes 0.", ""]
    lines += _accuracy_table(acc, results, own=True)
    return lines + ["", "`*`: the interval excludes 0. `full-prompt+cache` answers with full-prompt's weights and "
                    "prompt (greedy), so its scores are full-prompt's.", ""]


def _accuracy_table(acc: dict[str, Any], results: dict[str, Any], own: bool) -> list[str]:
    """Per method: mean with interval, spread over seeds, and the differences to the references."""
    head = " run's own headline per seed |" if own else ""
    lines = [f"| method | mean [95% CI, items × seeds] | sd over seeds | per seed |{head} Δ vs full-prompt [95% CI] | "
             "Δ vs query-only [95% CI] |", "|---|---|---|---|" + ("---|" if own else "") + "---|---|"]
    for m, s in acc["methods"].items():
        d = acc["differences"].get(m, {})
        cells = []
        for ref in ("full-prompt", "query-only"):
            x = d.get(ref)
            cells.append(f"{x['diff']:+.2f} {_ci(x['ci95'])}{' *' if x['significant'] else ''}" if x else "-")
        sd = f"{s['sd_over_seeds']:.2f}" if s["sd_over_seeds"] is not None else "-"
        own_cell = ", ".join(f"{x:.2f}" for x in results["methods"][m]["headline_metric_per_seed"])
        ci = f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s.get("ci95") else ""
        lines.append(f"| {m} | {s['mean']:.2f}{ci} | {sd} | {', '.join(f'{x:.2f}' for x in s['per_seed'])} |"
                     + (f" {own_cell} |" if own else "") + f" {cells[0]} | {cells[1]} |")
    return lines


def _slice_section(results: dict[str, Any]) -> list[str]:
    sl = (results.get("slices") or {}).get("schema_unseen")
    if not sl or not sl["accuracy"]["methods"]:
        return []
    return ["## Schema-unseen slice", "",
            f"The {sl['n_items']} test items whose gold SQL names a table or column that no labelled training "
            "pair's SQL names: a model that learned only the labelled pairs never wrote those names, so this is "
            "where the prompt's knowledge must have been internalized. Same bootstrap as above; with this few "
            "items the intervals are wide.", "", *_accuracy_table(sl["accuracy"], results, own=False), ""]


def _teacher_section(results: dict[str, Any]) -> list[str]:
    td = results.get("teacher_data")
    if not td:
        return []
    lines = ["## Teacher data", "",
             f"{td['n']} new queries (" + "; ".join(f"{src}: {c['found']} found, {c['duplicates']} duplicates, "
                                                   f"{c['leaking']} equal to a validation or test query, {c['kept']} kept"
                                                   for src, c in td["counts"].items())
             + "), answered by full-prompt FT of each seed with its full prompt; an answer is kept when it ended "
             "by itself, is not empty and passes the task's check.", "",
             "| seed | answered | kept | kept share | rejected | labelling s | input tokens | output tokens |",
             "|---|---|---|---|---|---|---|---|"]
    if not td["seeds"]:
        return lines[:3] + ["No seed's full-prompt FT has labelled them yet.", ""]
    for seed, entry in td["seeds"].items():
        c, cost = entry["counts"], entry["cost"]
        rejected = ", ".join(f"{v} {k}" for k, v in c.items() if k not in ("answered", "kept") and v) or "-"
        share = c["kept"] / c["answered"] if c["answered"] else 0.0
        lines.append(f"| {seed} | {c['answered']} | {c['kept']} | {share:.1%} | {rejected} | {cost['wall_s']:.0f} | "
                     f"{cost['input_tokens']:,.0f} | {cost['output_tokens']:,.0f} |")
    return lines + ["", "Labelling counts as training cost of the `+teacher` methods in the cost table.", ""]


def _speed_section(results: dict[str, Any]) -> list[str]:
    ms = results["speed"].get("methods", {})
    if not ms:
        return ["## Speed", "", "No speed pass yet.", ""]
    first = next(iter(ms.values()))
    lines = ["## Speed at equal answer length", "",
             f"Merged weights, exactly L new tokens (end of turn suppressed), batch 1, {first['settings']['repeats']} "
             f"repeats: median [IQR]. Hardware: {first['hardware']}.", "",
             "| method | L | prompt tokens | cached | TTFT s | s/token | latency s | queries/s at batch | peak memory MB | KV MB/query | as served: latency s (output tokens) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, e in ms.items():
        served = e.get("as_served")
        served_txt = (f"{served['latency_s']['median']:.3f} ({served['output_tokens_mean']:.1f})" if served else "-")
        for L, r in e["forced"].items():
            tp = ", ".join(f"{v['queries_per_s']:.2f} @{b}" for b, v in r["throughput"].items()) or "-"
            peak = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "-"
            lines.append(f"| {m} | {L} | {r['prompt_tokens_mean']:.0f} | {r['cached_prefix_tokens']} | "
                         f"{_q(r['ttft_s'])} | {_q(r['s_per_output_token'], 4)} | {_q(r['latency_s'])} | {tp} | {peak} | "
                         f"{r['kv_bytes_per_query'] / 2**20:.1f} | {served_txt} |")
    lines += ["", "Matched-length speed-up (ratio of median batch-1 latencies):", "",
              "| method | " + " | ".join(f"vs {ref} at L={L}" for ref in ("full-prompt", "full-prompt+cache")
                                         for L in map(str, first["forced"])) + " |",
              "|---|" + "---|" * (2 * len(first["forced"]))]
    ranges = results.get("speedup_ranges", {})
    for m, s in results["speedups"].items():
        cells = [f"{s.get(f'vs_{ref}', {}).get(L, float('nan')):.2f}×{_range(ranges, m, ref, L)}"
                 for ref in ("full-prompt", "full-prompt+cache") for L in map(str, first["forced"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if ranges:
        lines += ["", "In brackets: the lowest and highest of the paired ratios (repeat r of both methods ran back "
                  "to back, the methods' repeats interleaved)."]
    return lines + ["", "Peak memory on a CPU is the process's peak resident set (model included); the prefix "
                    "cache serves one query at a time, so its 'batch' throughput is queries in sequence.", ""]


def _range(ranges: dict[str, Any], method: str, ref: str, length: str) -> str:
    r = ranges.get(method, {}).get(f"vs_{ref}", {}).get(length)
    return f" [{r['min']:.2f}, {r['max']:.2f}]" if r else ""


def _q(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}–{s['q3']:.{digits}f}]"


def _scaling_section(results: dict[str, Any]) -> list[str]:
    sc = results.get("scaling")
    if not sc or not sc.get("points"):
        return ["## Speed vs prompt length", "", "No scaling pass yet.", ""]
    lengths = sc["settings"]["lengths"]
    lines = ["## Speed vs recurring-prompt length", "",
             f"No training: {sc['settings']['model']} times the prompts a trained model would read, the task's template "
             f"grown from its own documentation or cut to each length; {sc['settings']['repeats']} repeats, batch 1, "
             f"median latency. Hardware: {sc['hardware']}.", "",
             "| template tokens | " + " | ".join(f"full / cache / query s at L={L}" for L in lengths) + " | "
             + " | ".join(f"query-alone speed-up vs full / vs cache at L={L}" for L in lengths) + " |",
             "|---|" + "---|" * (2 * len(lengths))]
    for p in sc["points"]:
        lat = [" / ".join(f"{p['systems'][s][str(L)]['latency_s']['median']:.3f}" for s in ("full", "prefix-cache", "query"))
               for L in lengths]
        sp = [f"{p['speedup'][str(L)]['vs_full']:.2f}× / {p['speedup'][str(L)]['vs_prefix-cache']:.2f}×" for L in lengths]
        lines.append(f"| {p['template_tokens']} | " + " | ".join(lat) + " | " + " | ".join(sp) + " |")
    lines.append("")
    for L in lengths:
        for ref, c in sc["crossing"][str(L)].items():
            if c["reached"]:
                lines.append(f"- L={L}, vs {ref}: the query alone reaches {sc['target']}× at about "
                             f"{c['at_template_tokens']:.0f} template tokens.")
            else:
                lines.append(f"- L={L}, vs {ref}: {sc['target']}× not reached; largest {c['largest']:.2f}× at "
                             f"{c['at_template_tokens']:.0f} template tokens.")
    return lines + [""]


def _cost_section(results: dict[str, Any]) -> list[str]:
    c = results["cost"]
    lines = ["## Cost", ""]
    for name, prof in c["profiles"].items():
        p = prof["prices"]
        lines += [f"Profile `{name}`: ${p['input_per_1m']:g} input, ${p['cached_input_per_1m']:g} cached input, "
                  f"${p['output_per_1m']:g} output, ${p['training_per_1m']:g} training per 1M tokens. Source: "
                  f"{p['source']}. Training price: {p['training_source']}. Compute: ${c['compute_per_hour']:g}/hour "
                  f"({c['compute_source']}).", "",
                  f"| method | input tokens | cached | output tokens | $/1k queries | $/1k without the cache discount | "
                  f"training tokens | training $ hosted | training wall s | training $ compute | break-even vs "
                  f"{c['reference']} (hosted / compute) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for m, row in prof["methods"].items():
            s = results["methods"][m]
            be = row.get("break_even_vs_reference")
            be_txt = " / ".join(_break_even(be[b]) for b in ("training_hosted", "training_compute")) if be else "-"
            lines.append(f"| {m} | {s['input_tokens_mean']:.0f} | {s.get('cached_tokens', 0):.0f} | "
                         f"{s['output_tokens_mean']:.1f} | {_money(row['per_1k_queries'])} | "
                         f"{_money(1000 * row['per_query_no_cache_discount'])} | {s['train_tokens_mean']:,.0f} | "
                         f"{_money(row['training_hosted'])} | {s['train_wall_s_mean']:.0f} | "
                         f"{_money(row['training_compute'])} | {be_txt} |")
        lines.append("")
    return lines + ["Tokens per query are the means over the whole test set at natural answer lengths (as served); "
                    "training tokens are the optimizer's steps × records per step × the stage's mean record length. "
                    "A `+teacher` method's training $ include its teacher's labelling: hosted, each new query billed "
                    "like a served full-prompt query (the shared prefix at the cached price); compute, its "
                    "generation seconds.", ""]


def _plan_section(results: dict[str, Any]) -> list[str]:
    p = results["plan"]
    lines = ["## How the runs were made", "",
             f"{p['n_train']} training pairs, batches of {p['batch']} records; " + _budget_text(p)
             + f"; seeds {p['seeds']} ({p['seed_changes']}).", "",
             f"LR schedule policy: `{p['lr_policy']}` ({p['lr_scheduler']}, warm-up ratio {p['warmup_ratio']}): "
             f"{p['lr_policy_means']}.", "",
             "| method | what | steps per stage (converge: the caps) | stage data | training wall s per seed | whole run (train + serve + "
             "score) wall s per seed |", "|---|---|---|---|---|---|"]
    for m, d in p["methods"].items():
        wall = results["methods"].get(m, {}).get("train_wall_s_per_seed", [])
        whole = results["methods"].get(m, {}).get("pipeline_wall_s_per_seed", [])
        lines.append(f"| {m} | {d['about']} | {d['steps_per_stage'] or '-'} | {d['stage_mode']} | "
                     f"{', '.join(f'{w:.0f}' for w in wall) or '-'} | "
                     f"{', '.join('-' if w is None else f'{w:.0f}' for w in whole) or '-'} |")
    return lines + [""]


def _budget_text(p: dict[str, Any]) -> str:
    c = p.get("converge")
    if c:
        return (f"every method trained to its plateau (patience {c['patience']} scorings every {c['eval_steps']} steps "
                f"on {c['validation_size']} validation records, at most {c['max_epochs']:g} epochs per stage"
                + (f", earlier stages at most {c['stage_max_epochs']:g}" if c["stage_max_epochs"] else "") + ")")
    if p.get("budget") == "tokens":
        return f"equal training tokens (full-prompt FT's in {p['total_steps']} steps) for every fine-tuned method"
    return f"{p['total_steps']} optimizer steps for every fine-tuned method"


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """accuracy.png (per-seed points and means), scaling.png (latency and speed-up vs prompt length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    acc = results["accuracy"]["methods"]
    if acc:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, s in enumerate(acc.values()):
            ax.scatter([i] * len(s["per_seed"]), s["per_seed"], color="tab:blue", alpha=0.6)
            ax.hlines(s["mean"], i - 0.3, i + 0.3, color="black")
        ax.set_xticks(range(len(acc)), list(acc), rotation=20, ha="right")
        ax.set_ylabel(results.get("statistic") or "score")
        ax.set_title("accuracy per seed (dots) and mean (bar)")
        paths.append(_save(fig, out / "accuracy.png", plt))
    fig = plot_validation(results, plt)
    if fig is not None:
        paths.append(_save(fig, out / "validation.png", plt))
    sc = results.get("scaling")
    if sc and sc.get("points"):
        lengths = sc["settings"]["lengths"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        xs = [p["template_tokens"] for p in sc["points"]]
        for L, style in zip(lengths, ("-", "--", ":", "-."), strict=False):
            for system, color in (("full", "tab:red"), ("prefix-cache", "tab:orange"), ("query", "tab:green")):
                axes[0].plot(xs, [p["systems"][system][str(L)]["latency_s"]["median"] for p in sc["points"]],
                             style, color=color, marker="o", label=f"{system}, L={L}")
            for ref, color in (("full", "tab:red"), ("prefix-cache", "tab:orange")):
                axes[1].plot(xs, [p["speedup"][str(L)][f"vs_{ref}"] for p in sc["points"]], style, color=color,
                             marker="o", label=f"query alone vs {ref}, L={L}")
        axes[1].axhline(sc["target"], color="grey", linewidth=0.8)
        axes[0].set(xlabel="recurring-prompt tokens", ylabel="batch-1 latency, s (median)", xscale="log")
        axes[1].set(xlabel="recurring-prompt tokens", ylabel="speed-up of the query alone", xscale="log")
        for ax in axes:
            ax.set_xticks(xs, [str(x) for x in xs], minor=False)
            ax.set_xticks([], minor=True)
        axes[0].legend(fontsize=7)
        axes[1].legend(fontsize=7)
        fig.suptitle(f"{sc['settings']['model']}: speed vs prompt length at forced answer lengths (no training)")
        paths.append(_save(fig, out / "scaling.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
