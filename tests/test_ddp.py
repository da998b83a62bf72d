"""Multi-process training (2 CPU processes, gloo): ranks stay in sync and split the data."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_fixtures import tiny_run_config

HELPER = Path(__file__).parent / "train_fixtures.py"
N_RECORDS, BATCH = 8, 2  # train_fixtures.toy_stages / toy_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: list[str], tmp_path: Path) -> Path:
    run_dir, hashes = tmp_path / "run", tmp_path / "hashes"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [*launcher, str(HELPER), str(run_dir), "--stages", "2", "--epochs", "1", "--hash-out", str(hashes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = sorted(hashes.glob("rank-*.txt"))
    assert [p.name for p in ranks] == ["rank-0.txt", "rank-1.txt"]
    assert ranks[0].read_text() == ranks[1].read_text()  # gradients were all-reduced
    history = json.loads((run_dir / "train" / "history.json").read_text())
    # One epoch over 8 records, batch 2 per process: 2 steps with 2 processes (4 with one).
    assert [s["steps"] for s in history["stages"]] == [N_RECORDS // (2 * BATCH)] * 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    return run_dir


def test_torchrun_two_processes(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    _launch(launcher, tmp_path)


def test_accelerate_launch_two_processes(tmp_path):
    # `--cpu` would run a single process (accelerate's multi-CPU launch needs MPI); `--multi_gpu`
    # goes through torch.distributed.run, and train_stages picks gloo on a machine without CUDA.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    _launch(launcher, tmp_path)


CLI_RUNNER = Path(__file__).parent / "ddp_cli_runner.py"


def _cli_config(tmp_path: Path) -> Path:
    cfg = tiny_run_config(tmp_path / "run", baselines=[], schedule={"stages": 2, "k": 1},
                          train={"max_steps_per_stage": 4, "per_device_batch_size": 2, "save_steps": 2,
                                 "logging_steps": 1, "keep_checkpoints": True})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch_cli(launcher: list[str], tmp_path: Path, *cli: str) -> list[str]:
    """Run the CLI under ``launcher``; the per-rank adapter hashes (equal on both ranks)."""
    hashes = tmp_path / "hashes"
    for old in hashes.glob("rank-*.txt"):
        old.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*launcher, str(CLI_RUNNER), str(hashes), *cli], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = sorted(hashes.glob("rank-*.txt"))
    assert [p.name for p in ranks] == ["rank-0.txt", "rank-1.txt"]
    assert ranks[0].read_text() == ranks[1].read_text()
    return [p.read_text() for p in ranks]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]


def _accelerate() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port())]


@pytest.mark.parametrize("launcher", [_torchrun, _accelerate], ids=["torchrun", "accelerate"])
def test_cli_train_multi_process_fresh_then_resume(tmp_path, launcher):
    """The Scale-out page's command (docs/scale-out.md) on a fresh directory, then --resume from inside the last stage."""
    cfg = _cli_config(tmp_path)
    run_dir = tmp_path / "run"
    fresh = _launch_cli(launcher(), tmp_path, "train", str(cfg))
    adapter = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((run_dir / "run.json").read_text())["fingerprint"]
    # As if killed after checkpoint-2 of the last stage: its final/, the adapter and the later checkpoint gone.
    last = run_dir / "train" / "stage-1"
    for path in (run_dir / "adapter", last / "final", last / "checkpoint-4"):
        shutil.rmtree(path)
    resumed = _launch_cli(launcher(), tmp_path, "train", str(cfg), "--resume")
    assert resumed == fresh
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    history = json.loads((run_dir / "train" / "history.json").read_text())
    assert [s["resumed_from"] for s in history["stages"]] == [None, "checkpoint-2"]
