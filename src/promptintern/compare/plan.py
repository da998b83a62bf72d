"""The plan of a comparison: which methods, which seeds, and the run config of every (method, seed).

A compare config is either a plain run config (every method is derived from it, the compare
settings take their defaults) or a file with two sections, ``run:`` (a run config) and
``compare:`` (:class:`CompareArgs`). ``--set compare.seeds=2`` changes a compare setting, any
other ``--set`` the run config.

Fairness, stated in the results rather than assumed:

- every fine-tuned method trains on the same training pairs (the run config's sample, whose
  ``data.seed`` stays fixed) for the same total number of optimizer steps; a method with N
  stages splits them between its stages (``stage_mode: slice``: each stage its own share of the
  pairs), except the ``-revisit`` variant, which by design runs them in every stage;
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
from ..methods import plan as method_plan
from .cost import CostArgs
from .speed import ScalingArgs, SpeedArgs

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
}
DEFAULT_METHODS = ("full-prompt", "full-prompt+cache", "query-only", "compressed", "promptintern")
REFERENCES = ("full-prompt", "query-only")  # the differences every report gives


@dataclass
class CompareArgs:
    """The comparison's own settings (the ``compare:`` section of a compare config)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": f"Methods to compare; choose from {', '.join(METHODS)}."})
    seeds: int = field(default=3, metadata={"help": "Training seeds 0..N-1 per method (train.seed: LoRA init, dropout, data order)."})
    total_steps: int | None = field(default=None, metadata={"help": "Optimizer steps of every fine-tuned method; null = ceil(train pairs / batch) × epochs."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training pairs when total_steps is derived."})
    lr_policy: str = field(default="restart", metadata={"help": "; ".join(f"'{k}': {v}" for k, v in LR_POLICIES.items()), "choices": tuple(LR_POLICIES)})
    tolerance: float = field(default=1.0, metadata={"help": "Accuracy points a method may lose against full-prompt FT and still count as 'as accurate' (non-inferiority margin of the verdict)."})
    resamples: int = field(default=10000, metadata={"help": "Bootstrap resamples (over test items and seeds) of every difference."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap resampling."})
    speed: SpeedArgs = field(default_factory=SpeedArgs, metadata={"help": "Speed pass on the trained, merged models."})
    scaling: ScalingArgs = field(default_factory=ScalingArgs, metadata={"help": "Speed vs recurring-prompt length (base model, no training)."})
    cost: CostArgs = field(default_factory=CostArgs, metadata={"help": "Price profiles and training-cost figures."})

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
        if self.tolerance < 0:
            raise ConfigError(f"compare.tolerance must be >= 0, got {self.tolerance}")
        if self.resamples < 1:
            raise ConfigError(f"compare.resamples must be >= 1, got {self.resamples}")

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
        _, train, _ = load_data(self.base)
        self.n_train = len(train)
        t = self.base.train
        per_step = t.per_device_batch_size * t.gradient_accumulation_steps
        self.total_steps = self.args.total_steps or max(
            1, math.ceil(math.ceil(self.n_train / per_step) * self.args.epochs))

    @property
    def seeds(self) -> list[int]:
        return list(range(self.args.seeds))

    def run_dir(self, method: str, seed: int) -> Path:
        src = METHODS[method].prefix_cache_of or method
        return self.out / "runs" / src / f"seed-{seed}"

    def planned_steps(self, method: str) -> list[int]:
        spec = METHODS[method]
        schedule = replace(self.base.schedule, shape=spec.shape or self.base.schedule.shape)
        p = method_plan(spec.pipeline, schedule, self.base.compressed_tau)
        return steps_per_stage(self.total_steps, len(p.points), spec.revisit)

    def config(self, method: str, seed: int) -> RunConfig:
        """The pipeline config of (``method``, ``seed``); a prefix-cache method's is its source's."""
        spec = METHODS[method]
        if spec.prefix_cache_of:
            return self.config(spec.prefix_cache_of, seed)
        d = copy.deepcopy(self.run_raw)
        d.update(method=spec.pipeline, baselines=[], output_dir=str(self.run_dir(method, seed)))
        _section(d, "data")["stage_mode"] = "revisit" if spec.revisit else "slice"
        if spec.shape:
            _section(d, "schedule")["shape"] = spec.shape
        train = _section(d, "train")
        train["seed"] = seed
        if spec.loss:
            train["loss"] = spec.loss
        if self.args.lr_policy == "constant":
            train.update(lr_scheduler="constant", warmup_ratio=0.0)
        elif self.args.lr_policy == "one":
            train["lr_span"] = "run"
        _section(d, "infer")["prefix_cache"] = False
        steps = self.planned_steps(method)
        if steps:
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
            "methods": {m: {"about": METHODS[m].about, "pipeline": METHODS[m].pipeline,
                            "steps_per_stage": self.planned_steps(m),
                            "stage_mode": "revisit" if METHODS[m].revisit else "slice",
                            "prefix_cache_of": METHODS[m].prefix_cache_of} for m in self.args.methods},
            "seeds": self.seeds,
            "seed_changes": "train.seed: LoRA initialisation, dropout and data order (data.seed, the training "
                            "sample and its stage slices, stays fixed)",
            "n_train": self.n_train, "total_steps": self.total_steps,
            "batch": t.per_device_batch_size * t.gradient_accumulation_steps,
            "lr_policy": self.args.lr_policy, "lr_policy_means": LR_POLICIES[self.args.lr_policy],
            "lr_scheduler": "constant" if self.args.lr_policy == "constant" else t.lr_scheduler,
            "warmup_ratio": 0.0 if self.args.lr_policy == "constant" else t.warmup_ratio,
        }
