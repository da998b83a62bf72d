"""A tiny but complete run config (SQL example task, tiny model) shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SQL_TASK = ROOT / "examples" / "sql" / "task.yaml"


def tiny_run_config(output_dir: Path, **overrides) -> dict:
    cfg = {
        "task": str(SQL_TASK), "model": "tiny-random", "method": "promptintern",
        "output_dir": str(output_dir), "baselines": ["base-query"],
        "schedule": {"stages": 2, "k": 1}, "compress": {"model": "tiny-random"},
        "train": {"max_steps_per_stage": 3, "per_device_batch_size": 2, "save_steps": 1, "logging_steps": 1},
        "infer": {"max_new_tokens": 6, "batch_size": 2, "progress": False}, "eval": {"bootstrap": 50},
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def served_tiny_run(tmp: Path, queries: list[str], new_tokens: int, batch_size: int) -> Path:
    """A 1-step run on a local copy of tiny-random (a directory: a server subprocess needs no alias
    cache) and its ``infer`` answers to ``queries`` in ``tmp/infer.jsonl``: what serving must match."""
    import json

    from promptintern.cli import main
    from promptintern.config import load_config
    from promptintern.models import resolve_model_path
    from promptintern.pipeline import train

    base = resolve_model_path("tiny-random")
    cfg = tiny_run_config(tmp / "run", model=base, compress={"model": base},
                          train={"max_steps_per_stage": 1, "per_device_batch_size": 2, "use_cpu": True},
                          infer={"max_new_tokens": new_tokens, "batch_size": batch_size, "progress": False})
    train(load_config(str(write_config(tmp / "c.yaml", cfg))))
    (tmp / "q.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "query": q}) + "\n" for i, q in enumerate(queries)))
    assert main(["--threads", "1", "infer", "--run", str(tmp / "run"), "--input", str(tmp / "q.jsonl"),
                 "--output", str(tmp / "infer.jsonl")]) == 0
    return tmp / "run"


VOLATILE = {"latency_s", "latency_s_mean", "throughput_qps", "wall_s", "generated", "resumed", "wall_s_this_session",
            "train_wall_s", "s_per_step", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "resumed_from", "wall_s_before_resume", "teacher_wall_s", "peak_rss_mb", "validation_wall_s",
            "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}


def stable(obj):
    """``obj`` without timing fields, for comparing two runs."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj
