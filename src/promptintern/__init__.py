"""promptintern: internalize a recurring prompt into a model by progressive LoRA fine-tuning.

The Python API mirrors the CLI. Heavy imports (torch, transformers) happen on first call, so
``import promptintern`` stays instant::

    import promptintern

    cfg = promptintern.load_config("configs/nl2bash.yaml", ["data.train_size=120"])
    metrics = promptintern.run(cfg, resume=True)       # promptintern run
    adapter = promptintern.train(cfg, resume=True)     # promptintern train
    stats = promptintern.infer("runs/nl2bash", "queries.jsonl", "preds.jsonl")
    scores = promptintern.evaluate.evaluate_file("nl2bash", "preds.jsonl", None, "runs/eval")
    promptintern.export("runs/nl2bash", "exported", merge=True)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .threads import prepare_openmp

if TYPE_CHECKING:
    from .config import RunConfig

__version__ = "0.1.0"
__all__ = ["export", "infer", "load_config", "run", "train"]

PathLike = str | os.PathLike[str]

# Before anything imports torch: its OpenMP threads then sleep instead of spinning when another
# process holds a core (the user's own OMP_WAIT_POLICY wins). See promptintern.threads.
prepare_openmp()


def load_config(path: PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A validated :class:`~promptintern.config.RunConfig` from YAML (None = defaults) and ``k=v`` overrides."""
    from .config import load_config as _load

    return _load(None if path is None else str(path), overrides)


def _config(config: RunConfig | PathLike | dict[str, Any]) -> RunConfig:
    from .config import RunConfig
    from .configtools import from_dict

    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return from_dict(RunConfig, config)
    return load_config(config)


def run(config: RunConfig | PathLike | dict[str, Any], resume: bool = False, force: bool = False) -> dict[str, Any]:
    """prepare → train → infer → evaluate → report (``promptintern run``); returns the metrics."""
    from .pipeline import run as _run

    return _run(_config(config), resume=resume, force=force)


def train(config: RunConfig | PathLike | dict[str, Any], resume: bool = False, force: bool = False) -> Path | None:
    """Build the stages and train the adapter (``promptintern train``); returns its directory."""
    from .pipeline import train as _train

    return _train(_config(config), resume=resume, force=force)


def infer(run_dir: PathLike, input: PathLike, output: PathLike, **options: Any) -> dict[str, Any]:
    """Answer the queries of a JSONL file with a trained run (``promptintern infer``); returns stats."""
    from .pipeline import infer_file

    return infer_file(Path(run_dir), Path(input), Path(output), **options)


def export(run_dir: PathLike, out: PathLike, merge: bool = False, force: bool = False) -> Path:
    """Write a run's adapter, or the merged model, as a standard HF directory (``promptintern export``);
    ``force`` replaces a non-empty ``out``."""
    from .exporter import export as _export

    return _export(Path(run_dir), Path(out), merge=merge, force=force)


def __getattr__(name: str) -> Any:
    """Subpackages on first use, so ``promptintern.evaluate.evaluate_file`` works after a plain
    ``import promptintern`` without making that import slow."""
    if name in ("evaluate",):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
