"""Multi-process training (2 CPU processes, gloo): ranks stay in sync and split the data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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
