"""The run directory under concurrency and damage: a lock held for the run's life, stage files
checked against their fingerprints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline_fixtures import tiny_run_config, write_config
from promptintern.cli import main
from promptintern.config import load_config
from promptintern.io import read_jsonl
from promptintern.pipeline import check


def _small(tmp_path: Path, **train) -> Path:
    cfg = tiny_run_config(tmp_path / "run", baselines=[], schedule={"stages": 2, "k": 1},
                          train={"per_device_batch_size": 2, "save_steps": 4, "logging_steps": 1, **train})
    return write_config(tmp_path / "c.yaml", cfg)


def test_a_live_run_refuses_a_second_run_resume_and_force(tmp_path, capsys):
    cfg = _small(tmp_path, max_steps_per_stage=40)
    check(load_config(str(cfg)))  # imports and caches warmed, so the attempts below are quick
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    live = subprocess.Popen([sys.executable, "-m", "promptintern.cli", "run", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "run.json").exists():  # written once the lock is held
            assert live.poll() is None, live.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--resume"], ["--force"]):
            assert main(["run", str(cfg), *extra]) == 5
            err = capsys.readouterr().err.strip()
            assert "is in use by another promptintern process" in err and "\n" not in err
        assert live.poll() is None, "the live run ended before the attempts; lengthen it"
        assert live.wait(timeout=300) == 0, live.stderr.read()[-2000:]
    finally:
        if live.poll() is None:
            live.kill()
    assert (tmp_path / "run" / "metrics.json").is_file() and (tmp_path / "run" / "adapter").is_dir()
    assert main(["run", str(cfg), "--resume"]) == 0  # the lock died with its holder


def test_an_edited_stage_file_is_detected_and_rebuilt(tmp_path, caplog):
    cfg = _small(tmp_path, max_steps_per_stage=1)
    assert main(["train", str(cfg)]) == 0
    stage_file = tmp_path / "run" / "stages" / "stage-1.jsonl"
    original = stage_file.read_bytes()
    stage_file.write_bytes(b"".join(original.splitlines(keepends=True)[:-1]))  # one record dropped
    with caplog.at_level(logging.WARNING, logger="promptintern.stages"):
        assert main(["train", str(cfg), "--resume"]) == 0
    assert "stage-1.jsonl does not match its fingerprint" in caplog.text
    assert stage_file.read_bytes() == original
    assert len(read_jsonl(stage_file)) == len(original.splitlines())
