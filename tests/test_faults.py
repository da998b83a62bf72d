"""Faults an operator meets, injected one at a time into a real run (tiny model, SQL example
task, 2 stages of 4 steps, checkpoints every 2): damaged checkpoints, stage weights and adapter,
changed data, stale predictions, a full disk, path mistakes, contradictory flags, over-long
queries and a stop signal. Each must end in a named fallback that trains on to the same weights
as an undisturbed run, or in one line that says what to do, never in a traceback or in training
or answering on wrong state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline_fixtures import SQL_TASK, stable, tiny_run_config, write_config
from promptintern.cli import main
from promptintern.io import locked_dir, read_jsonl

HERE = Path(__file__).resolve().parent
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """A private copy of the SQL example task (one test edits its data)."""
    return Path(shutil.copytree(SQL_TASK.parent, tmp_path_factory.mktemp("task") / "sql")) / "task.yaml"


def _config(task: Path, run_dir: Path, **train) -> Path:
    cfg = tiny_run_config(run_dir, task=str(task), baselines=[],
                          train={"max_steps_per_stage": 4, "per_device_batch_size": 2, "save_steps": 2,
                                 "logging_steps": 1, "keep_checkpoints": True, **train})
    return write_config(run_dir.parent / f"{run_dir.name}.yaml", cfg)


@pytest.fixture(scope="module")
def finished(task, tmp_path_factory) -> Path:
    """An undisturbed, finished training run, checkpoints kept: the weights every fallback must reach."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", str(_config(task, run_dir))]) == 0
    return run_dir


def _copy(finished: Path, task: Path, tmp_path: Path, interrupted: bool = True) -> tuple[Path, Path]:
    """(run dir, config) of a copy of ``finished``; ``interrupted``: as if killed in stage 2 at step 3
    (stage 2 has checkpoint-2 only, no final/, no adapter)."""
    run_dir = Path(shutil.copytree(finished, tmp_path / "run"))
    if interrupted:
        for path in ("train/stage-1/final", "train/stage-1/checkpoint-4", "adapter"):
            shutil.rmtree(run_dir / path)
    return run_dir, _config(task, run_dir)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / WEIGHTS))


def _same_adapter(a: Path, b: Path) -> bool:
    x, y = _tensors(a), _tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _one_line(capsys) -> str:
    """The error the last command printed: one line, no traceback (warnings may come before it)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("promptintern: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def test_f1_checkpoint_with_emptied_trainer_state_is_set_aside(finished, task, tmp_path, caplog):
    run_dir, cfg = _copy(finished, task, tmp_path)
    (run_dir / "train/stage-1/checkpoint-2/trainer_state.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="promptintern.training"):
        assert main(["train", str(cfg), "--resume"]) == 0
    assert ("stage 2/2: checkpoint-2 cannot be resumed from (trainer_state.json does not match its checksum "
            "(damaged since it was saved)); restarting the stage") in caplog.text
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


def test_f2_truncated_stage_final_is_trained_again(finished, task, tmp_path, caplog):
    run_dir, cfg = _copy(finished, task, tmp_path)
    weights = run_dir / "train/stage-0/final" / WEIGHTS
    os.truncate(weights, 1000)
    with caplog.at_level(logging.WARNING, logger="promptintern.training"):
        assert main(["train", str(cfg), "--resume"]) == 0
    assert f"stage 1/2: final/ {WEIGHTS} does not match its checksum" in caplog.text
    assert _same_adapter(run_dir / "train/stage-0/final", finished / "train/stage-0/final")
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


def test_f3_truncated_adapter_is_refused_by_infer_and_export_and_rebuilt_by_resume(finished, task, tmp_path, capsys,
                                                                                   caplog):
    run_dir, cfg = _copy(finished, task, tmp_path, interrupted=False)
    os.truncate(run_dir / "adapter" / WEIGHTS, 1000)
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "How many employees are there?"}\n')
    assert main(["infer", "--run", str(run_dir), "--input", str(queries), "--output", str(tmp_path / "p.jsonl")]) == 4
    err = _one_line(capsys)
    hint = f"promptintern train {run_dir}/config.yaml --resume --set output_dir={run_dir}"  # a copied run
    assert f"{WEIGHTS} does not match its checksum" in err and hint in err
    assert not (tmp_path / "p.jsonl").exists()
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "export")]) == 5
    assert f"{WEIGHTS} does not match its checksum" in _one_line(capsys)
    assert not (tmp_path / "export").exists()
    with caplog.at_level(logging.WARNING, logger="promptintern.training"):
        assert main(hint.split()[1:]) == 0
    assert "rebuilding it from the last stage's final/" in caplog.text
    assert _same_adapter(run_dir / "adapter", finished / "adapter")
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "checksums.json").is_file()


def test_f4_flipped_tensor_bytes_in_a_checkpoint_are_found(finished, task, tmp_path, caplog):
    run_dir, cfg = _copy(finished, task, tmp_path)
    weights = run_dir / "train/stage-1/checkpoint-2" / WEIGHTS
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header + 100, min(header + 5000, len(data))):  # tensor data only: the header stays valid
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="promptintern.training"):
        assert main(["train", str(cfg), "--resume"]) == 0
    assert f"checkpoint-2 cannot be resumed from ({WEIGHTS} does not match its checksum" in caplog.text
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


def test_f5_disk_full_inside_the_trainer_checkpoint_save_is_one_line(finished, task, tmp_path, capsys, monkeypatch):
    """Fault injected at the write call: torch's zip writer reports a full disk without an errno."""
    run_dir, cfg = _copy(finished, task, tmp_path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", str(cfg), "--resume"]) == 6
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("promptintern: error: disk full while writing a checkpoint of stage 2/2 in ")
    assert err.endswith("free space and rerun with --resume")
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", str(cfg), "--resume"]) == 0  # the half-written checkpoint-4 is set aside
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MB tmpfs (the run needs about 2.4 MB), mounted where root may mount; skipped elsewhere."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_f5_a_real_full_disk_is_one_line_and_stays_resumable(finished, task, small_filesystem, capsys):
    run_dir = small_filesystem / "run"
    cfg = _config(task, run_dir)
    assert main(["train", str(cfg)]) == 6
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("promptintern: error: disk full") and "Traceback" not in err
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_filesystem)], check=True)  # space freed
    assert main(["train", str(cfg), "--resume"]) == 0
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


def test_f6_a_folder_given_for_a_file_is_one_line(finished, tmp_path, capsys):
    folder = tmp_path / "cfgs"
    folder.mkdir()
    assert main(["run", str(folder)]) == 2
    assert "Is a directory" in _one_line(capsys)
    assert main(["infer", "--run", str(finished), "--input", str(folder), "--output", str(tmp_path / "p.jsonl")]) == 3
    assert "a directory, not a file" in _one_line(capsys)
    assert main(["infer", "--run", str(finished), "--input", str(folder), "--output", str(folder)]) == 5
    assert "is a directory" in _one_line(capsys)


def test_f7_infer_refuses_stale_output_and_resumes_only_the_same_call(finished, tmp_path, capsys, monkeypatch):
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "query": f"How many people work in team {i}?"}) + "\n"
                               for i in range(4)))
    out = tmp_path / "p.jsonl"
    base = ["infer", "--run", str(finished), "--input", str(queries), "--output", str(out), "--batch-size", "2"]
    assert main([*base, "--max-new-tokens", "2"]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main([*base, "--max-new-tokens", "8"]) == 5
    assert "exists; pass --force" in _one_line(capsys) and out.read_bytes() == first
    assert main([*base, "--max-new-tokens", "8", "--force"]) == 0
    assert max(r["output_tokens"] for r in read_jsonl(out)) > 2  # the new settings' answers, not the old file
    reference = [stable(r) for r in read_jsonl(out)]

    import promptintern.inference as inf

    real_append = inf._append_rows

    def append_then_stop(path, rows):
        real_append(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(inf, "_append_rows", append_then_stop)
    out2 = tmp_path / "p2.jsonl"
    resumed = ["infer", "--run", str(finished), "--input", str(queries), "--output", str(out2), "--batch-size", "2"]
    assert main([*resumed, "--max-new-tokens", "8"]) == 130
    capsys.readouterr()
    monkeypatch.setattr(inf, "_append_rows", real_append)
    assert main([*resumed, "--max-new-tokens", "2"]) == 3
    assert "made with a different infer.max_new_tokens; pass --no-resume" in _one_line(capsys)
    assert not out2.exists()
    assert main([*resumed, "--max-new-tokens", "8"]) == 0
    assert [stable(r) for r in read_jsonl(out2)] == reference


def test_f8_changed_task_data_is_refused_on_resume(finished, task, tmp_path, capsys):
    run_dir, cfg = _copy(finished, task, tmp_path)
    data = task.parent / "train.jsonl"
    original = data.read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    rows[3]["answer"] = rows[3]["answer"] + " LIMIT 1"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        assert main(["train", str(cfg), "--resume"]) == 5
    finally:
        data.write_text(original)
    assert f"made from other train data: {data} changed since" in _one_line(capsys)
    assert not (run_dir / "adapter").exists()


def test_f9_resume_with_force_is_refused(finished, task, tmp_path, capsys):
    run_dir, cfg = _copy(finished, task, tmp_path, interrupted=False)
    assert main(["train", str(cfg), "--resume", "--force"]) == 2
    assert "--resume and --force contradict each other" in _one_line(capsys)
    assert (run_dir / "train/stage-0/final/DONE.json").is_file()


def test_f10_a_query_longer_than_the_context_is_refused(finished, tmp_path, capsys):
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "long", "query": "employees " * 3000}) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["infer", "--run", str(finished), "--input", str(queries), "--output", str(out)]) == 3
    err = _one_line(capsys)
    assert "query 'long': its prompt is" in err and "the model's context is 2048" in err
    assert not out.exists()


@pytest.mark.parametrize("point, code", [("sigterm", 143), ("sigint", 130)])
def test_f11_a_stop_signal_saves_a_checkpoint_and_the_resume_is_exact(finished, task, tmp_path, point, code):
    run_dir = tmp_path / "run"
    cfg = _config(task, run_dir, save_steps=100)  # no checkpoint due: the one saved is the signal's
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "kill_runner.py"), point, "train", str(cfg)],
                          capture_output=True, text=True, timeout=300, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == code, proc.stderr[-2000:]
    name = signal.Signals(code - 128).name
    assert last == (f"promptintern: error: stopped by {name} in stage 2/2 at step 2; checkpoint-2 saved; "
                    "rerun with --resume to continue"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (run_dir / "train/stage-1").iterdir()) == ["checkpoint-2"]
    assert main(["train", str(cfg), "--resume"]) == 0
    assert _same_adapter(run_dir / "adapter", finished / "adapter")


def test_the_lock_is_taken_before_the_slow_checks(task, tmp_path, capsys):
    cfg = _config(task, tmp_path / "run")
    with locked_dir(tmp_path / "run"):  # another process's run; this config would also fail its checks
        assert main(["train", str(cfg), "--set", "schedule.k=50"]) == 5
    assert "is in use by another promptintern process" in _one_line(capsys)


def test_a_refused_config_leaves_no_run_directory(task, tmp_path, capsys):
    cfg = _config(task, tmp_path / "run")
    assert main(["train", str(cfg), "--set", "schedule.k=50"]) == 2
    _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_corrupt_partial_file_names_commands_that_exist(tmp_path):
    from promptintern.errors import DataError
    from promptintern.inference import load_partial

    row = json.dumps({"id": "a", "prediction": "x", "input_tokens": 1, "output_tokens": 1, "latency_s": 0.1})
    partial = tmp_path / "p.jsonl.partial"
    partial.write_text(f"{row}\n{{not json\n{row}\n")
    with pytest.raises(DataError) as caught:
        load_partial(partial)
    assert str(caught.value) == (f"{partial}:2: corrupt row; delete the file and rerun "
                                 "(promptintern infer: or pass --no-resume)")
