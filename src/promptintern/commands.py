"""Command handlers: turn parsed arguments into library calls and print the results."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import DataError


def _console() -> Console:
    return Console(highlight=False)


def _threads(args: argparse.Namespace) -> None:
    from .models import set_cpu_threads

    set_cpu_threads(args.threads)


def _config(args: argparse.Namespace):
    from .config import load_config

    sets = list(args.set)
    if getattr(args, "unsafe_sandbox", False):
        sets.append("eval.sandbox=process")
    return load_config(args.config, sets)


def cmd_config(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .configtools import describe

    if args.config or args.set:
        _config(args)
        _console().print(f"[green]valid[/green]: {args.config or 'defaults'}")
        return 0
    table = Table("key", "default", "help", title="promptintern run config")
    for key, default, text in describe(RunConfig):
        table.add_row(key, default, text)
    _console().print(table)
    return 0


def cmd_show_prompt(args: argparse.Namespace) -> int:
    from .show import prompt_anatomy

    _threads(args)
    prompt_anatomy(args.task, args.index, args.k, args.data_dir, args.model, _console())
    return 0


def cmd_show_stages(args: argparse.Namespace) -> int:
    from .show import require_config, stage_table

    require_config(args.config, args.set)
    _threads(args)
    stage_table(_config(args), args.show_example, _console())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train

    _threads(args)
    adapter = train(_config(args), resume=args.resume, force=args.force)
    _console().print(f"adapter: {adapter}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run
    from .report import print_summary

    _threads(args)
    result = run(_config(args), resume=args.resume, force=args.force)
    if result:  # empty on the non-main processes of a multi-process launch
        print_summary(result, _console())
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from .pipeline import infer_file

    _threads(args)
    stats = infer_file(
        Path(args.run), Path(args.input), Path(args.output), batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, prefix_cache=args.prefix_cache or None, resume=not args.no_resume,
        force=args.force,
    )
    _console().print(
        f"{stats['n']} predictions → {args.output}  ({stats['throughput_qps']:.2f} queries/s, "
        f"{stats['input_tokens_mean']:.0f} input tokens/query)"
    )
    return 0


def cmd_queries(args: argparse.Namespace) -> int:
    from .new_queries import NewQueryArgs, collect, held_out_splits, write_queries
    from .pipeline import load_data

    spec = NewQueryArgs(queries=args.logs, from_train=args.from_train, generate=args.generate,
                        generate_n=args.n, generate_model=args.generate_model, seed=args.seed)
    spec.validate()
    if not spec.enabled:
        raise DataError("no source of new queries: give --logs, --from-train and/or --generate with --n")
    cfg = _config(args)
    task, labelled, test = load_data(cfg)
    found = collect(spec, task, task.load_split("train", cfg.data_dir), labelled, held_out_splits(task, cfg.data_dir),
                    cfg.data_dir)
    target = write_queries(found, args.out, force=args.force)
    for source, c in found.counts.items():
        print(f"{source}: {c['found']} found, {c['duplicates']} duplicates, "
                         f"{c['leaking']} equal to held-out queries (dropped), {c['kept']} kept")
    print(f"{len(found.queries)} new queries → {target}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from .new_queries import label_queries

    _threads(args)
    counts = label_queries(Path(args.teacher), Path(args.queries), Path(args.out), check=args.check,
                           force=args.force, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           samples=args.samples, temperature=args.temperature)
    rejected = ", ".join(f"{v} {k}" for k, v in counts.items() if k not in ("answered", "kept") and v)
    print(f"teacher answered {counts['answered']}, kept {counts['kept']}"
          + (f" (rejected: {rejected})" if rejected else "") + f" → {args.out}")
    return 0


def _eval_task(args: argparse.Namespace) -> Any:
    """The task to score against, with its ``--task-option KEY=VALUE`` options (e.g. geoquery's split)."""
    from .configtools import apply_overrides
    from .tasks import get_task

    return get_task(args.task, **apply_overrides({}, getattr(args, "task_option", [])))


def cmd_eval(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .evaluate import evaluate_file, format_table
    from .report import metrics_path, publish_new

    preds = Path(args.predictions)
    target = metrics_path(preds, args.out)
    if target.exists() and not args.force:  # refused before scoring; publish_new re-checks atomically
        raise UserError(f"{target} exists; pass --out for another file or --force to replace it")
    with tempfile.TemporaryDirectory(prefix="promptintern-eval-") as scratch:  # nothing lands on a failure
        metrics = evaluate_file(_eval_task(args), preds, args.data_dir, scratch,
                                sandbox="process" if args.unsafe_sandbox else "bwrap")
    publish_new(metrics, target, replace=args.force)
    _console().print(format_table(metrics))
    _console().print(f"metrics → {target}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .exporter import export

    if args.format == "gguf":
        from .gguf_export import export_gguf
        from .threads import resolve_threads

        gguf = export_gguf(Path(args.run), Path(args.out), quant=args.quant, force=args.force, threads=resolve_threads())
        _console().print(f"exported GGUF ({args.quant}) → {gguf}  (Ollama: {gguf.parent / 'Modelfile'})")
        return 0
    out = export(Path(args.run), Path(args.out), merge=args.merge, force=args.force)
    _console().print(f"exported {'merged model' if args.merge else 'adapter'} → {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeArgs, serve
    from .threads import env_threads

    serve(Path(args.path), ServeArgs(host=args.host, port=args.port, device=args.device, engine=args.engine,
                                     api_key=args.api_key, max_tokens=args.max_tokens, timeout_s=args.timeout,
                                     threads=env_threads(), allow_unauthenticated=args.allow_unauthenticated),
          announce=lambda line: print(line, flush=True))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .tasks.download import download

    dest = args.dest or os.environ.get("PROMPTINTERN_DATA_DIR") or "data"
    if args.data_command != "download":
        raise DataError(f"unknown data action {args.data_command!r}")
    for path in download(Path(dest)):
        _console().print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare.core import PASSES, compare
    from .errors import ConfigError

    _threads(args)
    passes = [x.strip() for x in args.passes.split(",") if x.strip()]
    bad = [x for x in passes if x not in PASSES]
    if bad:
        raise ConfigError(f"--passes: unknown pass {bad[0]!r}; choose from {', '.join(PASSES)}")
    sets = list(args.set) + (["eval.sandbox=process"] if args.unsafe_sandbox else [])
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    compare(args.config, methods=methods, seeds=args.seeds, out=Path(args.out) if args.out else None,
            overrides=sets, passes=passes, log=lambda line: print(line, flush=True))
    return 0
