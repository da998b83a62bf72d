"""Why this module stays whole at over 450 lines: it is the one place a reader follows a run from
config to report; each step's work lives in its own module (stages, training, inference, evaluate,
report, run guard, teacher data and answers), and only the order and the resume rules are here.

The end-to-end run: prepare → train (staged) → infer → evaluate → report.

Run directory (everything written atomically; each step is skipped on ``--resume`` when its
output exists):

    run_dir/run.json            config fingerprint (guards against mixing configs)
    run_dir/config.yaml         the resolved config
    run_dir/retriever/          persisted retrieval index
    run_dir/stages/stage-i.jsonl  stage datasets; fingerprints in run_dir/stages/fingerprints.json
    run_dir/train/...           checkpoints (see promptintern.training.loop); run_dir/adapter/ the result
    run_dir/predictions/<name>.jsonl  predictions of each served system
    run_dir/metrics.json, report.md, plots/*.png
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import teacher_data
from .config import RunConfig
from .errors import ConfigError, DataError, RunDirError
from .identity import describe_differences, differences, identity_view
from .io import clear_dir, read_json, write_json, write_text
from .methods import MethodPlan, plan
from .prompt import EMPTY_TEMPLATE, Template, to_messages
from .retrieve import Retriever
from .run_guard import check_same_inputs, input_digests, locked_new_or_existing
from .schedule import StagePoint
from .stages import Stage, build_prompt, build_stages, load_stages, save_stages, validation_builder
from .tasks import get_task
from .tasks.base import Instance, Task
from .teacher_answers import add_teacher_records, load_teacher_rows, mix, teacher_input, teacher_neighbours


@dataclass
class Templates:
    """The task template at each rate τ, compressed once per rate (and cached on disk)."""

    task: Task
    cfg: RunConfig
    _memo: dict[float, Template] = field(default_factory=dict)
    _compressor: Any = None

    def at(self, tau: float) -> Template:
        tau = round(float(tau), 6)
        if tau <= 0:
            return EMPTY_TEMPLATE
        if tau >= 1:
            return self.task.template
        if tau not in self._memo:
            from .compress import build_compressor, compress_template
            from .models import load_model

            if self._compressor is None:
                ccfg = self.cfg.compress
                if not ccfg.force_keep and self.task.force_keep:
                    ccfg = type(ccfg)(**{**ccfg.__dict__, "force_keep": list(self.task.force_keep)})
                # The whole training split, not a run's sample, so that export compresses alike.
                answers = [inst.answer for inst in self.task.load_split("train", self.cfg.data_dir)]
                self._compressor = build_compressor(ccfg, load_model, answers=answers)
            self._memo[tau] = compress_template(self.task.template, tau, self._compressor)
        return self._memo[tau]


@dataclass
class Prepared:
    """Everything a run needs before the model: data, plan, retriever, templates, stages."""

    cfg: RunConfig
    task: Task
    train: list[Instance]
    test: list[Instance]
    plan: MethodPlan
    retriever: Retriever | None
    templates: Templates
    stages: list[Stage]
    validation: list[Instance] = field(default_factory=list)
    teacher: list[Instance] = field(default_factory=list)  # data.teacher_answers rows (never in the pool)


def open_run_dir(cfg: RunConfig, resume: bool, force: bool, inputs: dict[str, Any] | None = None) -> Path:
    """Create or reopen the run directory, refusing to mix two configs in one directory.

    The caller holds :func:`promptintern.io.locked_dir` on it (see :func:`train`, :func:`run`).

    Fields marked ``volatile`` (logging, checkpoint cadence, threads, output_dir) may change on
    ``--resume``; any other difference is refused, naming the fields. ``inputs`` (see
    :func:`input_digests`) are the run's data: a split changed since the run was made is refused
    on ``--resume``, naming its file (a run made before they were recorded is not checked).
    """
    run_dir = Path(cfg.output_dir)
    marker = run_dir / "run.json"
    if run_dir.exists() and any(run_dir.iterdir()):
        if force:
            clear_dir(run_dir)  # not the directory itself: the caller's lock is held on it
        elif not marker.is_file():
            raise RunDirError(f"{run_dir} exists and is not a promptintern run; use --force to overwrite it")
        else:
            check_same_run(run_dir, cfg)
            if inputs is not None:
                check_same_inputs(run_dir, inputs)
            if not resume:
                raise RunDirError(f"{run_dir} already holds this run; use --resume to continue or --force to restart")
    run_dir.mkdir(parents=True, exist_ok=True)
    marker_data = {"fingerprint": cfg.fingerprint(), "identity": cfg.identity()}
    write_json(marker, marker_data if inputs is None else {**marker_data, "inputs": inputs})
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    return run_dir


def check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse a config whose identity differs from the one that made ``run_dir``, naming the fields
    (nothing to refuse where ``run_dir`` holds no run yet)."""
    if not (run_dir / "run.json").is_file():
        return
    marker = read_json(run_dir / "run.json")
    if marker.get("fingerprint") == cfg.fingerprint():
        return
    # The saved config read under today's rules first: a field marked volatile (or added, at its
    # default) since the run was made is then no difference. run.json's identity where it cannot be read.
    saved = marker.get("identity")
    if (run_dir / "config.yaml").is_file():
        from .config import load_config

        with contextlib.suppress(ConfigError):
            saved = load_config(str(run_dir / "config.yaml")).identity()
    if saved is None:
        raise RunDirError(f"{run_dir} was created by a different config; use --force to overwrite it")
    if differences(saved, cfg.identity()):
        raise RunDirError(f"{run_dir} was created with a different {describe_differences(saved, cfg.identity())}; "
                          "set them back to resume it, or choose another output_dir")


def load_data(cfg: RunConfig) -> tuple[Task, list[Instance], list[Instance]]:
    """The task and its (possibly subsampled) training and test instances."""
    task = get_task(cfg.task, **cfg.task_options)
    train = task.load_split("train", cfg.data_dir)
    test = task.load_split("test", cfg.data_dir)
    if not train:
        raise DataError(f"task {task.name}: the training split is empty")
    if not test:
        raise DataError(f"task {task.name}: the test split is empty")
    if cfg.data.train_size is not None and cfg.data.train_size < len(train):
        train = random.Random(cfg.data.seed).sample(train, cfg.data.train_size)
    if cfg.data.test_size is not None:
        test = test[: cfg.data.test_size]
    return task, train, test


def build_retriever(cfg: RunConfig, train: Sequence[Instance], run_dir: Path | None) -> Retriever:
    """Load the persisted index when it matches the pool, else build and persist it."""
    index_dir = run_dir / "retriever" if run_dir else None
    if index_dir is not None and index_dir.exists():
        loaded = Retriever.load(index_dir, list(train))
        if loaded is not None:
            return loaded
    retriever = Retriever.build(list(train), cfg.retrieve)
    if index_dir is not None:
        retriever.save(index_dir)
    return retriever


@dataclass
class Checked:
    """Inputs validated before anything is written: the task, its data and the method plan."""

    task: Task
    train: list[Instance]
    test: list[Instance]
    plan: MethodPlan
    validation: list[Instance] = field(default_factory=list)
    teacher: list[Instance] = field(default_factory=list)


def load_validation(cfg: RunConfig, task: Task, p: MethodPlan) -> list[Instance]:
    """The validation instances stages are scored on: a seeded sample of ``train.validation_size``
    (none when nothing trains, validation is off, or the task has no validation split)."""
    if not (p.trains and cfg.train.validates() and task.has_split("validation")):
        if p.trains and (cfg.train.select_best or cfg.train.early_stopping_patience is not None):
            what = "select_best" if cfg.train.select_best else "early_stopping_patience"
            raise ConfigError(f"train.{what}: task {task.name} has no validation split "
                              "(declare one, e.g. data: {validation: validation.jsonl} in the task file)")
        return []
    items = task.load_split("validation", cfg.data_dir)
    n = cfg.train.validation_size
    return random.Random(cfg.data.seed).sample(items, n) if n is not None and n < len(items) else items


def check(cfg: RunConfig) -> Checked:
    """Validate everything a run depends on (data, schedule, pool size, model) without writing."""
    from .models import load_tokenizer

    task, train, test = load_data(cfg)
    cfg.schedule.validate()
    p = plan(cfg.method, cfg.schedule, cfg.compressed_tau)
    k_max = _k_max(cfg, p)
    if k_max > len(train) - 1:
        raise ConfigError(f"k={k_max} examples requested but the training pool has only {len(train)} instances")
    load_tokenizer(cfg.model)  # unknown names and unreachable hub ids fail here, before any write
    if p.trains:
        from .training.hf import check_passthrough

        check_passthrough(cfg.train, cfg.lora)  # train.extra / lora.extra, checked by transformers and peft
        if frozen := cfg.train.frozen_teacher():
            from .training.teacher import check_teacher_base

            check_teacher_base(frozen, cfg.model)
    teacher = load_teacher_rows(cfg.data.teacher_answers, task, train, cfg.data_dir)  # refused before any write
    teacher = mix(teacher, len(train), cfg.data.teacher_rows_per_pair, cfg.data.seed)
    return Checked(task, train, test, p, load_validation(cfg, task, p), teacher)


def prepare(cfg: RunConfig, run_dir: Path | None = None, checked: Checked | None = None) -> Prepared:
    """Retrieve neighbours and build (or reload) the stage datasets of a checked config."""
    c = checked or check(cfg)
    retriever = build_retriever(cfg, c.train, run_dir) if _k_max(cfg, c.plan) > 0 else None
    templates = Templates(c.task, cfg)
    stages = _stages(cfg, c.task, c.train, c.plan, retriever, templates, run_dir, c.teacher)
    return Prepared(cfg, c.task, c.train, c.test, c.plan, retriever, templates, stages, c.validation, c.teacher)


def _teacher_point(cfg: RunConfig) -> StagePoint | None:
    """The prompt a distillation teacher sees for the gold pairs (stage 0: template at τ0, K examples);
    None for plain CE."""
    return StagePoint(0, cfg.schedule.tau0, cfg.schedule.k) if cfg.train.loss != "ce" else None


def _teacher_rows_point(cfg: RunConfig) -> StagePoint | None:
    """The teacher's prompt for the rows of ``data.teacher_answers``: the gold pairs' one, or stage 0
    when only those rows are learned by KL."""
    if cfg.train.teacher_rows_loss == "kl":
        return StagePoint(0, cfg.schedule.tau0, cfg.schedule.k)
    return _teacher_point(cfg)


def _k_max(cfg: RunConfig, p: MethodPlan) -> int:
    """The most examples any prompt of the run needs: training stages, serving and the teacher."""
    return max([pt.k for pt in p.points] + [p.serve_k] + _teacher_k(cfg))


def _teacher_k(cfg: RunConfig) -> list[int]:
    return [p.k for p in (_teacher_point(cfg), _teacher_rows_point(cfg) if cfg.data.teacher_answers else None)
            if p is not None]


def _stages(cfg, task, train, p, retriever, templates, run_dir, teacher=()) -> list[Stage]:
    stage_dir = run_dir / "stages" if run_dir else None
    if stage_dir is not None and (stage_dir / "fingerprints.json").is_file():
        loaded = load_stages(stage_dir, len(p.points), read_json(stage_dir / "fingerprints.json"))
        if loaded is not None:
            return loaded
    k_train = max([pt.k for pt in p.points] + _teacher_k(cfg), default=0)
    neighbours = {}
    if retriever is not None and k_train > 0:
        from .retrieve import retrieve_all

        neighbours = retrieve_all(retriever, train, k_train, same_pool=True)
    stages = build_stages(task, train, p.points, templates.at, neighbours, cfg.data.stage_mode, cfg.data.seed,
                          teacher_point=_teacher_point(cfg))
    stages = add_teacher_records(stages, task, teacher, cfg.data.teacher_stages, templates.at,
                                 teacher_neighbours(retriever, teacher, k_train), _teacher_rows_point(cfg))
    if stage_dir is not None:
        prints = save_stages(stages, stage_dir)
        write_json(stage_dir / "fingerprints.json", prints)  # written last: marks the set complete
    return stages


def serving_messages(prep: Prepared, instances: Sequence[Instance], tau: float, k: int) -> list[tuple[str, list]]:
    """(id, chat messages) for each instance, as the method is served: template at τ, top-k examples."""
    template = prep.templates.at(tau)
    out = []
    for inst in instances:
        # No exclude_id: a test query's id may equal a training instance's (custom tasks, `infer`'s 0, 1, …)
        # without being it; a query matching a training request is excluded by the retriever anyway.
        examples = prep.retriever.topk(inst.query, k) if k > 0 and prep.retriever else []
        prompt = build_prompt(prep.task, inst.query, template, examples, k)
        out.append((inst.id, to_messages(prompt, prep.task.format)))
    return out


# ---------------------------------------------------------------- train / infer / run


def train(cfg: RunConfig, resume: bool = False, force: bool = False) -> Path | None:
    """Prepare the stages and train the method's adapter; returns its directory (None for ``base``)."""
    with opened(cfg, resume, force) as (prep, run_dir, _):
        return _train(prep, run_dir, resume)


@contextlib.contextmanager
def opened(cfg: RunConfig, resume: bool, force: bool) -> Iterator[tuple[Prepared, Path, bool]]:
    """(prepared run, run directory, is the main process) for the block's life.

    Under ``torchrun`` or ``accelerate launch`` every process runs the command. Only the main
    process locks the directory (for the whole block), checks the config, opens the directory
    and prepares the stages; the others wait for it and then read the files it wrote. No two
    processes write one file. The lock comes first, so a second run is refused at once, not
    after the data and tokenizer checks.
    """
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: --resume continues the run, --force deletes it")
    state = process_state(cfg)
    if state is not None and not state.is_main_process:
        state.wait_for_everyone()  # the main process has prepared the directory
        run_dir = Path(cfg.output_dir)
        if cfg.teacher_data.enabled:  # labelled by the main process: read back
            cfg = teacher_data.for_run(cfg, run_dir, *load_data(cfg)[:2], lambda m: None)
        yield prepare(cfg, run_dir, check(cfg)), run_dir, False
        return
    with locked_new_or_existing(Path(cfg.output_dir)):  # held to the end: a second run is refused
        checked = check(cfg)
        splits = {"train": checked.train, "test": checked.test, "validation": checked.validation}
        inputs = {**input_digests(checked.task, splits), **teacher_input(cfg.data.teacher_answers)}
        run_dir = open_run_dir(cfg, resume, force, inputs)
        if cfg.teacher_data.enabled:  # its teacher answers new queries now (once): the run's teacher rows
            cfg = teacher_data.for_run(cfg, run_dir, checked.task, checked.train, lambda m: print(m, file=sys.stderr))
            checked = check(cfg)
        prep = prepare(cfg, run_dir, checked)
        if state is not None:
            state.wait_for_everyone()
        yield prep, run_dir, True


def process_state(cfg: RunConfig) -> Any:
    """accelerate's process state when launched as several processes (torchrun, accelerate
    launch: ``WORLD_SIZE`` > 1), which joins the process group; None in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # the same choice as train_stages: accelerate treats a CUDA-less machine as multi-CPU (gloo) only when asked
    return PartialState(cpu=cfg.train.use_cpu or not torch.cuda.is_available())


def _train(prep: Prepared, run_dir: Path, resume: bool) -> Path | None:
    from .training.loop import train_stages

    if not prep.plan.trains:
        return None
    from .training.checkpoints import adapter_problem

    final = run_dir / "adapter"
    if final.is_dir() and adapter_problem(final) is None:
        return final
    return train_stages(
        prep.stages, model_name=prep.cfg.model, lora=prep.cfg.lora, args=prep.cfg.train,
        run_dir=run_dir, resume=resume,
        validation=validation_builder(prep.task, prep.validation, prep.stages, prep.retriever, prep.templates.at),
    )


def _serve(name: str, model: Any, tokenizer: Any, items: list, run_dir: Path, args: Any) -> dict[str, Any]:
    """Generate predictions for ``items`` into ``predictions/<name>.jsonl`` (resumable), as ``args`` say."""
    from .inference import run_inference

    return run_inference(model, tokenizer, items, run_dir / "predictions" / f"{name}.jsonl", args, resume=True)


def systems(prep: Prepared) -> dict[str, tuple[bool, float, int]]:
    """Served systems: name → (uses the adapter, τ, k). The method plus configured base references."""
    cfg, p = prep.cfg, prep.plan
    out = {cfg.method: (p.trains, p.serve_tau, p.serve_k)}
    refs = {"base-full": (False, cfg.schedule.tau0, cfg.schedule.k), "base-query": (False, 0.0, 0)}
    for name in cfg.baselines:
        out.setdefault(name, refs[name])
    return out


def run(cfg: RunConfig, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """The whole job; returns the metrics dict also written to ``run_dir/metrics.json``."""
    with opened(cfg, resume, force) as (prep, run_dir, is_main):
        return _run(prep, run_dir, resume, is_main)


def _run(prep: Prepared, run_dir: Path, resume: bool, is_main: bool) -> dict[str, Any]:
    """Train, then (main process only) serve, evaluate and report; ``{}`` on the other processes."""
    import time

    from .answer_length import resolve_infer_args
    from .evaluate import score
    from .inference import load_for_inference, read_predictions
    from .models import load_model
    from .report import write_report

    cfg = prep.cfg
    _check_sandbox(prep.task.metric, cfg.eval.sandbox)
    t0 = time.perf_counter()
    adapter = _train(prep, run_dir, resume)
    if not is_main:  # serving and scoring run once, on the main process
        return {}
    train_info = _train_info(run_dir, time.perf_counter() - t0)
    results: dict[str, Any] = {}
    base = None
    infer_args = resolve_infer_args(cfg.infer, cfg.model, prep.task, prep.train, prep.test)
    for name, (uses_adapter, tau, k) in systems(prep).items():
        if uses_adapter:
            model, tok = load_for_inference(cfg.model, adapter)
        else:
            base = base or load_model(cfg.model)
            model, tok = base
        items = serving_messages(prep, prep.test, tau, k)
        stats = _serve(name, model, tok, items, run_dir, infer_args)
        preds = read_predictions(run_dir / "predictions" / f"{name}.jsonl")
        scored = score(prep.task.metric, preds, prep.test, bootstrap=cfg.eval.bootstrap,
                       workers=cfg.eval.workers, timeout_s=cfg.eval.timeout_s, sandbox=cfg.eval.sandbox)
        results[name] = {"tau": tau, "k": k, "trained": uses_adapter, **stats, **scored}
    metrics = {"task": prep.task.name, "metric": prep.task.metric, "model": cfg.model, "method": cfg.method,
               "schedule": [{"stage": s.index, "tau": s.tau, "k": s.k, "n": len(s.records)} for s in prep.stages],
               "n_train": len(prep.train), **({"n_teacher_answers": len(prep.teacher)} if prep.teacher else {}),
               "n_test": len(prep.test), "train": train_info, "systems": results}
    write_json(run_dir / "metrics.json", metrics)
    write_report(metrics, run_dir)
    return metrics


def _check_sandbox(metric: str, level: str) -> None:
    """Refuse before training, not after it, when model-written code could not be scored safely."""
    if metric == "pass@1":
        from .evaluate.sandbox import sandbox_capabilities

        sandbox_capabilities(level=level)


def _train_info(run_dir: Path, wall: float) -> dict[str, Any]:
    hist = run_dir / "train" / "history.json"
    info: dict[str, Any] = {"wall_s_this_session": wall}
    if hist.is_file():
        info["history"] = read_json(hist)
    return info


def infer_file(run_dir: Path, input_path: Path, output: Path, *, batch_size: int | None = None,
               max_new_tokens: int | None = None, prefix_cache: bool | None = None, resume: bool = True,
               force: bool = False, temperature: float | None = None) -> dict[str, Any]:
    """Answer the queries of ``input_path`` with the run's method, served with its own prompt.

    Arguments left at None take the run's ``infer`` settings. An existing ``output`` is refused
    unless ``force`` (it may hold another run's answers); an interrupted call resumes only with
    the same run, adapter, settings and input (see :func:`promptintern.inference.run_inference`).
    """

    from .answer_length import resolve_infer_args
    from .checksums import file_sha256
    from .config import load_config
    from .inference import load_for_inference, run_inference
    from .io import read_jsonl
    from .models import load_model

    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} is not a promptintern run directory (no config.yaml)")
    if output.is_dir():
        raise RunDirError(f"--output {output} is a directory; name a file")
    if output.exists() and not force:
        raise RunDirError(f"{output} exists; pass --force to replace it, or choose another --output")
    cfg = load_config(str(run_dir / "config.yaml"))
    rows = read_jsonl(input_path, required=("query",))
    if not rows:
        raise DataError(f"{input_path}: no queries")
    queries = [Instance(id=str(r.get("id", i)), query=str(r["query"]), answer="") for i, r in enumerate(rows)]
    prep = prepare(cfg, run_dir)
    adapter = run_dir / "adapter"
    if prep.plan.trains and not adapter.is_dir():
        raise RunDirError(f"{run_dir} has no trained adapter yet; run 'promptintern train' first")
    model, tok = load_for_inference(cfg.model, adapter) if prep.plan.trains else load_model(cfg.model)
    args = replace(cfg.infer, prefix_cache=cfg.infer.prefix_cache if prefix_cache is None else prefix_cache,
                   batch_size=batch_size or cfg.infer.batch_size,
                   max_new_tokens=max_new_tokens or cfg.infer.max_new_tokens,
                   temperature=cfg.infer.temperature if temperature is None else temperature)
    args = resolve_infer_args(args, cfg.model, prep.task, prep.train)  # 'auto' from the run's training answers
    items = serving_messages(prep, queries, prep.plan.serve_tau, prep.plan.serve_k)
    settings = {"run": str(run_dir.resolve()), "config": cfg.fingerprint(), "infer": identity_view(args),
                "adapter": file_sha256(adapter / "adapter_model.safetensors") if prep.plan.trains else None,
                "input": file_sha256(input_path)}
    return run_inference(model, tok, items, output, args, resume=resume, settings=settings, reuse_output=False)
