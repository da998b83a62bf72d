"""Bad input → one line on stderr, a non-zero exit code, no traceback and nothing written.

Every case runs the real CLI entry point in-process (one case also in a subprocess, to prove
the installed console script prints no traceback). Cases use the bundled SQL example task and
the tiny model, so no shared data is needed.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from promptintern.cli import main

ROOT = Path(__file__).resolve().parents[1]
SQL = ROOT / "examples" / "sql"


def base_config(tmp_path: Path, **changes) -> dict:
    cfg = {
        "task": str(SQL / "task.yaml"), "model": "tiny-random", "output_dir": str(tmp_path / "run"),
        "baselines": [], "schedule": {"stages": 2, "k": 1}, "compress": {"model": "tiny-random"},
        "train": {"max_steps_per_stage": 1, "per_device_batch_size": 2, "save_steps": 1},
        "infer": {"max_new_tokens": 4, "progress": False}, "eval": {"bootstrap": 0},
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def custom_task(tmp_path: Path, train_lines: list[str] | None = None, **spec_changes) -> str:
    """A copy of the SQL example task with its spec or training data changed."""
    d = tmp_path / "task"
    shutil.copytree(SQL, d)
    spec = yaml.safe_load((d / "task.yaml").read_text())
    spec.update(spec_changes)
    (d / "task.yaml").write_text(yaml.safe_dump(spec))
    if train_lines is not None:
        (d / "train.jsonl").write_text("".join(line + "\n" for line in train_lines))
    return str(d / "task.yaml")


def predictions(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "preds.jsonl"
    path.write_bytes(content)
    return str(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


CASES = {
    "malformed JSONL line": (
        lambda t: ["eval", "--task", str(SQL / "task.yaml"), "--predictions",
                   predictions(t, b'{"id": "sql-test-0", "prediction": "x"}\n{"id": \n'), "--out", str(t / "out")],
        3, "preds.jsonl:2: invalid JSON"),
    "non-UTF-8 bytes": (
        lambda t: ["eval", "--task", str(SQL / "task.yaml"), "--predictions",
                   predictions(t, b'{"id": "sql-test-0", "prediction": "\xff\xfe"}\n'), "--out", str(t / "out")],
        3, "preds.jsonl:1: not valid UTF-8"),
    "10 MB single line": (
        lambda t: ["eval", "--task", str(SQL / "task.yaml"), "--predictions",
                   predictions(t, b'{"id": "sql-test-0", "prediction": "' + b"a" * 10_000_000 + b'"}\n'),
                   "--out", str(t / "out")],
        3, "line longer than"),
    "missing prediction field": (
        lambda t: ["eval", "--task", str(SQL / "task.yaml"), "--predictions",
                   predictions(t, b'{"id": "sql-test-0"}\n'), "--out", str(t / "out")],
        3, "missing field(s) 'prediction'"),
    "missing answer field": (
        lambda t: ["train", write_config(t, base_config(t, task=custom_task(t, ['{"query": "q"}'])))],
        3, "missing field(s) 'answer'"),
    "empty dataset": (
        lambda t: ["train", write_config(t, base_config(t, task=custom_task(t, [])))],
        3, "empty"),
    "unknown config key": (
        lambda t: ["train", write_config(t, base_config(t, **{"train.lerning_rate": 1e-3}))],
        2, "did you mean 'learning_rate'?"),
    "wrong type": (
        lambda t: ["train", write_config(t, base_config(t, **{"train.per_device_batch_size": "four"}))],
        2, "train.per_device_batch_size: expected int"),
    "schedule that increases": (
        lambda t: ["train", write_config(t, base_config(t, schedule={"stages": 2, "shape": "custom",
                                                                     "custom_tau": [0.5, 1.0]}))],
        2, "schedule increases at stage 1"),
    "tau outside [0, 1]": (
        lambda t: ["train", write_config(t, base_config(t, **{"schedule.tau0": 1.5}))],
        2, "schedule.tau0 must be in [0, 1]"),
    "k larger than the pool": (
        lambda t: ["train", write_config(t, base_config(t, **{"schedule.k": 50}))],
        2, "training pool has only 20"),
    "unfilled template placeholder": (
        lambda t: ["train", write_config(t, base_config(t, task=custom_task(t, query_format="{context}: {query}")))],
        2, "{context}"),
    "unknown model name": (
        lambda t: ["train", write_config(t, base_config(t, model="gpt-17-ultra"))],
        4, "unknown model"),
    "unreachable hub id": (
        lambda t: ["train", write_config(t, base_config(t, model="nobody-here/no-such-model"))],
        4, "network"),
    "unknown task": (
        lambda t: ["show-prompt", "--task", "nl2bsh"],
        2, "did you mean 'nl2bash'"),
    "missing config file": (
        lambda t: ["train", str(t / "nope.yaml")],
        2, "config file not found"),
    "bad --set": (
        lambda t: ["train", "--set", "train.learning_rate"],
        2, "expected KEY=VALUE"),
    "typo in --set is blamed on --set": (
        lambda t: ["train", write_config(t, base_config(t)), "--set", "train.lerning_rate=1e-3"],
        2, "error: --set train.lerning_rate=1e-3: config.train: unknown key 'lerning_rate'; did you mean"),
    "typo in the file is blamed on the file, whatever --set adds": (
        lambda t: ["train", write_config(t, base_config(t, **{"train.lerning_rate": 1e-3})),
                   "--set", "train.learning_rate=1e-3"],
        2, "config.yaml: config.train: unknown key 'lerning_rate'"),
    "show-stages without a config says what it needs": (
        lambda t: ["show-stages"],
        2, "show-stages needs a run config, e.g. `promptintern show-stages configs/demo.yaml`"),
    "infer on a directory that is no run": (
        lambda t: ["infer", "--run", str(t), "--input", predictions(t, b'{"query": "q"}\n'), "--output", str(t / "o.jsonl")],
        5, "not a promptintern run directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_argv, code, fragment = CASES[case]
    argv = make_argv(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    got, err = run_cli(argv, capsys)
    assert got == code, err
    assert fragment in err
    assert err.startswith("promptintern: error: ") and "\n" not in err and "Traceback" not in err
    assert {p for p in tmp_path.rglob("*")} == before, "a failed command must not write files"


def test_run_dir_of_another_config_needs_force(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": "somebody-else"}))
    cfg = write_config(tmp_path, base_config(tmp_path))
    code, err = run_cli(["train", cfg], capsys)
    assert code == 5 and "different config; use --force" in err
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def test_disk_full_during_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC while the Trainer saves a checkpoint: one line, exit 6, and --resume then finishes."""
    import torch

    real_save = torch.save

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "optimizer.pt")

    monkeypatch.setattr(torch, "save", full_disk)
    raw = base_config(tmp_path)
    raw["train"]["logging_steps"] = 1
    cfg = write_config(tmp_path, raw)
    code, err = run_cli(["train", cfg], capsys)
    *progress, last = err.splitlines()
    assert code == 6 and last.startswith("promptintern: error: disk full")
    assert all(" · elapsed " in line for line in progress)  # plain progress lines: stderr is not a terminal
    assert not (tmp_path / "run" / "adapter").exists()
    monkeypatch.setattr(torch, "save", real_save)
    code, err = run_cli(["train", cfg, "--resume"], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    # each line shows the loss logged at its step, or a dash before the first log: never "nan"
    assert "nan" not in err and re.search(r" · loss \d+\.\d{4} · ", err), err


def test_console_script_prints_no_traceback_and_debug_does(tmp_path):
    argv = [sys.executable, "-m", "promptintern.cli", "show-prompt", "--task", "nl2bsh"]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().count("\n") == 0
    debug = subprocess.run(argv[:3] + ["--debug"] + argv[3:], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_eval_names_each_output_after_its_predictions_and_never_overwrites(tmp_path, capsys):
    """Three prediction files in one folder keep three score files; a rerun is refused in one line."""
    gold = [json.loads(line) for line in (SQL / "test.jsonl").read_text().splitlines()]
    folder = tmp_path / "preds"
    folder.mkdir()
    answers = {"all-right": [g["answer"] for g in gold],
               "all-wrong": ["SELECT 1;" for _ in gold],
               "first-right": [gold[0]["answer"]] + ["SELECT 1;" for _ in gold[1:]]}
    for name, preds in answers.items():
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": g["id"], "prediction": p}) + "\n" for g, p in zip(gold, preds, strict=True)))
        assert main(["eval", "--task", str(SQL / "task.yaml"), "--predictions", str(folder / f"{name}.jsonl")]) == 0
    written = sorted(p.name for p in folder.iterdir() if p.name.endswith(".metrics.json"))
    assert written == ["all-right.metrics.json", "all-wrong.metrics.json", "first-right.metrics.json"]
    results = {n: json.loads((folder / f"{n}.metrics.json").read_text()) for n in answers}
    assert all(r["predictions"].endswith(f"{n}.jsonl") for n, r in results.items())
    scores = {n: r["metrics"][r["metric"]] for n, r in results.items()}
    assert scores["all-right"] == 100.0 and scores["all-wrong"] == 0.0 and 0 < scores["first-right"] < 100
    capsys.readouterr()

    before = (folder / "all-right.metrics.json").read_bytes()
    (folder / "all-right.jsonl").write_text((folder / "all-wrong.jsonl").read_text())
    code, err = run_cli(["eval", "--task", str(SQL / "task.yaml"), "--predictions", str(folder / "all-right.jsonl")],
                        capsys)
    assert code == 2 and err == (f"promptintern: error: {folder / 'all-right.metrics.json'} exists; "
                                 "pass --out for another file or --force to replace it")
    assert (folder / "all-right.metrics.json").read_bytes() == before
    assert main(["eval", "--task", str(SQL / "task.yaml"), "--predictions", str(folder / "all-right.jsonl"),
                 "--force"]) == 0
    replaced = json.loads((folder / "all-right.metrics.json").read_text())
    assert replaced["metrics"][replaced["metric"]] == 0.0

    preds = str(folder / "first-right.jsonl")
    assert main(["eval", "--task", str(SQL / "task.yaml"), "--predictions", preds, "--out", str(tmp_path / "o")]) == 0
    assert main(["eval", "--task", str(SQL / "task.yaml"), "--predictions", preds, "--out", str(tmp_path / "x.json")]) == 0
    assert (tmp_path / "o" / "first-right.metrics.json").is_file() and (tmp_path / "x.json").is_file()
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporary files left behind


def test_summary_table_states_the_batch_size_of_its_latencies():
    from rich.console import Console

    from promptintern.report import markdown_table, print_summary

    def system(batch: int) -> dict:
        return {"tau": 0.0, "k": 0, "trained": True, "input_tokens_mean": 45.0, "latency_s_mean": 0.5,
                "throughput_qps": 2.0, "batch_size": batch, "metrics": {"bleu": 10.0}}

    metrics = {"metric": "bleu", "task": "t", "n_test": 3, "model": "m",
               "systems": {"base-full": system(8), "promptintern": system(8)}}
    console = Console(record=True, width=200)
    print_summary(metrics, console)
    assert "latency s/query (batch 8)" in console.export_text()
    assert "latency s/query (batch 8)" in markdown_table(metrics)
    metrics["systems"]["base-full"] = system(1)  # e.g. served with the prefix cache
    console = Console(record=True, width=200)
    print_summary(metrics, console)
    text = console.export_text()
    assert "0.500 (batch 1)" in text and "0.500 (batch 8)" in text
