"""Benchmark results as a person reads them: the headline, a Markdown table and a plot.

Pure functions of the results document (``bench/results/<task>.json``), so the Markdown and the
plot can be regenerated from the committed JSON alone (``run_bench.py --render-only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptintern.io import atomic_path, write_json, write_text

REFERENCE = "full-prompt"
HEADLINE_METHOD = "promptintern"
COMPARED = ("full-prompt", "query-only", "compressed")  # paired deltas of PromptIntern against these
# What the KL stage loss bought, as paired deltas (a − b) besides each row's Δ vs full-prompt
DISTILL_COMPARISONS = (("promptintern+kl", "promptintern"), ("query-only+kl", "promptintern"),
                       ("query-only+kl", "query-only"))
# the paper's ablations and our schedule variants, as paired deltas (a − b): what each ingredient adds
ABLATION_COMPARISONS = (("promptintern", "template-only"), ("promptintern", "examples-only"),
                        ("promptintern", "base-full"), ("promptintern-exponential", "promptintern"),
                        ("promptintern-inverse_exponential", "promptintern"), ("promptintern-revisit", "promptintern"))


def ordered_methods(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, entry) in the benchmark's method order (the JSON itself is key-sorted)."""
    methods = results.get("methods", {})
    order = [m for m in results.get("method_order", []) if m in methods]
    return [(m, methods[m]) for m in order + sorted(set(methods) - set(order))]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _saved_pct(new: float | None, old: float | None) -> float | None:
    return 100.0 * (1.0 - new / old) if new is not None and old else None


def _fmt_ci(ci: list[float] | None, digits: int = 1) -> str:
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else "[n/a]"


def _verdict(delta: float, ci: list[float] | None) -> str:
    if not ci:
        return "no interval"
    if ci[1] < 0:
        return "worse (significant)"
    if ci[0] > 0:
        return "better (significant)"
    return "no significant difference"


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """PromptIntern (linear) against full-prompt FT, the prefix cache, query-only FT and compressed.

    Pure function of a results document: token, latency, throughput and cost ratios, accuracy
    deltas with their paired 95% intervals, and plain sentences on where PromptIntern loses.
    """
    methods = results.get("methods", {})
    key = results.get("metric") or next(iter(next(iter(methods.values()), {}).get("metrics", {})), None)
    pi = methods.get(HEADLINE_METHOD)
    out: dict[str, Any] = {"metric": key, "method": HEADLINE_METHOD, "findings": []}
    if pi is None or key is None:
        return out
    fp, pc = methods.get(REFERENCE), methods.get("full-prompt+prefix-cache")
    if fp is not None:
        delta = pi["metrics"][key] - fp["metrics"][key]
        ci = pi.get("delta_vs_full_prompt_ci95", {}).get(key)
        out["vs_full_prompt"] = {
            "input_tokens": [fp["input_tokens_mean"], pi["input_tokens_mean"]],
            "input_tokens_saved_pct": _saved_pct(pi["input_tokens_mean"], fp["input_tokens_mean"]),
            "latency_speedup_x": _ratio(fp["latency_s_mean"], pi["latency_s_mean"]),
            "throughput_gain_x": _ratio(pi["throughput_qps"], fp["throughput_qps"]),
            "cost_saved_pct": _saved_pct(pi["cost_per_1k_queries"], fp["cost_per_1k_queries"]),
            "train_wall_ratio_x": _ratio(pi["train_wall_s"], fp["train_wall_s"]),
            "delta": delta, "delta_ci95": ci, "verdict": _verdict(delta, ci),
        }
    if pc is not None:
        out["vs_prefix_cache"] = {
            "latency_speedup_x": _ratio(pc["latency_s_mean"], pi["latency_s_mean"]),
            "cost_saved_pct": _saved_pct(pi["cost_per_1k_queries"], pc["cost_per_1k_queries"]),
        }
    for other in COMPARED[1:]:
        if other in methods:
            delta = pi["metrics"][key] - methods[other]["metrics"][key]
            comp = results.get("comparisons", {}).get(f"{HEADLINE_METHOD} vs {other}", {}).get(key, {})
            ci = comp.get("ci95")
            out[f"vs_{other.replace('-', '_')}"] = {"delta": delta, "delta_ci95": ci, "verdict": _verdict(delta, ci)}
    out["findings"] = _findings(out, results, key)
    return out


def _findings(h: dict[str, Any], results: dict[str, Any], key: str) -> list[str]:
    """Plain sentences on where PromptIntern loses or does not (measurably) win."""
    methods, notes = results["methods"], []
    fp = h.get("vs_full_prompt")
    if fp:
        ci = _fmt_ci(fp["delta_ci95"])
        if fp["delta_ci95"] and fp["delta_ci95"][1] < 0:
            notes.append(f"Accuracy: PromptIntern is significantly below full-prompt FT ({key} {fp['delta']:+.1f}, "
                         f"95% CI {ci}).")
        elif fp["delta_ci95"] and fp["delta_ci95"][0] > 0:
            notes.append(f"Accuracy: PromptIntern is significantly above full-prompt FT ({key} {fp['delta']:+.1f}, "
                         f"95% CI {ci}).")
        else:
            notes.append(f"Accuracy: no significant difference to full-prompt FT ({key} {fp['delta']:+.1f}, "
                         f"95% CI {ci}); the interval bounds what this test set can show.")
        if fp["train_wall_ratio_x"] is not None and fp["train_wall_ratio_x"] > 1:
            notes.append(f"Training: PromptIntern took {fp['train_wall_ratio_x']:.2f}× full-prompt FT's training time.")
    for other in COMPARED[1:]:
        v = h.get(f"vs_{other.replace('-', '_')}")
        if not v:
            continue
        ci = _fmt_ci(v["delta_ci95"])
        if v["delta_ci95"] and v["delta_ci95"][1] < 0:
            notes.append(f"PromptIntern loses to {other} FT ({key} {v['delta']:+.1f}, 95% CI {ci}).")
        elif not v["delta_ci95"] or v["delta_ci95"][0] <= 0:
            notes.append(f"PromptIntern is not measurably better than {other} FT ({key} {v['delta']:+.1f}, "
                         f"95% CI {ci}).")
    pi, qo = methods.get(HEADLINE_METHOD), methods.get("query-only")
    if pi and qo and qo["train_wall_s"] and pi["train_wall_s"] > qo["train_wall_s"]:
        notes.append(f"Training cost: {pi['train_wall_s'] / qo['train_wall_s']:.1f}× query-only FT's training time "
                     "for the same number of steps (its early stages carry the long prompt).")
    scored = {n: e["metrics"][key] for n, e in ordered_methods(results) if e["metrics"].get(key) is not None}
    best = max(scored, key=scored.get, default=None)
    if pi and best not in (None, HEADLINE_METHOD) and scored[best] > pi["metrics"][key]:
        notes.append(f"Most accurate method here: {best} ({key} {scored[best]:.1f} vs PromptIntern "
                     f"{pi['metrics'][key]:.1f}).")
    pc = h.get("vs_prefix_cache")
    if pc and pc["latency_speedup_x"] is not None and pc["latency_speedup_x"] < 1:
        notes.append(f"Latency: the prefix-cached full prompt is faster than PromptIntern "
                     f"({1 / pc['latency_speedup_x']:.2f}×).")
    return notes


def _num(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _metric_cell(e: dict[str, Any], key: str) -> str:
    v, ci = e["metrics"].get(key), e.get("ci95", {}).get(key)
    return "–" if v is None else f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _delta_cell(e: dict[str, Any], key: str) -> str:
    d, ci = e.get("delta_vs_full_prompt", {}).get(key), e.get("delta_vs_full_prompt_ci95", {}).get(key)
    return "–" if d is None else f"{d:+.1f} {_fmt_ci(ci)}"


def render_markdown(results: dict[str, Any]) -> str:
    """The results document as Markdown: headline, the table of all methods, notes and the plot."""
    h = headline(results)
    key, methods, scale, prices = h["metric"], results["methods"], results["scale"], results["prices"]
    stem = f"{results['task']}" + ("" if scale.get("name", "default") == "default" else f"-{scale['name']}")
    lines = [f"# Benchmark: {results['task']}", "",
             f"Model `{results['model']}` on {results['hardware']}; {results['date']}. "
             f"{scale['train']} training pairs, {scale['test']} test items, {scale['stages']} stages, "
             f"{scale.get('total_steps', '?')} optimizer steps per fine-tuned method "
             f"(`promptintern-revisit`: {scale['stages']}×). Prices: ${prices['input_per_1k'] * 1000:g} per 1M input "
             f"and ${prices['output_per_1k'] * 1000:g} per 1M output tokens ({prices.get('source', '')})."]
    if not results.get("complete", True):
        lines += ["", f"**Incomplete**: still to run: {', '.join(results.get('pending', []))}."]
    lines += ["", "## Headline", ""]
    fp, pc = h.get("vs_full_prompt"), h.get("vs_prefix_cache")
    if fp:
        lines.append(
            f"- **PromptIntern vs full-prompt FT**: {_num(fp['input_tokens_saved_pct'], '.0f')}% fewer input tokens "
            f"({fp['input_tokens'][0]:.0f} → {fp['input_tokens'][1]:.0f}), latency speed-up {_num(fp['latency_speedup_x'], '.2f')}× "
            f"at batch 1, {_num(fp['throughput_gain_x'], '.2f')}× the throughput at batch "
            f"{scale.get('throughput_batch_size', 8)}, {_num(fp['cost_saved_pct'], '.0f')}% lower cost per 1k queries; "
            f"{key} {fp['delta']:+.1f}, 95% CI {_fmt_ci(fp['delta_ci95'])} ({fp['verdict']}).")
    if pc:
        lines.append(f"- **PromptIntern vs the prefix-cached full prompt**: latency speed-up {_num(pc['latency_speedup_x'], '.2f')}×, "
                     f"{_num(pc['cost_saved_pct'], '.0f')}% lower cost.")
    for other in COMPARED[1:]:
        v = h.get(f"vs_{other.replace('-', '_')}")
        if v:
            lines.append(f"- **PromptIntern vs {other} FT**: {key} {v['delta']:+.1f}, 95% CI {_fmt_ci(v['delta_ci95'])} "
                         f"({v['verdict']}).")
    if not (fp or pc):
        lines.append("- (needs the promptintern and full-prompt results)")
    if h["findings"]:
        lines += ["", "**Findings** (accuracy against full-prompt FT; where PromptIntern loses or does not measurably win):", ""]
        lines += [f"- {f}" for f in h["findings"]]
    others = sorted({m for e in methods.values() for m in e["metrics"]} - {key})
    header = ["method", "served (τ, k)", "train steps", "train s", "input tok/q", "output tok/q",
              "latency s/q (b1)", f"q/s (b{scale.get('throughput_batch_size', 8)})", "$ / 1k q",
              f"{key} [95% CI]", "Δ vs full-prompt [95% CI]", *others]
    lines += ["", "## All methods", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, e in ordered_methods(results):
        served = e.get("served", {})
        cells = [name, f"({served.get('tau', 0):.2f}, {served.get('k', 0)})", str(e.get("train_steps", 0)),
                 f"{e['train_wall_s']:.0f}", f"{e['input_tokens_mean']:.0f}", f"{e.get('output_tokens_mean', 0):.1f}",
                 f"{e['latency_s_mean']:.3f}", f"{e['throughput_qps']:.2f}", f"{e['cost_per_1k_queries']:.4f}",
                 _metric_cell(e, key), _delta_cell(e, key), *[_metric_cell(e, m) for m in others]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![{key} vs input tokens]({stem}.png)", "", "## Notes", ""]
    lines += [f"- `{name}`: {e['about']}." for name, e in ordered_methods(results) if e.get("about")]
    lines += [
        "- Same training pairs and the same total optimizer steps for every fine-tuned method; multi-stage methods "
        "split them between stages (`slice`: each stage trains on its own share of the pairs).",
        f"- Latency: mean wall time per query at batch 1 over the first {scale.get('latency_queries', '?')} test "
        "queries (one untimed warm-up query first). Throughput: queries/s of the main pass over the whole test set.",
        "- Cost: (input tokens × input price + output tokens × output price) per query, × 1000"
        + ("; prefix-cached tokens at the cached-input price." if prices.get("cached_input_per_1k") is not None
           else "; prefix-cached tokens billed as input."),
        f"- Intervals: percentile bootstrap ({results.get('bootstrap', {}).get('n', '?')} resamples); Δ intervals are "
        "paired (both systems resampled on the same test items; BLEU recomputed from summed sentence statistics).",
    ]
    lines += _distill_lines(results, key) + _ablation_lines(results, key)
    if " | " in results.get("hardware", ""):
        lines.append("- Measured on more than one machine (the benchmark resumed elsewhere); each method's `hardware` "
                     "and `finished` in the JSON say where and when. Compare latencies measured on the same machine.")
    pcm = methods.get("full-prompt+prefix-cache", {})
    if pcm.get("metrics_from"):
        lines.append(f"- `full-prompt+prefix-cache` accuracy: from {pcm['metrics_from']}.")
    return "\n".join(lines) + "\n"


def _distill_lines(results: dict[str, Any], key: str) -> list[str]:
    """Notes on the KL rows: paired deltas against promptintern, query-only and full-prompt."""
    methods, comps = results.get("methods", {}), results.get("comparisons", {})
    lines = []
    for name in dict.fromkeys(a for a, _ in DISTILL_COMPARISONS):
        e = methods.get(name)
        if e is None:
            continue
        parts = [f"{key} {d[key]['delta']:+.1f} {_fmt_ci(d[key]['ci95'])} vs {b}"
                 for a, b in DISTILL_COMPARISONS if a == name and key in (d := comps.get(f"{a} vs {b}", {}))]
        fp = e.get("delta_vs_full_prompt", {}).get(key)
        if fp is not None:
            parts.append(f"{fp:+.1f} {_fmt_ci(e.get('delta_vs_full_prompt_ci95', {}).get(key))} vs full-prompt")
        cost = (f"; train s includes the teacher's {e['teacher_train_wall_s']:.0f} s" if e.get("teacher_train_wall_s")
                else f"; {e['teacher_wall_s']:.0f} s of it on teacher targets" if e.get("teacher_wall_s") else "")
        lines.append(f"- `{name}` (KL distillation): " + ", ".join(parts) + cost + ".")
    return lines


def _ablation_lines(results: dict[str, Any], key: str) -> list[str]:
    """One note per measured ablation pair: the paired difference a − b and whether it is significant."""
    comps = results.get("comparisons", {})
    lines = []
    for a, b in ABLATION_COMPARISONS:
        d = comps.get(f"{a} vs {b}", {}).get(key)
        if d is not None:
            lines.append(f"- Ablation `{a}` − `{b}`: {key} {d['delta']:+.1f}, 95% CI {_fmt_ci(d['ci95'])} "
                         f"({_verdict(d['delta'], d['ci95'])}).")
    return lines


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """Accuracy vs mean input tokens per method (log x), error bars = 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = headline(results)["metric"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    placed: list[float] = []
    for name, e in ordered_methods(results):
        v = e["metrics"].get(key)
        if v is None:
            continue
        x = max(e["input_tokens_mean"], 1.0)
        ci = e.get("ci95", {}).get(key) or [v, v]
        color = "tab:red" if name.startswith("promptintern") else "tab:gray" if name == "base-full" else "tab:blue"
        ax.errorbar([x], [v], yerr=[[v - ci[0]], [ci[1] - v]], fmt="o", color=color, capsize=3)
        crowd = sum(abs(x - other) <= 0.1 * x for other in placed)  # methods served with the same prompt
        placed.append(x)
        ax.annotate(name, (x, v), textcoords="offset points", xytext=(6, 4 - 10 * crowd), fontsize=7)
    ax.set_xscale("log")
    ax.set(xlabel="mean input tokens per query (log)", ylabel=f"{key} (95% CI)",
           title=f"{results['task']}: {key} vs prompt length · {results['model']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], results_dir: Path, stem: str, with_json: bool = True) -> None:
    """``<stem>.json`` (unless re-rendering), ``<stem>.md`` and ``<stem>.png`` in ``results_dir``."""
    if with_json:
        write_json(results_dir / f"{stem}.json", results)
    write_plot(results, results_dir / f"{stem}.png")
    write_text(results_dir / f"{stem}.md", render_markdown(results))


# ---------------------------------------------------------------- README section

README_START = "<!-- bench-results:start (generated from bench/results/*.json by `python bench/run_bench.py --readme`) -->"
README_END = "<!-- bench-results:end -->"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}×"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}%"


def _vs(h: dict[str, Any], other: str) -> str:
    v = h.get(f"vs_{other.replace('-', '_')}")
    return f"{v['delta']:+.1f} {_fmt_ci(v['delta_ci95'])}" if v else "n/a"


def readme_section(results_list: list[dict[str, Any]], results_dir: str = "bench/results") -> str:
    """The README's results block: one headline row per task, then each task's findings and plot.

    Pure function of the results documents, so the README says what the committed JSON says.
    """
    head = ["task", "scale (train / test, steps)", "input tokens/q FT → PI", "tokens saved", "latency speed-up (b1)",
            "throughput (b8)", "cost saved", "Δ vs full-prompt FT [95% CI]", "Δ vs query-only FT", "Δ vs compressed"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    details: list[str] = []
    for r in results_list:
        h, scale = headline(r), r["scale"]
        fp = h.get("vs_full_prompt") or {}
        tokens = fp.get("input_tokens")
        rows.append("| " + " | ".join([
            f"{r['task']} ({h['metric']})", f"{scale['train']} / {scale['test']}, {scale.get('total_steps', '?')}",
            f"{tokens[0]:.0f} → {tokens[1]:.0f}" if tokens else "n/a", _pct(fp.get("input_tokens_saved_pct")),
            _x(fp.get("latency_speedup_x")), _x(fp.get("throughput_gain_x")), _pct(fp.get("cost_saved_pct")),
            _vs(h, "full-prompt"), _vs(h, "query-only"), _vs(h, "compressed")]) + " |")
        details += ["", f"**{r['task']}** — {r['model']} on {r['hardware']}, {r['date'][:10]}; "
                        f"[all methods]({results_dir}/{r['task']}.md)."]
        if not r.get("complete", True):
            details.append(f"Still to run at this scale: {', '.join(r.get('pending', []))}.")
        details += ["", f"![{r['task']}: {h['metric']} vs input tokens]({results_dir}/{r['task']}.png)", ""]
        details += [f"- {f}" for f in h["findings"]]
        details += _distill_lines(r, h["metric"]) + _ablation_lines(r, h["metric"])
    if not results_list:
        rows.append("| (no results yet) |" + " |" * (len(head) - 1))
    return "\n".join([README_START, *rows, *details, README_END])


def update_readme(text: str, section: str) -> str:
    """``text`` with the block between the README markers replaced by ``section``."""
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError("README has no bench-results markers")
    return text[:start] + section + text[end + len(README_END):]
