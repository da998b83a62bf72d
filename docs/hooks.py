"""MkDocs hooks: the pages that are generated from the code and the committed results at build time.

Why generated: a reference copied by hand drifts from the code the day a field or a flag changes.
So the configuration reference is the library's own ``describe(RunConfig)`` (what ``promptintern
config`` prints), the CLI reference is the argparse parser's own help, the package map is every
module's docstring, the result pages are ``promptintern.compare.report.render`` applied to each
committed ``bench/results/*/results.json``, and the figure of the shrinking prompt is drawn from
the schedule code and the bundled SQL example's token counts. Nothing here is committed output.

The committed benchmark folder (``bench/``: reports, plots, notes) is mounted into the site as
``bench/`` so that pages link to it as the repository does, and the strict build checks those links.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "promptintern"
RESULTS = ROOT / "bench" / "results"
MOUNTED = (".md", ".png", ".svg")  # from bench/: what a page links to and a browser shows
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
ROLE = re.compile(r":(?:class|func|meth|data|attr|mod|exc|obj):<code>(~?)([\w.]+)</code>")
LINK = re.compile(r"\]\((?!https?:|#)([^)\s]+)\)")


def _docs_link(match: re.Match, src_uri: str) -> str:
    """A link from a mounted bench page: repository-relative into ``docs/`` becomes site-relative."""
    target = os.path.normpath(os.path.join(os.path.dirname(src_uri), match.group(1)))
    if not target.startswith("docs/"):
        return match.group(0)
    return "](" + os.path.relpath(target.removeprefix("docs/"), os.path.dirname(src_uri)) + ")"


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages, the compare reports and plots, the figure and the bench mount."""
    for uri, text in generated_pages().items():
        files.append(File.generated(config, uri, content=text))
    for path in sorted((ROOT / "bench").rglob("*")):
        if path.suffix in MOUNTED and path.is_file() and "runs" not in path.relative_to(ROOT).parts:
            files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    for results in result_files():
        for plot in sorted((results.parent / "plots").glob("*.png")):
            files.append(File.generated(config, f"results/{results.parent.name}/plots/{plot.name}",
                                        abs_src_path=str(plot)))
    files.append(File.generated(config, "figures/prompt-stages.svg", content=prompt_stages_svg()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace ``<!-- generated: NAME -->`` markers in hand-written pages; in the mounted ``bench/``
    pages, point links into the repository's ``docs/`` at the same page of the site."""
    if page.file.src_uri.startswith("bench/"):
        markdown = LINK.sub(lambda m: _docs_link(m, page.file.src_uri), markdown)
    makers = {"package-map": package_map, "compare-summary": compare_summary, "compare-speed": compare_speed,
              "compare-cost": compare_cost, "scaling-nl2bash": lambda: scaling_table("compare-nl2bash")}
    return MARKER.sub(lambda m: makers[m.group(1)](), markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Docstrings cite code with Sphinx roles (``:class:`~a.B```); show them as plain code (``B``)."""
    return ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def generated_pages() -> dict[str, str]:
    pages = {"reference/config.md": config_reference(), "reference/cli.md": cli_reference()}
    for results in result_files():
        pages[f"results/{results.parent.name}/index.md"] = compare_page(results)
    return pages


# --- configuration and CLI references -------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """Every ``RunConfig`` field, grouped by section, from the dataclasses' help strings."""
    from promptintern.config import RunConfig
    from promptintern.configtools import describe

    lines = ["# Configuration reference", "",
             "Generated from the config dataclasses' help strings: the table `promptintern config` prints. "
             "A run config is one YAML file; `--set section.field=value` overrides any field on the "
             "command line (the value parsed as YAML), and `promptintern config FILE` validates a file.", ""]
    section = None
    for key, default, text in describe(RunConfig):
        top = key.split(".")[0] if "." in key else "top level"
        if top != section:
            section = top
            lines += ["", f"## `{top}`" if top != "top level" else "## Top level", "",
                      "| key | default | help |", "|---|---|---|"]
        lines.append(f"| `{key}` | `{_cell(default)}` | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def _subparsers(parser: Any) -> dict[str, Any]:
    import argparse

    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    """Each command's ``--help``, from the parser ``promptintern`` itself runs."""
    from promptintern.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: one width for every build
    try:
        parser = build_parser()
        lines = ["# CLI reference", "",
                 "Generated from the argument parser (`promptintern COMMAND --help`). Every user mistake "
                 "is one line on stderr and a non-zero exit; `--debug` shows the traceback.", "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        for name, sub in _subparsers(parser).items():
            lines += [f"## `promptintern {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
            for inner, subsub in _subparsers(sub).items():
                lines += [f"### `promptintern {name} {inner}`", "", "```text", subsub.format_help().rstrip(),
                          "```", ""]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines)


# --- package map ------------------------------------------------------------------------------------

def package_map() -> str:
    """One row per module: its path and the first paragraph of its docstring (read, not imported)."""
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted(SRC.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split())
        name = path.relative_to(SRC.parent).with_suffix("").as_posix().replace("/", ".")
        rows.append(f"| `{name.removesuffix('.__init__')}` | {_cell(first) or '—'} |")
    return "\n".join(rows)


# --- results ------------------------------------------------------------------------------------------

def result_files() -> list[Path]:
    return sorted(RESULTS.glob("*/results.json"))


def compare_page(results_path: Path) -> str:
    """The committed comparison's report, rendered by the library's own report function."""
    from promptintern.compare.report import render

    results = json.loads(results_path.read_text(encoding="utf-8"))
    rel = results_path.parent.relative_to(ROOT).as_posix()
    note = (f"\n\nGenerated at build time from `{rel}/results.json` (the rendering `promptintern compare` "
            f"writes as `report.md`); the command that produced it is in `{rel}/`.\n")
    text = render(results)
    head, _, rest = text.partition("\n")
    return head + note + rest


def _split(results: dict[str, Any]) -> str:
    split = (results.get("plan") or {}).get("task_options", {}).get("split")
    return f" ({split} split)" if split else ""


def compare_summary() -> str:
    """One row per committed comparison: the verdict and each method's mean over seeds."""
    from promptintern.compare.report import verdict_text

    lines = ["| comparison | statistic | items × seeds | " + " | ".join(
        ("full-prompt FT", "query-only FT", "compressed", "PromptIntern")) + " | PI − full-prompt [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|---|---|"]
    for path in result_files():
        r = json.loads(path.read_text(encoding="utf-8"))
        acc = r["accuracy"]
        means = [f"{acc['methods'][m]['mean']:.2f}" if m in acc["methods"] else "—"
                 for m in ("full-prompt", "query-only", "compressed", "promptintern")]
        d = acc["differences"].get("promptintern", {}).get("full-prompt")
        diff = f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]{' *' if d['significant'] else ''}" \
            if d else "—"
        seeds = max((len(s["per_seed"]) for s in acc["methods"].values()), default=0)
        verdict = verdict_text(r).split("\n\n")[0]
        verdict = re.sub(r"\*\*(.+?)\*\*.*", r"\1", verdict)  # its first sentence
        name = path.parent.name
        lines.append(f"| [{r['task']}{_split(r)}, `{name}`]({name}/index.md) | {r.get('statistic') or r['metric']} "
                     f"| {acc.get('n_items', '—')} × {seeds} | " + " | ".join(means) + f" | {diff} | {verdict} |")
    return "\n".join(lines) + "\n\n`*`: the interval excludes 0 (bootstrap over test items and seeds)."


def _loaded() -> list[tuple[str, dict[str, Any]]]:
    return [(p.parent.name, json.loads(p.read_text(encoding="utf-8"))) for p in result_files()]


def _ratio(r: dict[str, Any], method: str, ref: str) -> str:
    """Ratio of median latencies, as the report gives it, with the lowest and highest paired ratio."""
    cells = []
    for length in ("16", "64"):
        ratio = r["speedups"].get(method, {}).get(f"vs_{ref}", {}).get(length)
        x = r["speedup_ranges"].get(method, {}).get(f"vs_{ref}", {}).get(length)
        cells.append(f"{ratio:.2f}× [{x['min']:.2f}, {x['max']:.2f}]" if ratio and x else "—")
    return " / ".join(cells)


def _tokens(speed: dict[str, Any], method: str, key: str = "prompt_tokens_mean") -> str:
    forced = speed.get(method, {}).get("forced", {}).get("16", {})
    return f"{forced[key]:.0f}" if key in forced else "—"


def compare_speed() -> str:
    """Matched-length speed-ups per comparison: ratio of median latencies [lowest, highest paired ratio]."""
    lines = ["| comparison | prompt tokens: full / cached / PromptIntern | PromptIntern vs full prompt, 16 / 64 "
             "tokens | PromptIntern vs prefix cache, 16 / 64 | query-only FT vs prefix cache, 16 / 64 |",
             "|---|---|---|---|---|"]
    for name, r in _loaded():
        speed = (r.get("speed") or {}).get("methods", {})
        if not r.get("speedup_ranges") or not r.get("speedups") or "full-prompt" not in speed:
            continue

        lines.append(f"| [{name}]({name}/index.md#speed-at-equal-answer-length) | {_tokens(speed, 'full-prompt')} / "
                     f"{_tokens(speed, 'full-prompt+cache', 'cached_prefix_tokens')} / "
                     f"{_tokens(speed, 'promptintern')} | "
                     f"{_ratio(r, 'promptintern', 'full-prompt')} | "
                     f"{_ratio(r, 'promptintern', 'full-prompt+cache')} | "
                     f"{_ratio(r, 'query-only', 'full-prompt+cache')} |")
    return "\n".join(lines)


def compare_cost() -> str:
    """Dollars per 1,000 queries at natural answer lengths and hosted training, per comparison and method."""
    methods = ("full-prompt", "full-prompt+cache", "query-only", "compressed", "promptintern")
    lines = ["| comparison | price profile | " + " | ".join(f"`{m}`" for m in methods)
             + " | hosted training: full-prompt / PromptIntern / query-only |",
             "|---|---|" + "---|" * len(methods) + "---|"]
    for name, r in _loaded():
        for profile, prof in (r.get("cost") or {}).get("profiles", {}).items():
            rows = prof["methods"]
            per = [f"${rows[m]['per_1k_queries']:.3g}" if m in rows else "—" for m in methods]
            train = [f"${rows[m]['training_hosted']:.2f}" if m in rows else "—"
                     for m in ("full-prompt", "promptintern", "query-only")]
            lines.append(f"| [{name}]({name}/index.md#cost) | `{profile}` | " + " | ".join(per)
                         + " | " + " / ".join(train) + " |")
    return "\n".join(lines)


def scaling_table(folder: str) -> str:
    """The speed-vs-prompt-length pass of one comparison, with the machine's load around each length."""
    sc = json.loads((RESULTS / folder / "results.json").read_text(encoding="utf-8"))["scaling"]
    lengths = [str(n) for n in sc["settings"]["lengths"]]
    systems = ("full", "prefix-cache", "query")
    lines = ["| template tokens | load avg (1 min) before → after | "
             + " | ".join(f"latency s at {n}: full / cache / query" for n in lengths)
             + " | time to first token s: full / cache / query | "
             + " | ".join(f"query-alone speed-up at {n}: vs full / vs cache" for n in lengths) + " |",
             "|---|---|" + "---|" * (2 * len(lengths) + 1)]
    for p in sc["points"]:
        lat = [" / ".join(f"{p['systems'][s][n]['latency_s']['median']:.2f}" for s in systems) for n in lengths]
        ttft = " / ".join(f"{p['systems'][s][lengths[0]]['ttft_s']['median']:.2f}" for s in systems)
        up = [f"{p['speedup'][n]['vs_full']:.2f}× / {p['speedup'][n]['vs_prefix-cache']:.2f}×" for n in lengths]
        lines.append(f"| {p['template_tokens']} | {p['load_average_before'][0]:g} → {p['load_average_after'][0]:g} | "
                     + " | ".join(lat) + f" | {ttft} | " + " | ".join(up) + " |")
    return "\n".join(lines)


# --- the figure of the prompt shrinking ---------------------------------------------------------------

def _stage_tokens() -> tuple[list[tuple[float, int]], dict[str, float]]:
    """(τ, k) per stage of the demo schedule, and mean tokens per prompt part of the SQL example."""
    from promptintern.config import load_config
    from promptintern.models import load_tokenizer
    from promptintern.tasks import get_task

    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [])
    points = [(p.tau, p.k) for p in cfg.schedule.points()]
    task = get_task(str(ROOT / "examples" / "sql" / "task.yaml"))
    tok = load_tokenizer("tiny-random")  # the bundled model's own tokenizer, without its weights
    train = task.load_split("train")

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    t, fmt = task.template, task.format
    example = [n(fmt.example_format.format(query=i.query, answer=fmt.render_answer(i.answer))) for i in train]
    sizes = {"instruction": n(t.instruction), "documentation": n(t.documentation),
             "example": sum(example) / len(train),
             "query": sum(n(fmt.query_format.format(query=i.query)) for i in train) / len(train)}
    return points, sizes


def prompt_stages_svg() -> str:
    """Stacked bars, one per stage: the template at rate τ, k examples, the query — to scale."""
    with redirect_stdout(io.StringIO()):
        points, sizes = _stage_tokens()
    colors = {"instruction": "#5b8def", "documentation": "#9db9f5", "example": "#f2a65a", "query": "#4caf50"}
    full = sizes["instruction"] + sizes["documentation"] + points[0][1] * sizes["example"] + sizes["query"]
    width, left, bar_h, gap, top = 720, 150, 34, 22, 40
    scale = (width - left - 90) / full
    h = top + len(points) * (bar_h + gap) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" '
           f'font-size="13" role="img" aria-label="prompt tokens per training stage">',
           f'<text x="{left}" y="22" font-weight="bold">Prompt tokens per stage (examples/sql, '
           f'the demo schedule)</text>']
    for i, (tau, k) in enumerate(points):
        y = top + i * (bar_h + gap)
        parts = [("instruction", tau * sizes["instruction"]), ("documentation", tau * sizes["documentation"])]
        parts += [("example", sizes["example"])] * k + [("query", sizes["query"])]
        x = left
        for name, tokens in [p for p in parts if p[1] > 0]:
            w = tokens * scale
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colors[name]}" '
                       f'stroke="white"><title>{name}: {tokens:.0f} tokens</title></rect>')
            x += w
        total = sum(t for _, t in parts)
        label = "query alone" if tau == 0 and k == 0 else f"τ = {tau:g}, k = {k}"
        out.append(f'<text x="10" y="{y + bar_h / 2 + 5}">stage {i}: {label}</text>')
        out.append(f'<text x="{x + 6:.1f}" y="{y + bar_h / 2 + 5}">{total:.0f} tok</text>')
    y = h - 22
    for j, (name, color) in enumerate(colors.items()):
        out.append(f'<rect x="{left + j * 130}" y="{y - 11}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{left + j * 130 + 17}" y="{y}">{name}</text>')
    return "\n".join(out + ["</svg>"]) + "\n"
