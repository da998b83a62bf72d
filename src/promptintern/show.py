"""Human-readable views of prompts and stages (``show-prompt``, ``show-stages``)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .config import RunConfig
from .prompt import PARTS, chat_prompt_text, count_tokens, to_messages
from .schedule import StagePoint
from .stages import build_prompt, build_stages, stage_token_stats


def prompt_anatomy(task_name: str, index: int, k: int, data_dir: str | None, model: str, console: Console) -> dict:
    """Print the full prompt of test instance ``index`` with ``k`` retrieved examples, and its token table."""
    from .errors import ConfigError
    from .models import load_tokenizer
    from .retrieve import RetrieveConfig, Retriever
    from .tasks import get_task

    task = get_task(task_name)
    test = task.load_split("test", data_dir)
    if not 0 <= index < len(test):
        raise ConfigError(f"--index {index} is outside the test split (0..{len(test) - 1})")
    inst = test[index]
    examples = []
    if k > 0:
        train = task.load_split("train", data_dir)
        examples = Retriever.build(train, RetrieveConfig()).topk(inst.query, k, exclude_id=inst.id)
    prompt = build_prompt(task, inst.query, task.template, examples, k)
    tokenizer = load_tokenizer(model)
    text = chat_prompt_text(tokenizer, to_messages(prompt, task.format))
    console.print(Panel(text, title=f"{task.name} test[{index}] — full prompt, k={k}", expand=False))
    counts = count_tokens(tokenizer, prompt, task.format, inst.answer)
    table = Table("part", "tokens", "share", title=f"{task.name}: tokens per part ({model} tokenizer)")
    for part in (*PARTS, "overhead"):
        table.add_row(part, str(counts[part]), f"{counts[part] / counts['total']:.1%}")
    table.add_row("[b]prompt total[/b]", str(counts["total"]), "100.0%")
    table.add_row("answer", str(counts["answer"]), "")
    console.print(table)
    return counts


def require_config(config: str | None, overrides: list[str]) -> None:
    """``show-stages`` shows what a config trains; without a config or a ``--set task=...`` the
    defaults would quietly pick NL2Bash and then ask for its data, so say what is needed instead."""
    if config or any(item.split("=", 1)[0].strip() == "task" for item in overrides):
        return
    from .errors import ConfigError

    raise ConfigError("show-stages needs a run config, e.g. `promptintern show-stages configs/demo.yaml` "
                      "(or --set task=NAME_OR_SPEC to see the default schedule on your task)")


def stage_table(cfg: RunConfig, show_example: bool, console: Console) -> list[dict]:
    """Print τ, k, mean/p95 prompt tokens and share of the full prompt for each stage of ``cfg``."""
    from .models import load_tokenizer
    from .pipeline import prepare

    prep = prepare(cfg)
    tokenizer = load_tokenizer(cfg.model)
    full_k = max(cfg.schedule.k, prep.plan.serve_k)
    neighbours = {}
    if full_k > 0 and prep.retriever is not None:
        from .retrieve import retrieve_all

        neighbours = retrieve_all(prep.retriever, prep.train, full_k, same_pool=True)
    full = build_stages(prep.task, prep.train, [StagePoint(0, 1.0, full_k)], prep.templates.at, neighbours)[0]
    full_mean = stage_token_stats(full, tokenizer)["mean"]
    table = Table("stage", "τ", "k", "instances", "mean tokens", "p95 tokens", "share of full",
                  title=f"{prep.task.name} · {cfg.method} · {cfg.schedule.shape} schedule")
    rows = []
    for st in prep.stages:
        s = stage_token_stats(st, tokenizer, full_mean)
        rows.append({"stage": st.index, "tau": st.tau, "k": st.k, "n": len(st.records), **s})
        table.add_row(str(st.index), f"{st.tau:.2f}", str(st.k), str(len(st.records)),
                      f"{s['mean']:.1f}", f"{s['p95']:.0f}", f"{s['share']:.1%}")
    table.add_row("full", "1.00", str(full_k), str(len(full.records)), f"{full_mean:.1f}", "", "100.0%")
    console.print(table)
    if show_example:
        for st in prep.stages:
            if st.records:
                text = chat_prompt_text(tokenizer, st.records[0].messages)
                console.print(Panel(text, title=f"stage {st.index}: τ={st.tau:.2f}, k={st.k}", expand=False))
    return rows
