"""The configuration layer is torch-free: `promptintern config` and config errors answer fast.

Each timing runs the real console entry point in a fresh interpreter (what a user waits for),
with a generous bound for a loaded CI machine; `-X importtime` proves why it is fast: neither
torch nor transformers is imported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptintern.args import LR_SCHEDULERS, InferArgs, TrainArgs, volatile_fields

# Python start-up + the config layer: about 0.25 s on an idle 2-core machine, 1.3-1.5 s with
# that machine's load at 8. The bound leaves room for a loaded CI machine; torch slipping back
# into the import chain is caught by the import check whatever the load.
BOUND_S = 4.0
HEAVY = ("torch", "transformers", "peft")


def _cli(*argv: str) -> tuple[subprocess.CompletedProcess, float, list[str]]:
    """Run ``python -X importtime -m promptintern.cli argv``; (result, wall seconds, modules imported)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "promptintern.cli", *argv],
                          capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return proc, wall, imported


def _heavy(imported: list[str]) -> list[str]:
    return [m for m in imported if m.split(".")[0] in HEAVY]


def test_config_listing_is_fast_and_torch_free():
    proc, wall, imported = _cli("config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train.learning_rate" in proc.stdout
    assert _heavy(imported) == []
    assert wall < BOUND_S, f"promptintern config took {wall:.2f} s"


@pytest.mark.parametrize("body, fragment", [
    ("train:\n  lerning_rate: 1e-4\n", "did you mean 'learning_rate'"),
    ("train:\n  lr_scheduler: cosinus\n", "lr_scheduler"),
    ("infer:\n  batch_size: 0\n", "infer.batch_size"),
])
def test_bad_config_error_is_fast_and_torch_free(tmp_path: Path, body: str, fragment: str):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    proc, wall, imported = _cli("config", str(path))
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode != 0
    assert len(errors) == 1 and fragment in errors[0], errors
    assert _heavy(imported) == []
    assert wall < BOUND_S, f"a config error took {wall:.2f} s"


def test_lr_scheduler_names_match_transformers():
    from transformers.trainer_utils import SchedulerType

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


def test_volatile_fields_are_marked_in_metadata():
    assert {"save_steps", "logging_steps", "num_threads", "report_to"} <= volatile_fields(TrainArgs)
    assert "learning_rate" not in volatile_fields(TrainArgs)
    assert volatile_fields(InferArgs) == {"num_threads", "progress"}


def test_old_import_paths_still_work():
    from promptintern import args, config, inference

    assert inference.InferArgs is args.InferArgs and config.EvalArgs is args.EvalArgs
