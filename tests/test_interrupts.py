"""SIGKILL at any phase, or SIGTERM mid-stage, then ``--resume``: the final metrics equal an
uninterrupted run's.

Phases: (a) model conversion, (b) retrieval index build, (c) stage dataset build, (d) mid-stage
training, (e) between stages, (f) inference halfway through the test set. The kill is injected
by tests/kill_runner.py in a real subprocess; the resume runs the CLI in-process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline_fixtures import stable, tiny_run_config, write_config
from promptintern.cli import main
from promptintern.io import read_jsonl

HERE = Path(__file__).resolve().parent
POINTS = ["conversion", "retriever", "stages", "mid-stage", "between-stages", "inference"]


def _config(tmp: Path, name: str) -> Path:
    cfg = tiny_run_config(tmp / name, data={"test_size": 5}, infer={"max_new_tokens": 6, "batch_size": 2, "progress": False})
    return write_config(tmp / f"{name}.yaml", cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    assert main(["run", str(_config(tmp, "run"))]) == 0
    return tmp / "run"


def _no_partial_files_under_final_names(run_dir: Path) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".jsonl"} and not path.name.startswith("."):
            if path.suffix == ".json":
                json.loads(path.read_text())
            else:
                for line in path.read_text().splitlines():
                    json.loads(line)


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_then_resume_matches_uninterrupted(point, reference, tmp_path, monkeypatch):
    if point == "conversion":  # a fresh model cache, so the conversion really runs (and dies)
        monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, "run")
    proc = subprocess.run([sys.executable, str(HERE / "kill_runner.py"), point, "run", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "run"
    if run_dir.exists():
        _no_partial_files_under_final_names(run_dir)
    assert not (run_dir / "metrics.json").exists()

    assert main(["run", str(cfg), "--resume"]) == 0
    _assert_same_as(run_dir, reference)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_resume_matches_uninterrupted(reference, tmp_path):
    """A service manager's stop mid-stage: checkpoint at the step it is on, one line, exit 143."""
    raw = tiny_run_config(tmp_path / "run", data={"test_size": 5},
                          infer={"max_new_tokens": 6, "batch_size": 2, "progress": False})
    raw["train"]["save_steps"] = 100  # no checkpoint due: the only one is the signal's
    cfg = write_config(tmp_path / "run.yaml", raw)
    proc = subprocess.run([sys.executable, str(HERE / "kill_runner.py"), "sigterm", "run", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "promptintern: error: stopped by SIGTERM in stage 2/2 at step 2; checkpoint-2 saved; "
        "rerun with --resume to continue")
    run_dir = tmp_path / "run"
    assert [p.name for p in (run_dir / "train" / "stage-1").iterdir()] == ["checkpoint-2"]
    assert main(["run", str(cfg), "--resume"]) == 0
    _assert_same_as(run_dir, reference)


def _assert_same_as(run_dir: Path, reference: Path) -> None:
    """Metrics (but timing), predictions and adapter weights equal the uninterrupted run's."""
    got = json.loads((run_dir / "metrics.json").read_text())
    want = json.loads((reference / "metrics.json").read_text())
    from promptintern.identity import differences

    assert differences(stable(got), stable(want)) == []  # the whole metrics.json (losses included) except timing fields
    for name in ("promptintern", "base-query"):
        a = [stable(r) for r in read_jsonl(run_dir / "predictions" / f"{name}.jsonl")]
        b = [stable(r) for r in read_jsonl(reference / "predictions" / f"{name}.jsonl")]
        assert a == b
    ours = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
