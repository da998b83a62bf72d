"""The plan of a comparison: which methods, which seeds, and the run config of every (method, seed).

A compare config is either a plain run config (every method is derived from it, the compare
settings take their defaults) or a file with two sections, ``run:`` (a run config) and
``compare:`` (:class:`CompareArgs`). ``--set compare.seeds=2`` changes a compare setting, any
other ``--set`` the run config.

Fairness, stated in the results rather than assumed:

- every fine-tuned method trains on the same training pairs (the run config's sample, whose
  ``data.seed`` stays fixed), as much as ``compare.budget`` says (:mod:`.budget`): to its
  validation plateau (``converge``, every stage on all pairs), or for the same optimizer steps
  or training tokens (``steps`` / ``tokens``: a method with N stages splits them between its
  stages, each stage its own slice of the pairs, except the ``-revisit`` variant);
- a seed changes ``train.seed``: LoRA initialisation, dropout and data order;
- the LR schedule policy is a choice (:data:`LR_POLICIES`) recorded with the results.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..configtools import apply_overrides, from_dict, load_yaml
from ..errors import ConfigError
from ..io import read_json
from ..methods import plan as method_plan
from ..teacher_data import TeacherDataArgs
from .budget import BUDGETS, converge_train, stage_lengths, steps_per_epoch, token_matched_steps
from .cost import CostArgs
from .speed import ScalingArgs, SpeedArgs
from .teacher_data import answers_path

# The LR schedule across the stages of a multi-stage method. The trainer builds one HF Trainer
# per stage, so its schedule restarts in every stage; it has no switch for one schedule across
# stages. "constant" makes the question moot: with a constant LR and no warm-up, restarting per
# stage and one schedule across stages are the same sequence of learning rates.
LR_POLICIES = {
    "restart": "the config's lr_scheduler and warm-up restart in every stage (the trainer's behaviour): a "
               "3-stage method goes through three warm-up/decay cycles where a 1-stage method goes through one",
    "one": "one schedule across stages (train.lr_span: run): the config's lr_scheduler and warm-up span all of "
           "a method's steps, each stage entering the schedule where the previous one stopped, so every method "
           "goes through one warm-up/decay cycle over the same number of steps",
    "constant": "constant LR, no warm-up, for every method: per-stage restarts and one schedule across stages "
                "give the same learning rate at every step, so every method is optimised alike",
}
STEP_FIELDS = frozenset({"epochs_per_stage", "max_steps_per_stage", "per_device_batch_size",
                         "gradient_accumulation_steps"})
CONFIG_KEYS = ("run", "compare")


@dataclass(frozen=True)
class CompareMethod:
    """How one compared method maps onto a pipeline run."""

    pipeline: str
    about: str
    shape: str | None = None
    revisit: bool = False
    prefix_cache_of: str | None = None
    loss: str | None = None
    teacher: bool = False  # also trains on the new queries full-prompt FT of the same seed answered


METHODS: dict[str, CompareMethod] = {
    "full-prompt": CompareMethod("full-prompt", "fine-tuned and served with the full prompt (τ0, K)"),
    "full-prompt+cache": CompareMethod(
        "full-prompt", "full-prompt's adapter served with the template's KV prefix cache (same answers: same "
        "weights, same prompt, greedy); accuracy is full-prompt's", prefix_cache_of="full-prompt"),
    "query-only": CompareMethod("query-only", "fine-tuned and served with the query alone"),
    "compressed": CompareMethod("compressed", "fine-tuned and served with the compressed template (τc, K)"),
    "promptintern": CompareMethod("promptintern", "progressive internalization, linear schedule, served with the "
                                  "query alone", shape="linear"),
    "base-full": CompareMethod("base", "the base model, no fine-tuning, full prompt"),
    "template-only": CompareMethod("template-only", "τ follows the schedule, k stays K; served (0, K)"),
    "examples-only": CompareMethod("examples-only", "k follows the schedule, τ stays τ0; served (τ0, 0)"),
    "promptintern-exponential": CompareMethod("promptintern", "progressive, exponential schedule",
                                              shape="exponential"),
    "promptintern-inverse_exponential": CompareMethod("promptintern", "progressive, inverse-exponential schedule",
                                                      shape="inverse_exponential"),
    "promptintern-revisit": CompareMethod("promptintern", "linear schedule, every stage sees all pairs "
                                          "(N× the steps)", shape="linear", revisit=True),
    "promptintern+kl": CompareMethod("promptintern", "linear schedule, ce+kl loss, self-teacher on the stage-0 "
                                     "prompt", shape="linear", loss="ce+kl"),
    "promptintern+teacher": CompareMethod(
        "promptintern", "linear schedule from full-prompt FT's stage 0; its query-alone stage also learns the new "
        "queries full-prompt FT of the same seed answered (compare.teacher_data; train.teacher_rows_loss)",
        shape="linear", teacher=True),
    "query-only+teacher": CompareMethod(
        "query-only", "one query-alone stage on the labelled pairs and the same teacher-answered queries: no "
        "progression", teacher=True),
}
DEFAULT_METHODS = ("full-prompt", "full-prompt+cache", "query-only", "compressed", "promptintern")
REFERENCES = ("full-prompt", "query-only")  # the differences every report gives


@dataclass
class CompareArgs:
    """The comparison's own settings (the ``compare:`` section of a compare config)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": f"Methods to compare; choose from {', '.join(METHODS)}."})
    seeds: int = field(default=3, metadata={"help": "Training seeds 0..N-1 per method (train.seed: LoRA init, dropout, data order)."})
    budget: str = field(default="converge", metadata={"help": "How much each method trains: " + "; ".join(f"'{k}': {v}" for k, v in BUDGETS.items()) + ".", "choices": tuple(BUDGETS)})
    patience: int = field(default=3, metadata={"help": "converge: validation scorings without improvement that end a stage."})
    max_epochs: float = field(default=10.0, metadata={"help": "converge: cap on the passes over all pairs per stage."})
    stage_max_epochs: float | None = field(default=None, metadata={"help": "converge: cap of a staged method's earlier stages (null = their own plateau, capped at max_epochs)."})
    eval_steps: int | None = field(default=None, metadata={"help": "converge: optimizer steps between validation scorings (and checkpoints); null = one scoring per pass over the pairs."})
    validation_size: int = field(default=16, metadata={"help": "converge: the fixed validation sample (seeded, the task's validation split) every scoring runs, through the shared prefix as training does."})
    reuse_stage0: bool = field(default=True, metadata={"help": "converge: a staged method whose first stage is full-prompt FT's training (same prompt, pairs, seed and settings) starts its next stage from full-prompt FT's best adapter of the same seed instead of training stage 0 again; its cost is still charged to the staged method. Likewise any leading stages (never the last) another staged method of the same seed trained the same way (promptintern+teacher's stages before its query-alone one are promptintern's)."})
    total_steps: int | None = field(default=None, metadata={"help": "steps / tokens: optimizer steps of every fine-tuned method (tokens: of full-prompt FT, whose tokens every method gets); null = ceil(train pairs / batch) × epochs."})
    epochs: float = field(default=1.0, metadata={"help": "steps / tokens: passes over the training pairs when total_steps is derived."})
    lr_policy: str = field(default="restart", metadata={"help": "; ".join(f"'{k}': {v}" for k, v in LR_POLICIES.items()), "choices": tuple(LR_POLICIES)})
    tolerance: float = field(default=1.0, metadata={"help": "Accuracy points a method may lose against full-prompt FT and still count as 'as accurate' (non-inferiority margin of the verdict)."})
    resamples: int = field(default=10000, metadata={"help": "Bootstrap resamples (over test items and seeds) of every difference."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap resampling."})
    speed: SpeedArgs = field(default_factory=SpeedArgs, metadata={"help": "Speed pass on the trained, merged models."})
    scaling: ScalingArgs = field(default_factory=ScalingArgs, metadata={"help": "Speed vs recurring-prompt length (base model, no training)."})
    cost: CostArgs = field(default_factory=CostArgs, metadata={"help": "Price profiles and training-cost figures."})
    teacher_data: TeacherDataArgs = field(default_factory=TeacherDataArgs, metadata={"help": "New queries for the '+teacher' methods, answered by full-prompt FT of the same seed."})

    def validate(self) -> None:
        for name in self.methods:
            if name not in METHODS:
                near = difflib.get_close_matches(name, list(METHODS), n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; choose from {', '.join(METHODS)}"
                raise ConfigError(f"compare.methods: unknown method {name!r}{hint}")
        if not self.methods:
            raise ConfigError("compare.methods: no method to compare")
        if self.seeds < 1:
            raise ConfigError(f"compare.seeds must be >= 1, got {self.seeds}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ConfigError(f"compare.total_steps must be >= 1 or null, got {self.total_steps}")
        if self.epochs <= 0:
            raise ConfigError(f"compare.epochs must be > 0, got {self.epochs}")
        if self.budget not in BUDGETS:
            raise ConfigError(f"compare.budget: {self.budget!r} is not one of {', '.join(BUDGETS)}")
        if self.patience < 1 or self.max_epochs <= 0 or self.validation_size < 1:
            raise ConfigError("compare.patience and compare.validation_size must be >= 1, compare.max_epochs > 0")
        if self.stage_max_epochs is not None and self.stage_max_epochs <= 0:
            raise ConfigError(f"compare.stage_max_epochs must be > 0 or null, got {self.stage_max_epochs}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"compare.eval_steps must be >= 1 or null, got {self.eval_steps}")
        if self.budget == "converge" and self.lr_policy == "one":
            raise ConfigError("compare.lr_policy 'one' needs every stage's steps before training; budget 'converge' "
                              "does not know them (use 'restart' or 'constant')")
        if self.tolerance < 0:
            raise ConfigError(f"compare.tolerance must be >= 0, got {self.tolerance}")
        if self.resamples < 1:
            raise ConfigError(f"compare.resamples must be >= 1, got {self.resamples}")
        self._validate_teacher()

    def _validate_teacher(self) -> None:
        taught = [m for m in self.methods if METHODS[m].teacher]
        if not taught:
            return
        if "full-prompt" not in self.methods:
            raise ConfigError(f"compare.methods: {taught[0]} learns from full-prompt FT's answers; add full-prompt")
        if self.teacher_data.teacher is not None:
            raise ConfigError("compare.teacher_data.teacher: compare's teacher is its own full-prompt FT of each "
                              "seed; leave it null")
        if not self.teacher_data.enabled:
            raise ConfigError(f"compare.methods: {taught[0]} needs new queries: set compare.teacher_data.from_train, "
                              ".queries or .generate")
        if self.budget == "tokens":
            raise ConfigError(f"compare.budget 'tokens' matches full-prompt FT's tokens on the labelled pairs; "
                              f"{taught[0]} trains on more rows: use 'converge' or 'steps'")

    def ordered_methods(self) -> list[str]:
        """The chosen methods with every prefix-cache method's source before it (it needs the adapter)."""
        out: list[str] = []
        for name in self.methods:
            src = METHODS[name].prefix_cache_of
            if src and src not in out:
                out.append(src)
            if name not in out:
                out.append(name)
        return out


def load_compare_config(path: str, overrides: list[str]) -> tuple[dict[str, Any], CompareArgs]:
    """The raw run config and the compare settings of ``path`` with ``--set`` overrides applied."""
    raw = load_yaml(path)
    if "run" in raw:
        unknown = [k for k in raw if k not in CONFIG_KEYS]
        if unknown:
            raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r}; a compare config has "
                              f"{' and '.join(CONFIG_KEYS)}")
        run_raw, cmp_raw = dict(raw.get("run") or {}), dict(raw.get("compare") or {})
    else:
        run_raw, cmp_raw = dict(raw), {}
    cmp_over = [s.removeprefix("compare.") for s in overrides if s.startswith("compare.")]
    run_over = [s for s in overrides if not s.startswith("compare.")]
    run_raw = apply_overrides(run_raw, run_over)
    args = from_dict(CompareArgs, apply_overrides(cmp_raw, cmp_over), where=f"{path}: compare")
    from_dict(RunConfig, run_raw, where=f"{path}: run")  # one-line errors before anything runs
    return run_raw, args


def steps_per_stage(total_steps: int, n_stages: int, revisit: bool) -> list[int]:
    """``total_steps`` split as evenly as possible (earlier stages take the remainder); with
    ``revisit`` every stage gets all of them."""
    if n_stages == 0:
        return []
    if revisit:
        return [total_steps] * n_stages
    if total_steps < n_stages:
        raise ConfigError(f"compare.total_steps={total_steps} is fewer than the {n_stages} stages to share them")
    q, r = divmod(total_steps, n_stages)
    return [q + 1 if i < r else q for i in range(n_stages)]


def _section(d: dict[str, Any], key: str) -> dict[str, Any]:
    d[key] = dict(d.get(key) or {})
    return d[key]


@dataclass
class Plan:
    """Every (method, seed) of a comparison, with its run config and run directory."""

    run_raw: dict[str, Any]
    args: CompareArgs
    out: Path
    base: RunConfig = field(init=False)
    n_train: int = field(init=False)
    total_steps: int = field(init=False)

    def __post_init__(self) -> None:
        from ..pipeline import load_data

        self.base = from_dict(RunConfig, self.run_raw, where="run")
        for index, changes in self.base.train.stage_overrides.items():
            owned = sorted(set(changes) & STEP_FIELDS)
            if owned:
                raise ConfigError(f"run.train.stage_overrides.{index}.{owned[0]}: compare sets every stage's steps "
                                  "itself (equal steps for every method); remove it")
        if self.base.data.teacher_answers:  # the '+teacher' methods get their own, per seed
            raise ConfigError("run.data.teacher_answers: compare labels new queries itself for the '+teacher' "
                              "methods (compare.teacher_data); remove it from the run section")
        task, train, _ = load_data(self.base)
        if self.args.budget == "converge" and not task.has_split("validation"):
            raise ConfigError(f"compare.budget 'converge' scores a validation sample, and task {task.name} has no "
                              "validation split: declare one (data: {validation: FILE} in the task file) or use "
                              "--set compare.budget=steps")
        self.n_train = len(train)
        t = self.base.train
        self.per_step = t.per_device_batch_size * t.gradient_accumulation_steps
        self.total_steps = self.args.total_steps or max(
            1, math.ceil(steps_per_epoch(self.n_train, self.per_step) * self.args.epochs))
        self._lengths: dict[str, list[float]] = {}

    @property
    def seeds(self) -> list[int]:
        return list(range(self.args.seeds))

    def run_dir(self, method: str, seed: int) -> Path:
        src = METHODS[method].prefix_cache_of or method
        return self.out / "runs" / src / f"seed-{seed}"

    def n_stages(self, method: str) -> int:
        spec = METHODS[method]
        schedule = replace(self.base.schedule, shape=spec.shape or self.base.schedule.shape)
        return len(method_plan(spec.pipeline, schedule, self.base.compressed_tau).points)

    @property
    def eval_steps(self) -> int:
        """converge: steps between validation scorings (default: one per pass over the pairs)."""
        return self.args.eval_steps or steps_per_epoch(self.n_train, self.per_step)

    def stage_mode(self, method: str) -> str:
        """A stage's pairs: all of them in every stage (converge, ``-revisit``) or one slice per stage."""
        return "revisit" if METHODS[method].revisit or self.args.budget == "converge" else "slice"

    def planned_steps(self, method: str) -> list[int]:
        """Steps per stage: exact under steps / tokens, the caps under converge."""
        n = self.n_stages(method)
        if self.args.budget == "converge":
            epoch = steps_per_epoch(self.n_train, self.per_step)
            last = steps_per_epoch(self.n_train + self.teacher_rows(method), self.per_step)
            early = self.args.stage_max_epochs or self.args.max_epochs
            return [math.ceil(epoch * early) for _ in range(n - 1)] + [math.ceil(last * self.args.max_epochs)]
        if self.args.budget == "tokens" and n:
            ref = self.stage_lengths("full-prompt")[0] * self.total_steps * self.per_step
            return token_matched_steps(ref, self.stage_lengths(method), self.per_step)
        return steps_per_stage(self.total_steps, n, METHODS[method].revisit)

    def teacher_rows(self, method: str) -> int:
        """The teacher rows a '+teacher' method's last stage adds: seed 0's kept answers once labelled,
        else the held-out and generated queries asked for (logs not counted); 0 for the other methods."""
        if not METHODS[method].teacher:
            return 0
        summary = answers_path(self.out, 0).with_suffix(".json")
        if summary.is_file():
            return int(read_json(summary)["counts"]["kept"])
        return self.args.teacher_data.from_train + self.args.teacher_data.generate_n

    def stage_lengths(self, method: str) -> list[float]:
        """Mean training-record length per stage of ``method`` (tokens budget; computed once)."""
        if method not in self._lengths:
            raw = self._raw(method, 0)
            raw["train"].pop("lr_span", None)  # the stages' records do not depend on the schedule
            self._lengths[method] = stage_lengths(from_dict(RunConfig, raw, where=method))
        return self._lengths[method]

    def _raw(self, method: str, seed: int) -> dict[str, Any]:
        """(``method``, ``seed``)'s run config before its training budget is set."""
        spec = METHODS[method]
        d = copy.deepcopy(self.run_raw)
        d.update(method=spec.pipeline, baselines=[], output_dir=str(self.run_dir(method, seed)))
        _section(d, "data")["stage_mode"] = self.stage_mode(method)
        if spec.shape:
            _section(d, "schedule")["shape"] = spec.shape
        train = _section(d, "train")
        train["seed"] = seed
        if spec.loss:
            train["loss"] = spec.loss
        if spec.teacher:  # full-prompt FT of this seed answered the new queries and is their KL teacher
            _section(d, "data").update(teacher_answers=str(answers_path(self.out, seed)), teacher_stages="last")
            train.update(teacher=str(self.run_dir("full-prompt", seed) / "adapter"), teacher_cache=True)
        if self.args.lr_policy == "constant":
            train.update(lr_scheduler="constant", warmup_ratio=0.0)
        elif self.args.lr_policy == "one":
            train["lr_span"] = "run"
        _section(d, "infer")["prefix_cache"] = False
        return d

    def config(self, method: str, seed: int) -> RunConfig:
        """The pipeline config of (``method``, ``seed``); a prefix-cache method's is its source's."""
        spec = METHODS[method]
        if spec.prefix_cache_of:
            return self.config(spec.prefix_cache_of, seed)
        d = self._raw(method, seed)
        train = d["train"]
        if self.args.budget == "converge":
            converge_train(train, self.args, self.n_stages(method), self.eval_steps)
        elif steps := self.planned_steps(method):
            train["max_steps_per_stage"] = min(steps)
            overrides = {int(i): dict(v) for i, v in (train.get("stage_overrides") or {}).items()}
            for i, s in enumerate(steps):
                if s != min(steps):
                    overrides.setdefault(i, {})["max_steps_per_stage"] = s
            train["stage_overrides"] = overrides
        return from_dict(RunConfig, d, where=f"method {method}, seed {seed}")

    def describe(self) -> dict[str, Any]:
        """The plan as stored in results.json: what every method trains on, and the policies."""
        t = self.base.train
        return {
            "budget": self.args.budget, "budget_means": BUDGETS[self.args.budget],
            "converge": {"patience": self.args.patience, "max_epochs": self.args.max_epochs,
                         "stage_max_epochs": self.args.stage_max_epochs, "eval_steps": self.eval_steps,
                         "validation_size": self.args.validation_size, "reuse_stage0": self.args.reuse_stage0}
            if self.args.budget == "converge" else None,
            "methods": {m: {"about": METHODS[m].about, "pipeline": METHODS[m].pipeline,
                            "steps_per_stage": self.planned_steps(m),
                            "stage_mode": self.stage_mode(m),
                            "prefix_cache_of": METHODS[m].prefix_cache_of,
                            "teacher": METHODS[m].teacher} for m in self.args.methods},
            "seeds": self.seeds,
            "seed_changes": "train.seed: LoRA initialisation, dropout and data order (data.seed, the training "
                            "sample and its stage slices, stays fixed)",
            "n_train": self.n_train, "total_steps": self.total_steps,
            "batch": t.per_device_batch_size * t.gradient_accumulation_steps,
            "lr_policy": self.args.lr_policy, "lr_policy_means": LR_POLICIES[self.args.lr_policy],
            "lr_scheduler": "constant" if self.args.lr_policy == "constant" else t.lr_scheduler,
            "warmup_ratio": 0.0 if self.args.lr_policy == "constant" else t.warmup_ratio,
        }
